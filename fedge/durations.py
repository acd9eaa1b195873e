"""The one grammar for durations, shared by policy documents and command-line flags.

A duration is a number of seconds, or a string of one or more ``<number><unit>`` parts that add
up: ``90s``, ``10m``, ``24h``, ``7d``, ``500ms``, ``1h30m``. Units are ``ms``, ``s``, ``m``, ``h``
and ``d``, in any case; blanks may stand around and between the parts (``1h 30m``). A string
needs a unit (``"90"`` is refused: a flag or a quoted YAML value without one is more likely a
mistake than seconds). Bounds are the caller's: a policy field wants more than zero, a token's
``--expires`` at most 30 days.

Both ``fedge enroll token --expires`` and the policy fields (``soakTime``, ``roundTimeout`` ...)
read durations here, so that one spelling works everywhere.
"""

from __future__ import annotations

import re

__all__ = ["CANONICAL_PATTERN", "UNIT_SECONDS", "parse_duration"]

UNIT_SECONDS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
CANONICAL_PATTERN = r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"
"""The spelling to recommend (lower-case units, no blanks), for JSON Schema and documentation;
:func:`parse_duration` also reads upper-case units and blanks."""

# ``ms`` before ``m``: ``5ms`` is five milliseconds, not five minutes and a stray ``s``.
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")


def parse_duration(value: str | float) -> float:
    """``90`` (a number: seconds), ``"90s"``, ``"10m"``, ``"1h30m"``, ``"500ms"`` -> seconds.

    ValueError, whose message quotes ``value`` and shows the expected form, for anything else
    (a string without a unit, an unknown unit, stray characters, a bool).
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(_refusal(value))
    if not isinstance(value, str):
        return float(value)
    text = value.lower()
    parts: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _PART.match(text, position)
        if match is None:
            raise ValueError(_refusal(value))
        parts.append((match.group(1), match.group(2)))
        position = match.end()
    if not parts:
        raise ValueError(_refusal(value))
    return sum(float(number) * UNIT_SECONDS[unit] for number, unit in parts)


def _refusal(value: object) -> str:
    return f"{value!r} is not a duration; write e.g. 30s, 10m, 1h30m or a number of seconds"
