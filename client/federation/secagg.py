"""SecAgg+ on the data holder's side: Flower's ``secaggplus_mod`` wrapped around fedge's ClientApp.

Flower's mod does the protocol (key pairs, Shamir shares of the mask seeds, quantization,
masking) but speaks the legacy FitIns/FitRes record shapes, while fedge's train handler reads
``arrays`` and ``config`` and replies with ``arrays``, ``metrics`` and ``info``. This mod
translates both ways around the one stage in which the app trains, so the cryptography stays
Flower's code. Its state stays where Flower keeps it: in ``Context.state``, which both engines
persist per node and run (the Deployment Engine may start a fresh ClientApp process for each of
the four stage messages of a round); the translation itself keeps none.

A message without SecAgg+ configuration passes through untouched, so one ClientApp serves plain
and secure rounds, and the mod can be installed whatever the coordinator's policy says.

A round the holder refuses (its budget, its data, an update that cannot be masked faithfully)
becomes a drop-out of the protocol, never a zero update: the reply is fedge's ordinary decline
(``metrics`` and ``info``, no arrays, no masked vector) and this round's protocol secrets are
forgotten. The coordinator's side (server/federation/secagg.py) counts it as a drop-out, and the
protocol removes the masks the holder's neighbours added for it.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.app.message.message import make_message
from flwr.client.mod import secaggplus_mod
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
)
from flwr.compat.common import recorddict_compat as compat

from client.contract import secagg_masks
from fedge import messages as m
from fedge.errors import FederationError

__all__ = ["arrived_masked", "secagg_mod"]

# Masks from the whole seed through ChaCha20, not a 32-bit fold into a Mersenne Twister; the
# coordinator installs the same generator (server/federation/secagg.py).
secagg_masks.install()


Arrays = dict[str, npt.NDArray[Any]]


class _DropOut(Exception):  # noqa: N818 (control flow, not an error)
    """Leave the protocol for this round with ``reply`` (a decline or an error)."""

    def __init__(self, reply: Message) -> None:
        super().__init__("drop out")
        self.reply = reply


def arrived_masked(message: Message) -> bool:
    """Whether this train message is the masked-vector stage of SecAgg+ (seen by the app).

    A holder whose own policy requires ``protection: secagg`` declines a train message for
    which this is False: its update would leave the node in plaintext.
    """
    config = message.content.config_records.get(m.CONFIG) if message.has_content() else None
    return config is not None and bool(config.get(m.MASKED, 0))


def _stage(message: Message) -> str | None:
    if message.metadata.message_type != MessageType.TRAIN or not message.has_content():
        return None
    configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
    stage = configs.get(Key.STAGE) if configs is not None else None
    return stage if isinstance(stage, str) else None


def secagg_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` for fedge's message shapes; other messages pass through."""
    if _stage(msg) is None:
        return call_next(msg, ctxt)
    try:
        return secaggplus_mod(msg, ctxt, _translated(call_next))
    except _DropOut as drop:
        # Stage secrets of an abandoned round are no use to anyone; the next setup starts over.
        ctxt.state.config_records[RECORD_KEY_STATE] = ConfigRecord({})
        return drop.reply


def _translated(call_next: ClientAppCallable) -> ClientAppCallable:
    """The app as ``secaggplus_mod`` expects it: FitIns records in, FitRes records out."""

    def run(message: Message, context: Context) -> Message:
        names, request = _as_fedge_request(message)
        shapes = {k: tuple(a.shape) for k, a in request.content.array_records[m.ARRAYS].items()}
        reply = call_next(request, context)
        if reply.has_error():
            raise _DropOut(Message(reply.error, reply_to=message))
        content = reply.content
        metrics = content.metric_records.get(m.METRICS)
        record = content.array_records.get(m.ARRAYS)
        if metrics is None or metrics.get(m.DECLINED) or record is None:
            raise _DropOut(_decline(message, content))
        update = {name: array.numpy() for name, array in record.items()}
        weight = _weight(metrics.get(m.NUM_EXAMPLES))
        if weight is None:
            raise _DropOut(_refuse(message, content, "no training examples to weigh it by"))
        problem = _unmaskable(update, shapes, weight, _protocol(context))
        if problem is not None:
            raise _DropOut(_refuse(message, content, problem))
        legacy = compat.fitres_to_recorddict(
            FitRes(
                status=Status(code=Code.OK, message=""),
                # float64 keeps Flower's quantization arithmetic exact; the masked vector that
                # leaves the node is int64 either way, so this costs nothing on the wire.
                parameters=ndarrays_to_parameters(
                    [np.asarray(update[name], dtype=np.float64) for name in names]
                ),
                num_examples=weight,
                metrics={},
            ),
            keep_input=False,
        )
        for name in (m.METRICS, m.INFO):
            if name in content:
                legacy[name] = content[name]
        return Message(legacy, reply_to=message)

    return run


