"""User-level (central) differential privacy at the coordinator: Flower's wrappers, Opacus's price.

Sample-level DP at each holder (DP-SGD, priced by the holder's own ledger) protects each record.
User-level DP protects each holder's whole contribution: every holder's update of a round is
clipped to ``clippingNorm`` and Gaussian noise is added to the mean of the clipped updates, so
the model released after the run says about as little of any one holder as the guarantee allows.
The clipping and the noise are Flower's own strategy wrappers
(``DifferentialPrivacyServerSideFixedClipping`` and ``...AdaptiveClipping``, Andrew et al. 2021),
around a FedAvg that weighs every holder equally (a weighted mean would let one large holder
move the model further than the clipping norm allows for).

Pricing: each round is one Gaussian mechanism with noise multiplier ``z`` on a mean whose
sensitivity is taken as ``C / minimum`` (the noise's standard deviation is ``z * C / minimum``;
more replies than the minimum only make it more private), sampled at the holder sampling rate
``q = sampled / connected`` of that round. The history of ``(z, q)`` is priced by an Opacus
accountant (the policy's ``privacy.accountant``), the same way DP-FedAvg (McMahan et al. 2018)
and Flower's documentation price it; Opacus assumes Poisson sampling where the coordinator draws
a fixed number of holders, the usual approximation. With ``targetEpsilon`` the noise is Opacus's
noise search for all rounds at ``perRound / population``, and a round that would take the run
past the target is refused before it is sent. Adaptive clipping spends a little of ``z`` on the
noisy count of clipped updates; Flower splits it so that the pair is priced as ``z`` (Andrew et
al., Theorem 1), which is what is charged here.

Opacus is imported on first pricing: a coordinator without user-level DP never loads it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, Message
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)

from fedge import messages as m
from fedge.errors import FederationError
from policies.federation import Accountant, FederationSpec, UserPrivacySpec

__all__ = ["UNIT_WEIGHT", "UserLevelDP", "user_epsilon", "user_noise_for_target"]

# FedAvg weighs replies by this metric; the coordinator sets it to 1 on every accepted reply
UNIT_WEIGHT = "fedge-user-dp-weight"
_MERGE_TOLERANCE = 1e-12
Arrays = dict[str, npt.NDArray[Any]]
DPWrapper = (
    DifferentialPrivacyServerSideFixedClipping | DifferentialPrivacyServerSideAdaptiveClipping
)


class _AdaptiveClipping(DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping with the norm moving the right way.

    Flower 1.41 feeds its geometric update the noisy share of updates that were *clipped*, where
    Andrew et al. (2021) feed the share left *unclipped*: with every update over the norm the
    norm shrinks, clips more, and collapses towards zero (tests/server/test_user_dp.py shows
    it). Here the same rule gets the unclipped share, so ``targetQuantile`` is the share of
    updates left unclipped, as in the paper; the noise and its price are unchanged.
    """

    def _geometric_update(self, clipped_fraction: float) -> None:
        super()._geometric_update(1.0 - clipped_fraction)


@functools.cache
def _opacus_accountant(kind: Accountant) -> Any:
    from opacus.accountants import PRVAccountant, RDPAccountant

    return RDPAccountant if kind == "rdp" else PRVAccountant


def _history(rounds: Iterable[tuple[float, float]]) -> list[tuple[float, float, int]]:
    """Opacus's history: consecutive equal ``(noise, rate)`` rounds merged into one entry."""
    merged: list[tuple[float, float, int]] = []
    for noise, rate in rounds:
        if (
            merged
            and abs(merged[-1][0] - noise) < _MERGE_TOLERANCE
            and abs(merged[-1][1] - rate) < _MERGE_TOLERANCE
        ):
            merged[-1] = (merged[-1][0], merged[-1][1], merged[-1][2] + 1)
        else:
            merged.append((float(noise), float(rate), 1))
    return merged


def user_epsilon(
    rounds: Iterable[tuple[float, float]], *, delta: float, accountant: Accountant = "rdp"
) -> float:
    """Epsilon of a history of rounds, each ``(noise_multiplier, holder_sampling_rate)``."""
    history = _history(rounds)
    if not history:
        return 0.0
    priced = _opacus_accountant(accountant)()
    priced.history = history
    return float(priced.get_epsilon(delta=delta))


