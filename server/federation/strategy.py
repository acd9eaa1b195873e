"""The aggregation strategies fedge offers, taken from Flower, and their checkpointable state.

Flower's own FedAvg / FedAdam / FedYogi / FedAdagrad do the arithmetic (weighted by each
client's ``num-examples``); fedge adds what a resumable run needs around them: the server
optimizer's moments go into every checkpoint and come back on restart.

The robust rules are Flower's too: FedMedian (coordinate-wise median), FedTrimmedAvg (the
coordinate-wise mean after cutting ``trimFraction`` at each end; both unweighted), Krum or
Multi-Krum (the update(s) closest to their ``n - f - 2`` nearest neighbours, averaged by
``num-examples``) and Bulyan (Multi-Krum selection, then a trimmed mean around the median).
They keep no state between rounds, so a checkpoint needs nothing for them and resuming gives
the same guarantee as FedAvg.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)

from policies.federation import FederationSpec

__all__ = ["NUM_EXAMPLES", "make_strategy", "restore_strategy_state", "strategy_state"]

NUM_EXAMPLES = "num-examples"
_MOMENTS = ("m_t", "v_t")


def make_strategy(spec: FederationSpec) -> FedAvg:
    """The Flower strategy named by ``aggregation.strategy`` with the policy's settings."""
    common: dict[str, Any] = {
        "fraction_evaluate": spec.clients.fraction_evaluate,
        "min_train_nodes": spec.clients.minimum,
        "min_evaluate_nodes": 1,
        "min_available_nodes": spec.clients.minimum,
        "weighted_by_key": NUM_EXAMPLES,
    }
    agg = spec.aggregation
    adaptive: dict[str, Any] = {"eta": agg.server_learning_rate, "tau": agg.tau}
    if agg.strategy == "fedadam":
        return FedAdam(**common, **adaptive, beta_1=agg.beta1, beta_2=agg.beta2)
    if agg.strategy == "fedyogi":
        return FedYogi(**common, **adaptive, beta_1=agg.beta1, beta_2=agg.beta2)
    if agg.strategy == "fedadagrad":
        return FedAdagrad(**common, **adaptive)
    robust = _robust(spec, common)
    if robust is not None:
        return robust
    return FedAvg(**common)


def _robust(spec: FederationSpec, common: dict[str, Any]) -> FedAvg | None:
    """FedMedian, FedTrimmedAvg, Krum / Multi-Krum or Bulyan; None for the other strategies."""
    agg = spec.aggregation
    f = agg.byzantine
    builders: dict[str, Any] = {
        "fedmedian": lambda: FedMedian(**common),
        "fedtrimmedavg": lambda: FedTrimmedAvg(**common, beta=agg.trim_fraction),
        "krum": lambda: (
            Krum(**common, num_malicious_nodes=f)
            if agg.krum_select is None
            else MultiKrum(**common, num_malicious_nodes=f, num_nodes_to_select=agg.krum_select)
        ),
        "bulyan": lambda: Bulyan(**common, num_malicious_nodes=f),
    }
    build = builders.get(agg.strategy)
    return None if build is None else build()


def strategy_state(strategy: Strategy) -> dict[str, npt.NDArray[Any]]:
    """The server optimizer's moments (empty for FedAvg), flattened for a checkpoint."""
    state: dict[str, npt.NDArray[Any]] = {}
    for moment in _MOMENTS:
        values = getattr(strategy, moment, None) or {}
        state.update({f"{moment}/{name}": np.asarray(v) for name, v in values.items()})
    return state


def restore_strategy_state(strategy: Strategy, state: Mapping[str, npt.NDArray[Any]]) -> None:
    for moment in _MOMENTS:
        prefix = f"{moment}/"
        values = {k[len(prefix) :]: np.asarray(v) for k, v in state.items() if k.startswith(prefix)}
        if values and hasattr(strategy, moment):
            setattr(strategy, moment, values)
