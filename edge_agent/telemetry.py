"""Inference counters and latency percentiles: one window per telemetry message, one for health.

The telemetry window empties at every ``telemetry`` message (counts since the last one); the
health window keeps the most recent inferences of the model now served and empties when the agent
switches models, so ``reported.health`` judges the new version only (what a canary check needs).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["InferenceStats", "Summary", "percentile", "summarize"]


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


@dataclass(frozen=True)
class Summary:
    count: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.count if self.count else 0.0


def summarize(samples: Sequence[tuple[float, bool]]) -> Summary:
    """Summary of (latency in ms, succeeded) samples; latencies of failures are left out."""
    latencies = sorted(latency for latency, ok in samples if ok)
    errors = sum(1 for _latency, ok in samples if not ok)
    return Summary(
        count=len(samples),
        errors=errors,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
    )


class InferenceStats:
    """Thread-safe recorder shared by every input of one agent."""

    def __init__(self, *, health_window: int = 1000) -> None:
        self._lock = threading.Lock()
        self._window: list[tuple[float, bool]] = []
        self._health: deque[tuple[float, bool]] = deque(maxlen=health_window)
        self._window_start = time.monotonic()
        self.total_count = 0
        self.total_errors = 0

    def record(self, latency_ms: float, *, ok: bool) -> None:
        with self._lock:
            self._window.append((latency_ms, ok))
            self._health.append((latency_ms, ok))
            self.total_count += 1
            self.total_errors += 0 if ok else 1

    def take_window(self) -> tuple[Summary, float]:
        """The summary since the last call and the seconds it covers; starts a new window."""
        with self._lock:
            samples, self._window = self._window, []
            now = time.monotonic()
            seconds, self._window_start = now - self._window_start, now
        return summarize(samples), seconds

    def health(self) -> Summary:
        with self._lock:
            samples = list(self._health)
        return summarize(samples)

    def reset_health(self) -> None:
        with self._lock:
            self._health.clear()