def user_noise_for_target(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    rounds: int,
    accountant: Accountant = "rdp",
) -> float:
    """The noise multiplier that makes ``rounds`` rounds at ``sample_rate`` spend the target."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=rounds,
                accountant=accountant,
            )
        )
    except ValueError as exc:  # Opacus: the target cannot be reached with any noise it tries
        raise FederationError(
            f"privacy.user.targetEpsilon {target_epsilon:g}: no noise reaches it for {rounds} "
            f"round(s) at sampling rate {sample_rate:g} ({exc})"
        ) from exc


def _sampling_rate(spec: FederationSpec, user: UserPrivacySpec) -> float:
    population = user.population or spec.clients.per_round
    return min(1.0, spec.clients.per_round / population)


@dataclass
class UserLevelDP:
    """The run's user-level mechanism: the wrapper to aggregate with and the priced history."""

    spec: FederationSpec
    noise_multiplier: float
    history: list[tuple[float, float]] = field(default_factory=list)
    wrapper: DPWrapper | None = None

    @classmethod
    def for_spec(cls, spec: FederationSpec) -> UserLevelDP | None:
        """None when the policy asks for sample-level DP only."""
        user = spec.privacy.user
        if spec.privacy.level == "sample" or user is None:
            return None
        noise = user.noise_multiplier
        if noise is None:
            if user.target_epsilon is None:
                raise FederationError(
                    "privacy.user needs noiseMultiplier or targetEpsilon (fedge policy validate)"
                )
            noise = user_noise_for_target(
                target_epsilon=user.target_epsilon,
                delta=user.delta,
                sample_rate=_sampling_rate(spec, user),
                rounds=spec.rounds,
                accountant=spec.privacy.accountant,
            )
        return cls(spec=spec, noise_multiplier=noise)

    @property
    def user(self) -> UserPrivacySpec:
        if self.spec.privacy.user is None:  # for_spec never builds one without it
            raise FederationError("privacy.user is missing")
        return self.spec.privacy.user

    def wrap(self, strategy: Strategy) -> Strategy:
        """Flower's server-side DP wrapper around a FedAvg weighing every holder equally."""
        if not isinstance(strategy, FedAvg) or type(strategy) is not FedAvg:
            raise FederationError("user-level DP needs strategy fedavg (fedge policy validate)")
        strategy.weighted_by_key = UNIT_WEIGHT
        user, minimum = self.user, self.spec.clients.minimum
        if user.clipping == "adaptive":
            # The noisy count of clipped updates takes part of z; Andrew et al.'s m / 20 is too
            # little for a federation of tens (Flower refuses it), and at least z leaves the
            # updates' noise at most 1.155 z: the pair is still priced as z.
            self.wrapper = _AdaptiveClipping(
                strategy,
                noise_multiplier=self.noise_multiplier,
                num_sampled_clients=minimum,
                initial_clipping_norm=user.clipping_norm,
                target_clipped_quantile=user.target_quantile,
                clipped_count_stddev=max(minimum / 20, self.noise_multiplier),
            )
        else:
            self.wrapper = DifferentialPrivacyServerSideFixedClipping(
                strategy,
                noise_multiplier=self.noise_multiplier,
                clipping_norm=user.clipping_norm,
                num_sampled_clients=minimum,
            )
        return self.wrapper

    @property
    def clipping_norm(self) -> float:
        """The norm updates are clipped to now (adaptive clipping moves it every round)."""
        return float(self.wrapper.clipping_norm) if self.wrapper else self.user.clipping_norm

    def spent(self) -> float:
        return user_epsilon(
            self.history, delta=self.user.delta, accountant=self.spec.privacy.accountant
        )

    def admit(self, *, sampled: int, connected: int) -> float:
        """The round's holder sampling rate; refuse a round that would pass the target."""
        rate = min(1.0, sampled / max(1, connected))
        target = self.user.target_epsilon
        if target is not None:
            after = user_epsilon(
                [*self.history, (self.noise_multiplier, rate)],
                delta=self.user.delta,
                accountant=self.spec.privacy.accountant,
            )
            if after > target * (1 + 1e-6):
                raise FederationError(
                    f"user-level budget: this round would spend epsilon {after:.4g}, past "
                    f"privacy.user.targetEpsilon {target:g} (rate {rate:.3g}: more holders "
                    "sampled per connected holder than planned from population)"
                )
        return rate

    def prepare(self, current: Arrays, replies: list[Message]) -> None:
        """Tell the wrapper the model the updates start from and weigh every reply as one.

        The current model goes in the order of the replies' arrays: the wrapper zips them.
        """
        if self.wrapper is None:
            raise FederationError("user-level DP: wrap() the strategy before aggregating")
        order = list(replies[0].content.array_records[m.ARRAYS].keys()) if replies else []
        self.wrapper.current_arrays = ArrayRecord(
            {name: Array(np.asarray(current[name])) for name in order}
        )
        for reply in replies:
            reply.content.metric_records[m.METRICS][UNIT_WEIGHT] = 1

    def record(self, rate: float) -> float:
        """Charge one released round at ``rate``; the run's user-level epsilon after it."""
        self.history.append((self.noise_multiplier, rate))
        return self.spent()

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the priced history and the (adaptive) clipping norm."""
        return {
            "noiseMultiplier": self.noise_multiplier,
            "history": [list(entry) for entry in self.history],
            "clippingNorm": self.clipping_norm,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Resume: the history goes on from the checkpoint, never from zero."""
        try:
            self.history = [(float(z), float(q)) for z, q in state["history"]]
            self.noise_multiplier = float(state["noiseMultiplier"])
            norm = float(state["clippingNorm"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FederationError(f"checkpoint: unreadable user-level DP state ({exc})") from exc
        if self.wrapper is not None:
            self.wrapper.clipping_norm = norm
