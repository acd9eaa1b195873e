"""Poisoning in the simulation engine: 5 holders, client-0 sends its update sign-flipped x10.

The bad holder is flagged in metrics.jsonl every round, and FedTrimmedAvg and Krum stay within
3 points of the clean run. FedAvg's collapse is measured by ``bench/poisoning.py`` (see its
figures), not asserted here, where a short run could make it flaky.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.poisoning import POISONED_HOLDER, ArmResult, make_task, run_arm

pytestmark = pytest.mark.slow

ROUNDS = 6  # the bench's rounds: Krum (one holder's update) still swings a few points at 4


MODEL = "builtin:all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, ArmResult]:
    root = tmp_path_factory.mktemp("poisoning")
    data = make_task(root, clients=5, examples=100)
    clean = run_arm(root, model=MODEL, data=data, strategy="fedavg", poisoned=False, rounds=ROUNDS)
    assert not any(clean.flagged.values()), clean.flagged
    return root, data, clean


@pytest.mark.parametrize("strategy", ["fedtrimmedavg", "krum"])
def test_robust_rules_hold_and_the_poisoner_is_flagged(
    task: tuple[Path, Path, ArmResult], strategy: str
) -> None:
    root, data, clean = task
    attacked = run_arm(
        root, model=MODEL, data=data, strategy=strategy, poisoned=True, rounds=ROUNDS
    )
    for round_, holders in attacked.flagged.items():
        assert POISONED_HOLDER in holders, (round_, holders)
        assert "update norm" in holders[POISONED_HOLDER]
    assert attacked.accuracy >= clean.accuracy - 0.03, (attacked.accuracy, clean.accuracy)
