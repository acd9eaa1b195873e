"""The edge fleet from the operator's side: the rollout decision (pure) and the MQTT controller that
carries it out."""
