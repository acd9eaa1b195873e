"""What an artifact comes from: the run's checkpoint and metrics file, summarised as the
manifest's provenance (run, rounds, each client's epsilon) and a digest of the weights."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedge.errors import UsageError
from fedge.manifest import Provenance
from policies import FederationPolicy
from server.federation.checkpoint import Checkpoint, CheckpointStore
from server.federation.metrics import MetricsLog

__all__ = ["arrays_digest", "load_checkpoint", "provenance_for"]


def provenance_for(
    policy: FederationPolicy,
    checkpoint: Checkpoint,
    *,
    metrics_path: str | os.PathLike[str] | None,
) -> Provenance:
    """Run, rounds and each client's total epsilon as of the checkpoint's round.

    ``epsilon`` in a metrics line is what the client had spent after that round, so the last
    line that names a client (no later than the checkpoint) holds its total.
    """
    spent: dict[str, float] = {}
    if metrics_path is not None and Path(metrics_path).is_file():
        for record in MetricsLog(metrics_path).read():
            if int(record.get("round", 0)) > checkpoint.round:
                continue
            for client, value in dict(record.get("epsilon") or {}).items():
                if isinstance(value, int | float):
                    spent[str(client)] = float(value)
    return Provenance(
        run_id=checkpoint.run_id,
        rounds=checkpoint.round,
        epsilon_per_client=spent,
        delta=policy.spec.privacy.delta,
        base_model=policy.spec.model.source,
    )


def load_checkpoint(
    *, workdir: str | os.PathLike[str] | None, checkpoint: str | os.PathLike[str] | None
) -> tuple[Checkpoint, Path | None]:
    """The run's latest checkpoint (or the one named), and the run's metrics file if present.

    A checkpoint named by path is under ``RUN/checkpoints/``, so its run's metrics are looked
    for two folders up.
    """
    if (workdir is None) == (checkpoint is None):
        raise UsageError("give exactly one of --workdir RUN_DIR or --checkpoint FILE")
    if workdir is not None:
        run = Path(workdir)
        if not run.is_dir():
            raise UsageError(f"--workdir {run}: not a folder")
        found = CheckpointStore(run / "checkpoints").latest()
        if found is None:
            raise UsageError(
                f"--workdir {run}: no checkpoint (checkpoints/latest.json); "
                "has `fedge train` completed a round?"
            )
        return found, run / "metrics.jsonl"
    file = Path(checkpoint)  # type: ignore[arg-type]  # one of the two is set, checked above
    try:
        data = file.read_bytes()
    except FileNotFoundError as exc:
        raise UsageError(f"--checkpoint {file}: file does not exist") from exc
    except OSError as exc:
        raise UsageError(f"--checkpoint {file}: cannot read ({exc.strerror})") from exc
    metrics = file.resolve().parent.parent / "metrics.jsonl"
    return Checkpoint.from_bytes(data, name=str(file)), metrics if metrics.is_file() else None


def arrays_digest(arrays: Mapping[str, npt.NDArray[Any]]) -> str:
    """SHA-256 over the names and bytes of the weights: one model, one digest."""
    hasher = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name], dtype=np.float32)
        hasher.update(f"{name}\0{value.shape}\0".encode())
        hasher.update(value.tobytes())
    return hasher.hexdigest()
