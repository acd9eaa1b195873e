"""The aggregation strategies fedge offers, taken from Flower, and their checkpointable state.

Flower's own FedAvg / FedAdam / FedYogi / FedAdagrad do the arithmetic (weighted by each
client's ``num-examples``); fedge adds what a resumable run needs around them: the server
optimizer's moments go into every checkpoint and come back on restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedYogi

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
    return FedAvg(**common)


def strategy_state(strategy: FedAvg) -> dict[str, npt.NDArray[Any]]:
    """The server optimizer's moments (empty for FedAvg), flattened for a checkpoint."""
    state: dict[str, npt.NDArray[Any]] = {}
    for moment in _MOMENTS:
        values = getattr(strategy, moment, None) or {}
        state.update({f"{moment}/{name}": np.asarray(v) for name, v in values.items()})
    return state


def restore_strategy_state(strategy: FedAvg, state: Mapping[str, npt.NDArray[Any]]) -> None:
    for moment in _MOMENTS:
        prefix = f"{moment}/"
        values = {k[len(prefix) :]: np.asarray(v) for k, v in state.items() if k.startswith(prefix)}
        if values and hasattr(strategy, moment):
            setattr(strategy, moment, values)
