"""``fedge``, the operator's command line: a module per command group; ``app`` mounts them."""
