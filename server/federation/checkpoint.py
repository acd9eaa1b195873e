"""Round checkpoints: a coordinator killed mid-run starts again at the next round.

After every round the global weights, the round number and the strategy's state (a server
optimizer's moments, for example) go to ``round-NNNNNN.npz`` through an atomic write, and then
``latest.json`` names it with its SHA-256. A crash at any point leaves either the previous
checkpoint or the new one, never half of one; a file damaged on disk afterwards is refused with
its name rather than resumed from.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedge.atomic import atomic_write_bytes, atomic_write_text
from fedge.errors import FederationError

__all__ = ["Checkpoint", "CheckpointStore"]

Arrays = Mapping[str, npt.NDArray[Any]]
_LATEST = "latest.json"
_SCHEMA = "fedge.checkpoint/v1"
_META_KEY = "__meta__"


@dataclass(frozen=True)
class Checkpoint:
    """The state after ``round`` completed rounds of run ``run_id``."""

    run_id: str
    round: int
    arrays: Arrays
    strategy_state: Arrays = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        meta = {"schema": _SCHEMA, "runId": self.run_id, "round": self.round, **self.meta}
        payload: dict[str, npt.NDArray[Any]] = {
            _META_KEY: np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
        }
        payload.update({f"arrays/{k}": np.asarray(v) for k, v in self.arrays.items()})
        payload.update({f"state/{k}": np.asarray(v) for k, v in self.strategy_state.items()})
        np.savez(buffer, allow_pickle=False, **payload)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str) -> Checkpoint:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                meta = json.loads(bytes(npz[_META_KEY]).decode())
                arrays = {k[7:]: npz[k] for k in npz.files if k.startswith("arrays/")}
                state = {k[6:]: npz[k] for k in npz.files if k.startswith("state/")}
            if meta.pop("schema", None) != _SCHEMA:
                raise ValueError("not a fedge checkpoint")
            run_id, round_ = str(meta.pop("runId")), int(meta.pop("round"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FederationError(f"{name}: unreadable checkpoint ({exc})") from exc
        return cls(run_id=run_id, round=round_, arrays=arrays, strategy_state=state, meta=meta)


class CheckpointStore:
    """A folder of checkpoints for one run, keeping the newest ``keep``."""

    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.directory = Path(directory)
        self.keep = keep

    def save(self, checkpoint: Checkpoint) -> Path:
        data = checkpoint.to_bytes()
        path = self.directory / f"round-{checkpoint.round:06d}.npz"
        atomic_write_bytes(path, data)
        pointer = {
            "schema": _SCHEMA,
            "runId": checkpoint.run_id,
            "round": checkpoint.round,
            "file": path.name,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        atomic_write_text(self.directory / _LATEST, json.dumps(pointer, sort_keys=True) + "\n")
        self._prune(latest=path)
        return path

    def _prune(self, *, latest: Path) -> None:
        old = sorted(p for p in self.directory.glob("round-*.npz") if p != latest)
        for path in old[: max(0, len(old) - (self.keep - 1))]:
            path.unlink(missing_ok=True)

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint, or None for a fresh run; damage raises."""
        pointer_path = self.directory / _LATEST
        if not pointer_path.exists():
            return None
        try:
            pointer = json.loads(pointer_path.read_text(encoding="utf-8"))
            path = self.directory / str(pointer["file"])
            expected = str(pointer["sha256"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FederationError(f"{pointer_path}: unreadable checkpoint pointer ({exc})") from exc
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise FederationError(f"{path}: checkpoint named by {_LATEST} is missing") from exc
        if hashlib.sha256(data).hexdigest() != expected:
            raise FederationError(f"{path}: checkpoint does not match its sha256 in {_LATEST}")
        return Checkpoint.from_bytes(data, name=str(path))
