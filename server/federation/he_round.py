"""``protection: he`` inside the round driver: the encrypted global model and its messages.

With HE the coordinator never holds the global model in the clear: after the first round it
holds the holders' encrypted weighted sum (:class:`EncryptedGlobal`), sends it as it is, and the
holders decrypt it (client/federation/flower_app.py). This module converts between that and Flower
records and checkpoints, and turns one round's replies into the next encrypted sum with
server/federation/he_aggregate.py. The first round starts from the public initial model, in the
clear.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, Message

from fedge import messages as m
from fedge.errors import FederationError
from fedge.he_wire import chunk_name, in_chunk_order
from server.federation.he_aggregate import AggregateResult, ClientUpdate, aggregate_encrypted

__all__ = [
    "CHECKPOINT_PREFIX",
    "EncryptedGlobal",
    "aggregate_replies",
    "chunks_of",
    "chunks_record",
    "from_checkpoint",
    "has_update",
    "to_checkpoint",
]

CHECKPOINT_PREFIX = "he/"


@dataclass(frozen=True)
class EncryptedGlobal:
    """The encrypted weighted sum of the last round, and what the holders divide it by."""

    chunks: tuple[bytes, ...]
    total_weight: int
    num_values: int

    @property
    def nbytes(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)


def chunks_record(chunks: Sequence[bytes]) -> ArrayRecord:
    return ArrayRecord(
        {chunk_name(i): Array(np.frombuffer(c, dtype=np.uint8)) for i, c in enumerate(chunks)}
    )


def chunks_of(record: ArrayRecord) -> list[bytes]:
    return [record[name].numpy().tobytes() for name in in_chunk_order(record.keys())]


def has_update(reply: Message) -> bool:
    return reply.has_content() and m.HE_UPDATE in reply.content.array_records


def to_checkpoint(model: EncryptedGlobal) -> tuple[dict[str, npt.NDArray[Any]], dict[str, int]]:
    arrays = {
        CHECKPOINT_PREFIX + chunk_name(i): np.frombuffer(c, dtype=np.uint8)
        for i, c in enumerate(model.chunks)
    }
    return arrays, {"heTotalWeight": model.total_weight, "heNumValues": model.num_values}


def from_checkpoint(
    arrays: Mapping[str, npt.NDArray[Any]], meta: Mapping[str, Any]
) -> EncryptedGlobal | None:
    """The encrypted global model a checkpoint holds, or None for a plaintext checkpoint."""
    names = in_chunk_order(k for k in arrays if k.startswith(CHECKPOINT_PREFIX))
    if not names:
        return None
    return EncryptedGlobal(
        chunks=tuple(np.asarray(arrays[k], dtype=np.uint8).tobytes() for k in names),
        total_weight=int(meta["heTotalWeight"]),
        num_values=int(meta["heNumValues"]),
    )


def aggregate_replies(
    context: Any,
    replies: Sequence[tuple[str, Message]],
    *,
    num_values: int,
    minimum: int,
) -> tuple[EncryptedGlobal, AggregateResult]:
    """The next encrypted global model from the accepted replies ``(client name, reply)``.

    Holders whose update fails its checks are left out (``result.rejected`` says why); fewer
    than ``minimum`` usable updates raise :class:`FederationError`.
    """
    updates = []
    for name, reply in replies:
        metrics = reply.content.metric_records[m.METRICS]
        info = reply.content.config_records.get(m.INFO)
        digest = str(info.get(m.HE_DIGEST, "")) if info is not None else ""
        count = metrics.get(m.NUM_EXAMPLES, 0)
        updates.append(
            ClientUpdate(
                client=name,
                chunks=chunks_of(reply.content.array_records[m.HE_UPDATE]),
                num_examples=int(count) if isinstance(count, int | float) else 0,
                digest=digest,
            )
        )
    result = aggregate_encrypted(context, updates, num_values=num_values, minimum=minimum)
    if not result.chunks:
        raise FederationError("the encrypted aggregate is empty")
    model = EncryptedGlobal(tuple(result.chunks), result.total_weight, num_values)
    return model, result
