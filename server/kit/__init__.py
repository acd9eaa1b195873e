"""Provisioning: what each site needs, made by the operator (broker configuration, kits)."""
