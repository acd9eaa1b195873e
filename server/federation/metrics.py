"""The per-round metrics file: one JSON object per line, one line per completed round.

A line is appended (and fsynced) before the round's checkpoint is written; on resume,
:meth:`MetricsLog.truncate_after` drops lines of rounds the checkpoint does not cover, so a crash
between the two never leaves a round counted twice.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedge.atomic import atomic_write_text
from fedge.errors import FederationError

__all__ = ["MetricsLog", "RoundReport"]


@dataclass
class RoundReport:
    """One line of ``metrics.jsonl``.

    ``eval_*`` describe the global model this round produced, on the held-out data of the
    clients that evaluated it: those sampled for the next round, which evaluate the model their
    train message carries before training (as NVFlare's scatter-and-gather validates the global
    model), or, after the last round, ``fraction_evaluate`` of the clients. A line is therefore
    written when its model has been evaluated, one round later than its training.
    """

    round: int
    status: str  # "ok", or "skipped" when fewer than the minimum replied usefully
    clients: list[str] = field(default_factory=list)
    declined: dict[str, str] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    train_loss: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    eval_clients: int = 0
    epsilon: dict[str, float] = field(default_factory=dict)
    noise_multiplier: dict[str, float] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    num_examples: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    train_seconds: float = 0.0
    seconds: float = 0.0
    secagg_error_bound: float | None = None  # protection secagg: max quantization error
    # holder -> why its update is far outside the others' (outliers.py); not excluded for it
    flagged: dict[str, str] = field(default_factory=dict)
    # privacy level user/both (user_dp.py): the run's user-level epsilon after this round
    user_epsilon: float | None = None
    user_noise_multiplier: float | None = None
    user_sample_rate: float | None = None
    user_clipping_norm: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(value: Any) -> Any:
    # JSON has no NaN or Infinity; a diverged loss is recorded as null rather than breaking readers.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class MetricsLog:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one round's record; it must carry an integer ``round``."""
        if not isinstance(record.get("round"), int):
            raise ValueError("a metrics record needs an integer 'round'")
        line = json.dumps(_finite(record), sort_keys=True, allow_nan=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except ValueError as exc:
                    if not line.endswith("\n"):
                        break  # a torn last line from a crash mid-append: the round did not finish
                    raise FederationError(f"{self.path}:{number}: not a JSON record") from exc
        return records

    def truncate_after(self, round_: int) -> None:
        """Keep only the records of rounds ``<= round_`` (atomically)."""
        kept = [r for r in self.read() if int(r.get("round", 0)) <= round_]
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
