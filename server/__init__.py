"""The coordinator: Flower ServerApp, strategies, enrollment, export, fleet, and the ``fedge`` CLI.

Importing the package is cheap; heavy libraries (torch, flwr) are imported by the modules that
need them, so ``fedge policy validate`` starts fast.
"""
