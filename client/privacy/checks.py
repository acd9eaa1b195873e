"""What a valid noise multiplier, sample rate, step count, delta, accountant, round, run id and
budget name are, as one set of rules.

The same rules guard the arguments of the accounting functions and the ledger, and the fields of a
stored ledger file, so a file can hold only what ``PrivacyLedger.record`` could have written, and
a mechanism Opacus cannot price is refused before it reaches Opacus (or hangs in it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeGuard, get_args

from fedge.errors import UsageError
from policies.common import DNS_NAME
from policies.federation import Accountant

__all__ = [
    "ACCOUNTANT",
    "DELTA",
    "NAME",
    "NOISE",
    "RATE",
    "ROUND",
    "RUN_ID",
    "STEPS",
    "Rule",
    "check_argument",
    "check_fields",
    "check_name",
    "check_round",
    "is_number",
]

_ACCOUNTANTS: Final[tuple[str, ...]] = get_args(Accountant)
_NAME = re.compile(DNS_NAME)

Rule = tuple[Callable[[Any], bool], str]
"""A test of a value, and what it expects in words (for the message when the test fails)."""


def is_number(value: object) -> TypeGuard[int | float]:
    # bool is an int to Python, but ``true`` is never a noise multiplier.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_count(value: object, minimum: int) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_name(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _NAME.match(value) is not None


NOISE: Final[Rule] = (lambda v: is_number(v) and 0 < v < math.inf, "a positive finite number")
RATE: Final[Rule] = (lambda v: is_number(v) and 0 < v <= 1, "a number in (0, 1]")
STEPS: Final[Rule] = (lambda v: _is_count(v, 1), "a positive integer")
ROUND: Final[Rule] = (lambda v: _is_count(v, 0), "a non-negative integer")
RUN_ID: Final[Rule] = (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")
NAME: Final[Rule] = (_is_name, "lowercase letters, digits, '-' and '.' (a metadata.name)")
DELTA: Final[Rule] = (lambda v: is_number(v) and 0 < v < 1, "a number in (0, 1)")
ACCOUNTANT: Final[Rule] = (lambda v: v in _ACCOUNTANTS, f"one of {', '.join(_ACCOUNTANTS)}")


def check_fields(data: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    """Raise ``ValueError('field: problem')`` for the first unknown, missing or bad field."""
    unknown = sorted(set(data) - set(rules))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field")
    for name, (ok, expected) in rules.items():
        if name not in data:
            raise ValueError(f"{name}: missing")
        if not ok(data[name]):
            raise ValueError(f"{name}: must be {expected} (got {data[name]!r})")


def check_argument(name: str, value: object, rule: Rule, hint: str = "") -> None:
    ok, expected = rule
    if not ok(value):
        raise UsageError(f"{name} must be {expected} (got {value!r}){hint}")


def check_round(round: int, run_id: str) -> tuple[int, str]:
    check_argument("round", round, ROUND)
    check_argument("run_id", run_id, RUN_ID)
    return round, run_id


def check_name(value: str, *, what: str) -> str:
    # Budget keys become file names; the policy's DNS-style names are safe on every system.
    check_argument(what, value, NAME)
    return value
