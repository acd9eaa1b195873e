"""Where artifacts go and keeping them there: the planner (pure), the reconciler and its state,
replica checks and the presigned download URLs a device receives."""
