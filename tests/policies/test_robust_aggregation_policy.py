"""Robust aggregation in the policy: the strategies, their settings and what they refuse."""

from __future__ import annotations

import textwrap

import pytest

from policies import FederationPolicy, check_text
from policies.federation import ROBUST_STRATEGIES


def problems(text: str) -> list[str]:
    return [str(p) for p in check_text(textwrap.dedent(text).lstrip("\n"), name="p.yaml").problems]


FED = """
apiVersion: fedge/v1
kind: FederationPolicy
metadata: {name: fed}
spec:
"""


def _spec(aggregation: str, *, minimum: int = 5, protection: str = "none") -> str:
    return (
        FED
        + f"  protection: {protection}\n"
        + f"  clients: {{perRound: 9, minimum: {minimum}}}\n"
        + f"  aggregation: {aggregation}\n"
    )


def test_robust_strategies_are_accepted_with_their_settings() -> None:
    for text in (
        _spec("{strategy: fedmedian}"),
        _spec("{strategy: fedtrimmedavg, trimFraction: 0.3}"),
        _spec("{strategy: krum, byzantine: 1}"),
        _spec("{strategy: krum, byzantine: 1, krumSelect: 3}"),
        _spec("{strategy: bulyan, byzantine: 1}", minimum=7),
    ):
        assert problems(text) == [], text
    doc = check_text(_spec("{strategy: krum, byzantine: 1, krumSelect: 3}"), name="p.yaml")
    (validated,) = doc.documents
    policy = validated.document
    assert isinstance(policy, FederationPolicy)
    assert policy.spec.aggregation.krum_select == 3
    assert policy.spec.aggregation.trim_fraction == 0.2  # the default


@pytest.mark.parametrize("fraction", ["0", "0.5", "0.7", "-0.1"])
def test_trim_fraction_is_bounded(fraction: str) -> None:
    found = problems(_spec(f"{{strategy: fedtrimmedavg, trimFraction: {fraction}}}"))
    assert len(found) == 1 and "spec.aggregation.trimFraction" in found[0]


@pytest.mark.parametrize("strategy", sorted(ROBUST_STRATEGIES))
@pytest.mark.parametrize("protection", ["secagg", "he"])
def test_robust_strategies_refuse_protected_sums(strategy: str, protection: str) -> None:
    found = problems(_spec(f"{{strategy: {strategy}}}", minimum=7, protection=protection))
    assert len(found) == 1, found
    assert found[0].startswith("p.yaml:7:27: "), found  # located at the strategy
    assert (
        f"spec.aggregation.strategy: strategy {strategy} cannot run with protection "
        f"{protection}: the coordinator sees only the sum of updates, so a robust rule cannot "
        "look at each one"
    ) in found[0]


def test_plain_strategies_still_run_with_secagg() -> None:
    assert problems(_spec("{strategy: fedavg}", protection="secagg")) == []
    assert problems(_spec("{strategy: fedavg}", protection="he")) == []


def test_krum_needs_more_holders_than_twice_the_byzantine_ones() -> None:
    found = problems(_spec("{strategy: krum, byzantine: 2}", minimum=6))
    assert len(found) == 1
    assert (
        found[0].startswith("p.yaml:6:35: ")
        and "spec.clients.minimum: krum with byzantine 2" in found[0]
    )
    assert "above 6 (2f + 2), not 6" in found[0]
    assert problems(_spec("{strategy: krum, byzantine: 2}", minimum=7)) == []


def test_bulyan_needs_four_times_the_byzantine_ones_plus_three() -> None:
    found = problems(_spec("{strategy: bulyan, byzantine: 1}", minimum=6))
    assert len(found) == 1
    assert "spec.clients.minimum: bulyan with byzantine 1" in found[0]
    assert "at least 7 (4f + 3), not 6" in found[0]
    assert problems(_spec("{strategy: bulyan, byzantine: 0}", minimum=3)) == []


def test_krum_select_is_checked() -> None:
    found = problems(_spec("{strategy: krum, byzantine: 1, krumSelect: 5}"))
    assert len(found) == 1
    assert "spec.aggregation.krumSelect: krumSelect (5) exceeds minimum - byzantine (4)" in found[0]
    found = problems(_spec("{strategy: fedavg, krumSelect: 2}"))
    assert len(found) == 1 and "only used with strategy krum, not fedavg" in found[0]
