"""A run's checkpoint, both ways: what a finished round leaves, and where a restart picks up.

A checkpoint carries the global model (in the clear, or the encrypted sum under ``protection:
he``), the strategy's state (FedAdam's moments, say), and the metrics line still waiting for its
evaluation, so that a coordinator killed between a round and its evaluation loses no line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt
from flwr.serverapp.strategy import Strategy

from fedge.errors import FederationError
from fedge.logs import get_logger
from server.federation.checkpoint import Checkpoint
from server.federation.he_round import EncryptedGlobal, from_checkpoint, to_checkpoint
from server.federation.metrics import MetricsLog, RoundReport
from server.federation.strategy import restore_strategy_state, strategy_state

__all__ = ["Model", "Resumed", "checkpoint_of", "resume"]

log = get_logger(__name__)
Arrays = dict[str, npt.NDArray[Any]]
Model = Arrays | EncryptedGlobal  # the global model: in the clear, or (protection he) encrypted


@dataclass(frozen=True)
class Resumed:
    next_round: int
    model: Model
    pending: RoundReport | None  # the last round's line, if its evaluation had not come yet
    num_values: int


def checkpoint_of(
    model: Model,
    *,
    run_id: str,
    round_: int,
    strategy: Strategy,
    strategy_name: str,
    pending: RoundReport | None,
    released: bool = False,
    user_dp: dict[str, Any] | None = None,
) -> Checkpoint:
    """What round ``round_`` leaves behind; ``released``: the decrypted final model (he);
    ``user_dp``: the user-level DP history to go on from (user_dp.py)."""
    meta: dict[str, Any] = {"strategy": strategy_name}
    if user_dp is not None:
        meta["userDp"] = user_dp
    if pending is not None:
        meta["pending"] = pending.to_dict()
    if released:
        meta["released"] = True
    arrays: Arrays
    if isinstance(model, EncryptedGlobal):
        arrays, extra = to_checkpoint(model)
        meta.update(extra)
    else:
        arrays = model
    return Checkpoint(
        run_id=run_id,
        round=round_,
        arrays=arrays,
        strategy_state=strategy_state(strategy),
        meta=meta,
    )


def resume(
    checkpoint: Checkpoint, *, run_id: str, where: Path, metrics: MetricsLog, strategy: Strategy
) -> Resumed:
    """Restore ``strategy`` and trim ``metrics`` to ``checkpoint``; refuse another run's."""
    if checkpoint.run_id != run_id:
        raise FederationError(
            f"{where} holds checkpoints of run {checkpoint.run_id!r}, "
            f"not {run_id!r}; use another work directory or run id"
        )
    restore_strategy_state(strategy, checkpoint.strategy_state)
    metrics.truncate_after(checkpoint.round)
    written = {int(line["round"]) for line in metrics.read()}
    waiting = checkpoint.meta.get("pending")
    pending = (
        RoundReport(**waiting)
        if isinstance(waiting, dict) and checkpoint.round not in written
        else None
    )
    log.info("resuming run %s after round %d", checkpoint.run_id, checkpoint.round)
    encrypted = from_checkpoint(checkpoint.arrays, checkpoint.meta)
    if encrypted is not None:
        return Resumed(checkpoint.round + 1, encrypted, pending, encrypted.num_values)
    num_values = sum(int(v.size) for v in checkpoint.arrays.values())
    return Resumed(checkpoint.round + 1, dict(checkpoint.arrays), pending, num_values)
