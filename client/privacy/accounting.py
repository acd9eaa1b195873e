"""Pricing a privacy history with Opacus's accountants: pure math, no files, no locks.

A data holder's history is what Opacus's accountants keep, a list of
``(noise_multiplier, sample_rate, steps)`` triples (:data:`Mechanism`). :func:`epsilon_for` asks
an Opacus accountant for the epsilon of the whole history, recomputed rather than summed, because
privacy loss does not add up round by round; consecutive entries with the same noise and sample
rate are merged the way ``IAccountant.step`` merges steps (:func:`opacus_history`), so the figure
equals what one Opacus accountant would report had it watched every step. :func:`noise_for_budget`
is Opacus's noise search over the same prices, so every round it plans passes the ledger
(client/privacy/ledger.py), which keeps the history on disk and charges it.

Opacus (and with it torch) is imported on the first pricing, not at import, so reading a ledger's
summary does not load it.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from client.privacy.checks import ACCOUNTANT, DELTA, NOISE, RATE, STEPS, check_argument
from fedge.errors import FederationError, UsageError
from fedge.logs import get_logger
from policies.federation import Accountant, PrivacySpec

__all__ = [
    "MAX_NOISE_MULTIPLIER",
    "Mechanism",
    "PrivacyBudget",
    "check_mechanism",
    "epsilon_for",
    "noise_for_budget",
    "opacus_history",
]

# The same ceiling as opacus.accountants.utils.MAX_SIGMA: past it, a plan cannot fit the budget.
MAX_NOISE_MULTIPLIER: Final = 1e6

Mechanism = tuple[float, float, int]
"""One entry of Opacus's accountant history: ``(noise_multiplier, sample_rate, steps)``."""

_log = get_logger(__name__)


def check_mechanism(noise_multiplier: float, sample_rate: float, steps: int) -> Mechanism:
    """Refuse a mechanism Opacus cannot price, before it reaches Opacus (or hangs in it)."""
    check_argument(
        "noise_multiplier",
        noise_multiplier,
        NOISE,
        "; a round without noise has no privacy guarantee",
    )
    check_argument("sample_rate", sample_rate, RATE)
    check_argument("steps", steps, STEPS)
    return (float(noise_multiplier), float(sample_rate), steps)


@dataclass(frozen=True, slots=True)
class PrivacyBudget:
    """What a data holder agreed to spend: the policy's ``spec.privacy`` without the training knobs.

    ``delta`` and ``accountant`` are the units epsilon is measured in; ``target_epsilon`` is the
    ceiling no round may cross.
    """

    target_epsilon: float
    delta: float
    accountant: Accountant = "rdp"

    def __post_init__(self) -> None:
        check_argument("target_epsilon", self.target_epsilon, NOISE)
        check_argument("delta", self.delta, DELTA)
        check_argument("accountant", self.accountant, ACCOUNTANT)
        object.__setattr__(self, "target_epsilon", float(self.target_epsilon))
        object.__setattr__(self, "delta", float(self.delta))

    @classmethod
    def from_policy(cls, privacy: PrivacySpec) -> PrivacyBudget:
        """The budget of a FederationPolicy's ``spec.privacy`` (the holder's own copy of it)."""
        return cls(
            target_epsilon=privacy.target_epsilon,
            delta=privacy.delta,
            accountant=privacy.accountant,
        )


def opacus_history(mechanisms: Iterable[Mechanism]) -> list[Mechanism]:
    """Merge consecutive equal (noise, rate) entries exactly as ``IAccountant.step`` does.

    Without the merge, PRV would discretise a different composition than the accountant that
    watched the training steps, and report a (slightly) different epsilon.
    """
    merged: list[Mechanism] = []
    for noise, rate, steps in mechanisms:
        if merged and merged[-1][0] == noise and merged[-1][1] == rate:
            merged[-1] = (noise, rate, merged[-1][2] + steps)
        else:
            merged.append((noise, rate, steps))
    return merged


def epsilon_for(history: Iterable[Mechanism], *, delta: float, accountant: Accountant) -> float:
    """Epsilon that Opacus's ``accountant`` reports for ``history`` at ``delta``.

    An Opacus accountant is built, given the (merged) history and asked ``get_epsilon(delta)``
    with its defaults, so this is Opacus's figure and not a re-derivation of it. RDP costs a few
    milliseconds per distinct (noise, rate) entry; PRV convolves numerically and grows with the
    total number of steps and as the noise shrinks (seconds for thousands of steps at noise
    below about 0.3), which is why results are cached.
    """
    check_argument("accountant", accountant, ACCOUNTANT)
    check_argument("delta", delta, DELTA)
    checked = tuple(check_mechanism(*entry) for entry in history)
    return _epsilon(tuple(opacus_history(checked)), float(delta), accountant)


