"""What every arm of ``protected_aggregation.py`` takes and returns: a workload and its cost.

One job: the holders' updates (values of the scale of LoRA deltas, example counts 100..1000) with
their FedAvg in float64 as the reference, and ``RoundCost``, one arm's round measured (per-holder
and coordinator seconds, bytes, the error against the reference), with the timer they share.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float32]


@dataclass
class Workload:
    updates: list[Floats]
    counts: list[int]
    reference: npt.NDArray[np.float64]  # FedAvg in float64


def make_workload(size: int, clients: int, seed: int) -> Workload:
    """Values of the scale of LoRA deltas (|x| from 1e-3 to 1, both signs), counts 100..1000."""
    rng = np.random.default_rng(seed)
    updates = [
        (rng.uniform(-1, 1, size) * 10 ** rng.uniform(-3, 0, size)).astype(np.float32)
        for _ in range(clients)
    ]
    counts = [int(c) for c in rng.integers(100, 1001, clients)]
    acc = np.zeros(size)
    for update, count in zip(updates, counts, strict=True):
        acc += count * update.astype(np.float64)
    return Workload(updates, counts, acc / sum(counts))


@dataclass
class RoundCost:
    """One arm's round: per-holder seconds, coordinator seconds, bytes, and the result's error."""

    client_s: list[float] = field(default_factory=list)
    server_s: float = 0.0
    decode_s: float = 0.0
    bytes_up: int = 0  # one holder's upload (the median holder for SecAgg+, all equal otherwise)
    bytes_down: int = 0
    max_err: float = 0.0


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started
