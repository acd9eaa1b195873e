"""The holder's round log: one JSON line per round it took part in, for ``fedge-client start``.

Why a file of its own: the ClientApp runs in processes that ``fedge-client start`` does not own
(Flower's, or the warm SuperExec's forks), and a holder wants to see, round by round, what its
machine did: trained (how many examples, how long, epsilon spent so far against its budget) or
declined, and why. The privacy transaction (transaction.py) appends a line after every train
message; ``fedge-client start`` follows the file (:class:`RoundFollower`) and prints
:func:`format_round` for each new line. Nothing here is read back by the ledger: the privacy
ledger (client/privacy/) stays the one record of what was spent; this is a report of it.

``<state dir>/rounds.jsonl``, appended with one ``write`` per line (``O_APPEND``), mode 0600.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedge.logs import get_logger

__all__ = ["ROUND_LOG", "RoundEntry", "RoundFollower", "append_round", "format_round"]

log = get_logger(__name__)

ROUND_LOG = "rounds.jsonl"


@dataclass(frozen=True)
class RoundEntry:
    """One train message's outcome on this holder."""

    run_id: str
    round: int
    rounds: int
    declined: bool
    epsilon: float  # spent after this round (all runs sharing the budget)
    target_epsilon: float  # the holder's own budget
    examples: int = 0
    train_seconds: float | None = None
    reason: str | None = None
    at: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundEntry:
        return cls(
            run_id=str(data["run_id"]),
            round=int(data["round"]),
            rounds=int(data["rounds"]),
            declined=bool(data["declined"]),
            epsilon=float(data["epsilon"]),
            target_epsilon=float(data["target_epsilon"]),
            examples=int(data.get("examples") or 0),
            train_seconds=(
                float(data["train_seconds"]) if data.get("train_seconds") is not None else None
            ),
            reason=str(data["reason"]) if data.get("reason") is not None else None,
            at=str(data.get("at", "")),
        )


def append_round(state_dir: str | os.PathLike[str], entry: RoundEntry) -> None:
    """Append ``entry``; a failure is logged, never raised (the round itself went through)."""
    if not entry.at:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        entry = RoundEntry(**{**asdict(entry), "at": stamp})
    line = (json.dumps(asdict(entry), sort_keys=True) + "\n").encode("utf-8")
    path = Path(state_dir) / ROUND_LOG
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("%s: could not log round %d: %s", path, entry.round, exc)


def format_round(entry: RoundEntry) -> str:
    """The holder's progress line for one round."""
    head = f"round {entry.round}/{entry.rounds} (run {entry.run_id}): "
    budget = f"epsilon {entry.epsilon:.3f} of {entry.target_epsilon:g} spent"
    if entry.declined:
        return f"{head}declined ({entry.reason or 'no reason given'}); {budget}"
    took = f" in {entry.train_seconds:.1f} s" if entry.train_seconds is not None else ""
    return f"{head}trained on {entry.examples} examples{took}; {budget}"


class RoundFollower:
    """New entries of a state folder's round log, from where it ended when this was made."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / ROUND_LOG
        try:
            self._offset = self.path.stat().st_size
        except OSError:
            self._offset = 0
        self._partial = b""

    def poll(self) -> list[RoundEntry]:
        """Entries appended since the last call (complete lines only; a bad line is skipped)."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        found: list[RoundEntry] = []
        for line in lines:
            try:
                found.append(RoundEntry.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                log.warning("%s: skipped a line that is not a round entry", self.path)
        return found
