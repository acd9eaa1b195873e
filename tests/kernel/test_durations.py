"""The one duration grammar (fedge/durations.py), and its two users' words and bounds.

Everything either old grammar read (``fedge enroll token --expires`` and the policy fields) still
reads to the same seconds; the grammar now also reads the other's spellings (``500ms`` for a flag,
``1H`` and ``1h 30m`` in a policy).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fedge.durations import CANONICAL_PATTERN, UNIT_SECONDS, parse_duration
from fedge.errors import UsageError


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        # what policy durations read before
        (90, 90.0),
        (2.5, 2.5),
        ("90s", 90.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("1m5s", 65.0),
        ("1.5h", 5400.0),
        (" 30s ", 30.0),
        ("0s", 0.0),  # zero parses; a policy field refuses it (gt=0), --expires too
        # what --expires read before
        ("24h", 86400.0),
        ("7d", 604800.0),
        ("30d", 2592000.0),
        ("1H30M", 5400.0),
        ("24H", 86400.0),
        ("1h 30m", 5400.0),
        ("1\th", 3600.0),
        # newly read: the other side's spellings, and blanks anywhere between the parts
        ("1h 500ms", 3600.5),
        ("1 h", 3600.0),
        ("2D 1H", 176400.0),
        ("1h\n30m", 5400.0),
    ],
)
def test_durations(value: str | float, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    ["", "   ", "24", "90", "h", "1y", "-1h", "1h x", "1h,30m", "1.h", ".5h", "1.5.5h", "1 m s"],
)
def test_anything_else_is_refused_with_the_expected_form(value: str) -> None:
    with pytest.raises(ValueError, match="is not a duration") as refused:
        parse_duration(value)
    assert str(refused.value) == (
        f"{value!r} is not a duration; write e.g. 30s, 10m, 1h30m or a number of seconds"
    )


@pytest.mark.parametrize("value", [True, False, None, [1]])
def test_values_that_are_neither_text_nor_a_number_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(value)  # type: ignore[arg-type]


_parts = st.lists(
    st.tuples(st.integers(min_value=0, max_value=10_000), st.sampled_from(sorted(UNIT_SECONDS))),
    min_size=1,
    max_size=4,
)


@given(parts=_parts)
def test_canonical_spellings_add_up_and_match_the_schema_pattern(
    parts: list[tuple[int, str]],
) -> None:
    text = "".join(f"{number}{unit}" for number, unit in parts)
    assert re.fullmatch(CANONICAL_PATTERN, text)
    expected = sum(float(number) * UNIT_SECONDS[unit] for number, unit in parts)
    assert parse_duration(text) == expected
    assert parse_duration(text.upper()) == expected
    assert parse_duration(" ".join(f"{number} {unit}" for number, unit in parts)) == expected


def test_expires_keeps_its_bounds_and_one_line_naming_the_flag() -> None:
    from server.enrollment.rules import parse_expires

    assert parse_expires("24h") == 86400.0
    assert parse_expires("500ms") == 0.5
    with pytest.raises(UsageError) as bad:
        parse_expires("1y")
    assert str(bad.value) == "--expires '1y': expected a duration like 30m, 24h or 7d"
    with pytest.raises(UsageError) as long:
        parse_expires("31d")
    assert str(long.value) == "--expires '31d': a token lives between 1 second and 30 days"


def test_policies_keep_their_pydantic_messages() -> None:
    from policies import RolloutPolicy

    def spec(soak: object) -> dict[str, object]:
        return {
            "apiVersion": "fedge/v1",
            "kind": "RolloutPolicy",
            "metadata": {"name": "r"},
            "spec": {"canary": {"devices": 1}, "soakTime": soak},
        }

    assert RolloutPolicy.model_validate(spec("1h30m")).spec.soak_time == 5400.0
    assert RolloutPolicy.model_validate(spec(90)).spec.soak_time == 90.0
    with pytest.raises(ValidationError, match="'soon' is not a duration; write e.g. 30s"):
        RolloutPolicy.model_validate(spec("soon"))
    with pytest.raises(ValidationError, match="greater than 0"):
        RolloutPolicy.model_validate(spec("0s"))
    with pytest.raises(ValidationError, match="valid number"):
        RolloutPolicy.model_validate(spec(True))