def _as_fedge_request(message: Message) -> tuple[list[str], Message]:
    """The legacy FitIns message as fedge's app reads a train message: named arrays, config."""
    try:
        fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
        config = dict(fitins.config)
        names = json.loads(str(config.pop(m.SECAGG_ARRAY_NAMES)))
        values = parameters_to_ndarrays(fitins.parameters)
    except (KeyError, ValueError, TypeError) as exc:
        raise FederationError(f"malformed secure-aggregation train message: {exc}") from exc
    if not isinstance(names, list) or len(names) != len(values):
        raise FederationError("secure-aggregation train message: array names do not match")
    config[m.MASKED] = 1
    content = RecordDict(
        {
            m.ARRAYS: ArrayRecord(
                {str(n): Array(np.ascontiguousarray(v)) for n, v in zip(names, values, strict=True)}
            ),
            m.CONFIG: ConfigRecord(config),  # type: ignore[arg-type]
        }
    )
    return [str(n) for n in names], make_message(
        metadata=copy.copy(message.metadata), content=content
    )


def _decline(message: Message, content: RecordDict) -> Message:
    """fedge's decline, as a reply to the SecAgg+ message: metrics and info, nothing else."""
    reply = RecordDict({name: content[name] for name in (m.METRICS, m.INFO) if name in content})
    return Message(reply, reply_to=message)


def _refuse(message: Message, content: RecordDict, reason: str) -> Message:
    """Turn the app's accepted reply into a decline: the update was trained but cannot go."""
    content.metric_records[m.METRICS][m.DECLINED] = 1
    info = content.config_records.get(m.INFO) or ConfigRecord()
    info[m.REASON] = reason
    content[m.INFO] = info
    return _decline(message, content)


def _protocol(context: Context) -> SecAggPlusState:
    record = context.state.config_records.get(RECORD_KEY_STATE) or ConfigRecord()
    return SecAggPlusState(**record)


def _weight(value: object) -> int | None:
    """The update's weight (its training examples), or None when there is no usable one."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
        return None
    return int(value)


def _unmaskable(
    update: Arrays, shapes: dict[str, tuple[int, ...]], weight: int, protocol: SecAggPlusState
) -> str | None:
    """Why Flower's masking would not carry ``update`` faithfully, or None when it would.

    The mod scales the update by ``weight / max_weight`` and clips it to the clipping range
    before quantizing: a value beyond the range would be silently clipped and the aggregate
    would not be the FedAvg of the updates. The scaled weights of all sampled holders must
    also fit the modulus, or their sum wraps.
    """
    if {k: v.shape for k, v in update.items()} != shapes:
        return "the update's arrays do not match the global model's"
    q_ratio = round(weight / protocol.max_weight * protocol.target_range)
    ratio = q_ratio / protocol.target_range
    largest = max((float(np.max(np.abs(v))) for v in update.values() if v.size), default=0.0)
    if not math.isfinite(largest):
        return "the update holds values that are not finite"
    if largest * ratio > protocol.clipping_range:
        return (
            f"the update (largest |value| {largest:.4g}, weight {weight}) exceeds the "
            f"secure-aggregation clipping range {protocol.clipping_range:g} "
            f"at max weight {protocol.max_weight:g}"
        )
    if q_ratio * max(protocol.sample_num, 1) >= protocol.mod_range:
        return f"the weight {weight} is too large for the secure-aggregation modulus"
    return None
