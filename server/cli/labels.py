"""``--label KEY=VALUE`` options, as ``fedge artifact sign`` and ``fedge export`` take them."""

from __future__ import annotations

from fedge.errors import UsageError

__all__ = ["parse_labels"]


def parse_labels(values: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings as a mapping; a value may be empty, a key may not."""
    labels: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise UsageError(f"--label {value!r}: expected KEY=VALUE")
        labels[key] = val
    return labels
