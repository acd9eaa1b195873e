"""Artifact stores over apache-libcloud, the placement planner and the reconciler."""