@functools.lru_cache(maxsize=256)
def _epsilon(history: tuple[Mechanism, ...], delta: float, accountant: str) -> float:
    # Cached because check(), record() and spent() price the same history in turn, and PRV takes
    # tenths of a second per call. Opacus itself is imported here, not at module import, so that
    # reading a ledger's summary does not load torch.
    if not history:
        return 0.0
    from opacus.accountants import create_accountant

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if accountant == "rdp":
                epsilon = _rdp_epsilon(history, delta)
            else:
                opacus_accountant = create_accountant(mechanism=accountant)
                opacus_accountant.history = list(history)
                epsilon = float(opacus_accountant.get_epsilon(delta=delta))
        except (ArithmeticError, ValueError, RuntimeError, IndexError) as exc:
            raise FederationError(
                f"the {accountant} accountant cannot price this history ({exc}); "
                "the round is refused"
            ) from exc
    for warning in caught:
        # Opacus warns that an RDP bound could be tighter; the bound stays valid (conservative).
        _log.debug("opacus (%s accountant): %s", accountant, warning.message)
    if math.isnan(epsilon) or epsilon < 0:
        raise FederationError(f"the {accountant} accountant returned epsilon {epsilon}")
    return epsilon


def _rdp_epsilon(history: tuple[Mechanism, ...], delta: float) -> float:
    """``RDPAccountant.get_epsilon`` for ``history``, with the per-step RDP curves cached.

    Opacus computes ``compute_rdp(q, sigma, steps, orders)`` as one per-step curve times
    ``steps``, and that curve (about 150 orders, a series per fractional order) is nearly all
    of the cost: a few tenths of a second. Every pricing of a round (the plan, the check, the
    quote, the record) repeats it with a different step count. Keeping the curve per
    ``(sigma, q)`` and summing ``curve * steps`` in Opacus's own order gives the accountant's
    value bit for bit at a fraction of the cost; a warm ClientApp (client/node/warm.py) computes the
    curves once before it forks, so the rounds it serves inherit them.
    """
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as privacy_analysis

    rdp = sum([_rdp_curve(noise, rate) * steps for noise, rate, steps in history])
    eps, _ = privacy_analysis.get_privacy_spent(
        orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta
    )
    return float(eps)


@functools.lru_cache(maxsize=1024)
def _rdp_curve(noise_multiplier: float, sample_rate: float) -> Any:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as privacy_analysis

    return privacy_analysis.compute_rdp(
        q=sample_rate,
        noise_multiplier=noise_multiplier,
        steps=1,
        orders=RDPAccountant.DEFAULT_ALPHAS,
    )


def noise_for_budget(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps_per_round: int,
    rounds: int,
    accountant: Accountant = "rdp",
    history: Sequence[Mechanism] = (),
    epsilon_tolerance: float = 0.01,
) -> float:
    """The smallest noise multiplier (within tolerance) that fits ``rounds`` more rounds.

    The search is the one in ``opacus.accountants.utils.get_noise_multiplier`` (same bounds, same
    bisection), but it prices ``history`` plus the planned rounds as the ledger will, so every
    planned round passes the ledger's ``check``. With no history it returns exactly what
    ``get_noise_multiplier(steps=rounds * steps_per_round)`` returns.
    """
    budget = PrivacyBudget(target_epsilon=target_epsilon, delta=delta, accountant=accountant)
    check_argument("rounds", rounds, STEPS)
    check_argument("sample_rate", sample_rate, RATE)
    check_argument("steps_per_round", steps_per_round, STEPS)
    check_argument("epsilon_tolerance", epsilon_tolerance, NOISE)
    past = list(history)

    def price(sigma: float) -> float:
        planned = [(sigma, float(sample_rate), steps_per_round)] * rounds
        return epsilon_for(past + planned, delta=budget.delta, accountant=budget.accountant)

    if past:
        spent = epsilon_for(past, delta=budget.delta, accountant=budget.accountant)
        if spent >= budget.target_epsilon:
            # More rounds only add epsilon: say so now, not after a search up to the noise cap.
            raise UsageError(
                f"epsilon {spent:.4g} is already spent of a budget of {budget.target_epsilon:g} "
                f"(delta {budget.delta:g}); no further round fits"
            )
    if past and past[-1][1:] == (float(sample_rate), steps_per_round):
        # A run that keeps its plan asks the same question every round: the noise chosen last
        # round still answers it, and one pricing replaces a dozen in the search below.
        sigma = past[-1][0]
        eps = price(sigma)
        if eps <= budget.target_epsilon and budget.target_epsilon - eps <= epsilon_tolerance:
            return sigma
    sigma_low, sigma_high, eps_high = 0.0, 10.0, math.inf
    while eps_high > budget.target_epsilon:
        sigma_high *= 2
        eps_high = price(sigma_high)
        if sigma_high > MAX_NOISE_MULTIPLIER:
            spent = epsilon_for(past, delta=budget.delta, accountant=budget.accountant)
            raise UsageError(
                f"no noise multiplier up to {MAX_NOISE_MULTIPLIER:g} keeps {rounds} round(s) of "
                f"{steps_per_round} steps at sample rate {sample_rate:g} within epsilon "
                f"{budget.target_epsilon:g} (delta {budget.delta:g}, already spent {spent:.4g})"
            )
    while budget.target_epsilon - eps_high > epsilon_tolerance:
        sigma = (sigma_low + sigma_high) / 2
        eps = price(sigma)
        if eps < budget.target_epsilon:
            sigma_high, eps_high = sigma, eps
        else:
            sigma_low = sigma
    return sigma_high
