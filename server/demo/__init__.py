"""``fedge demo``: the whole pipeline on one machine, every persona through its own entry point, and
the mosquitto broker it starts for itself."""
