"""Pricing a privacy history, against Opacus's own accountants (no mocks).

The ledger charges what client/privacy/accounting.py prices, so these figures must be Opacus's
to the last bit, and the noise it plans must be what Opacus's own search finds.
"""

from __future__ import annotations

import math

import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from client.privacy.accounting import PrivacyBudget, epsilon_for, noise_for_budget, opacus_history
from fedge.errors import UsageError
from tests.support.privacy import ACCOUNTANTS, DELTA, ROUNDS
from tests.support.privacy import watched as _watched

# --- the numbers are Opacus's ---------------------------------------------------------------


@pytest.mark.parametrize(("name", "cls"), ACCOUNTANTS)
def test_epsilon_for_equals_an_opacus_accountant_that_watched_every_step(name, cls):
    expected = _watched(cls, ROUNDS).get_epsilon(DELTA)
    assert epsilon_for(ROUNDS, delta=DELTA, accountant=name) == pytest.approx(expected, rel=1e-12)


def test_rdp_with_cached_curves_is_opacus_bit_for_bit():
    """The per-(noise, rate) curve cache must not change a single bit of Opacus's figure."""
    for end in range(1, len(ROUNDS) + 1):
        expected = _watched(RDPAccountant, ROUNDS[:end]).get_epsilon(DELTA)
        assert epsilon_for(ROUNDS[:end], delta=DELTA, accountant="rdp") == expected


def test_history_is_merged_the_way_opacus_merges_steps():
    assert opacus_history(ROUNDS) == _watched(RDPAccountant, ROUNDS).history
    assert opacus_history([]) == []
    assert epsilon_for([], delta=DELTA, accountant="prv") == 0.0


# --- inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "budget",
    [
        {"target_epsilon": 0.0, "delta": DELTA},
        {"target_epsilon": math.inf, "delta": DELTA},
        {"target_epsilon": 8.0, "delta": 1.0},
        {"target_epsilon": 8.0, "delta": DELTA, "accountant": "gdp"},
    ],
)
def test_an_impossible_budget_is_a_usage_error(budget):
    with pytest.raises(UsageError):
        PrivacyBudget(**budget)


# --- planning noise -------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_noise_for_a_fresh_budget_is_what_opacus_finds():
    ours = noise_for_budget(
        target_epsilon=4.0,
        delta=DELTA,
        sample_rate=0.01,
        steps_per_round=50,
        rounds=4,
        epsilon_tolerance=0.05,
    )
    theirs = get_noise_multiplier(
        target_epsilon=4.0,
        target_delta=DELTA,
        sample_rate=0.01,
        steps=200,
        epsilon_tolerance=0.05,
    )
    assert ours == theirs


def test_a_history_past_the_budget_fails_at_once():
    with pytest.raises(UsageError, match="already spent of a budget of 1 .*no further round fits"):
        noise_for_budget(
            target_epsilon=1.0,
            delta=DELTA,
            sample_rate=0.01,
            steps_per_round=10,
            rounds=1,
            history=[(0.5, 0.5, 100)],  # already far past the budget
        )


def test_a_run_that_keeps_its_plan_reuses_last_rounds_noise() -> None:
    from client.privacy.accounting import noise_for_budget

    first = noise_for_budget(
        target_epsilon=4.0, delta=1e-5, sample_rate=0.05, steps_per_round=20, rounds=3
    )
    history = [(first, 0.05, 20)]
    second = noise_for_budget(
        target_epsilon=4.0,
        delta=1e-5,
        sample_rate=0.05,
        steps_per_round=20,
        rounds=2,
        history=history,
    )
    assert second == first
    # a changed plan (other steps) still searches, and still fits the budget
    other = noise_for_budget(
        target_epsilon=4.0,
        delta=1e-5,
        sample_rate=0.05,
        steps_per_round=30,
        rounds=2,
        history=history,
    )
    assert other != first
    total = epsilon_for(
        [*history, (other, 0.05, 30), (other, 0.05, 30)], delta=1e-5, accountant="rdp"
    )
    assert 4.0 - 0.01 <= total <= 4.0
