"""fedge: the small shared kernel of the fedge distribution.

It carries the version, the exception tree, artifact manifests and Ed25519 signing; it imports
nothing heavier than ``cryptography`` so that every persona (edge devices included) can use it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
