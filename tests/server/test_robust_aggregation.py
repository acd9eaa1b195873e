"""Robust strategies from the policy, and the flag on a holder whose update stands out."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from policies.federation import AggregationSpec, ClientsSpec, FederationSpec
from server.federation.metrics import RoundReport
from server.federation.outliers import flag_outliers
from server.federation.strategy import make_strategy, strategy_state


def _spec(minimum: int = 5, **aggregation: object) -> FederationSpec:
    return FederationSpec(
        clients=ClientsSpec(per_round=minimum, minimum=minimum),
        aggregation=AggregationSpec.model_validate(aggregation),
    )


def test_make_strategy_builds_flowers_robust_rules() -> None:
    trimmed = make_strategy(_spec(strategy="fedtrimmedavg", trim_fraction=0.3))
    assert isinstance(trimmed, FedTrimmedAvg) and trimmed.beta == 0.3
    assert isinstance(make_strategy(_spec(strategy="fedmedian")), FedMedian)
    krum = make_strategy(_spec(strategy="krum", byzantine=1))
    assert isinstance(krum, Krum) and krum.num_malicious_nodes == 1
    multi = make_strategy(_spec(strategy="krum", byzantine=1, krum_select=3))
    assert isinstance(multi, MultiKrum) and multi.num_nodes_to_select == 3
    assert isinstance(make_strategy(_spec(7, strategy="bulyan", byzantine=1)), Bulyan)
    for strategy in ("fedmedian", "fedtrimmedavg", "krum"):  # stateless: nothing to checkpoint
        made = make_strategy(_spec(strategy=strategy))
        assert isinstance(made, FedAvg) and strategy_state(made) == {}


Arrays = dict[str, Any]


def _round(rng: np.random.Generator, *, poisoned: bool) -> tuple[Arrays, dict[str, Arrays]]:
    start = {"w": rng.normal(size=(8, 4)), "b": rng.normal(size=4)}
    direction = {k: rng.normal(size=v.shape) for k, v in start.items()}
    updates = {}
    for i in range(5):
        delta = {k: 0.1 * direction[k] + 0.02 * rng.normal(size=v.shape) for k, v in start.items()}
        if poisoned and i == 0:
            delta = {k: -10.0 * v for k, v in delta.items()}
        updates[f"client-{i}"] = {k: start[k] + delta[k] for k in start}
    return start, updates


def test_a_sign_flipped_scaled_update_is_flagged_with_its_reason() -> None:
    rng = np.random.default_rng(0)
    start, updates = _round(rng, poisoned=True)
    flagged = flag_outliers(start, updates)
    assert list(flagged) == ["client-0"]
    assert "update norm" in flagged["client-0"] and "x the median" in flagged["client-0"]


def test_honest_updates_and_small_rounds_are_not_flagged() -> None:
    rng = np.random.default_rng(1)
    start, updates = _round(rng, poisoned=False)
    assert flag_outliers(start, updates) == {}
    _, poisoned = _round(rng, poisoned=True)
    two = dict(list(poisoned.items())[:2])
    assert flag_outliers(start, two) == {}  # no majority to compare with


def test_old_metrics_lines_still_load() -> None:
    line = RoundReport(round=1, status="ok").to_dict()
    del line["flagged"]
    assert RoundReport(**line).flagged == {}
