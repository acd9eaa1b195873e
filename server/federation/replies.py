"""Reading a round's replies: pulling them off the Grid, and sorting them into outcomes.

Both the plain round (``rounds.py``) and each SecAgg+ stage (``secagg.py``) pull replies with
:func:`collect_replies`, so it lives apart from both: the round driver imports the SecAgg+
adapter, and the adapter needs only this, never the driver. Everything else here reads a reply
(who sent it, did it decline, does it fit the model) without any I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedge import messages as m
from fedge.logs import get_logger
from server.federation.metrics import RoundReport

__all__ = [
    "MaskedOutcome",
    "client_name",
    "collect_replies",
    "fill_evaluation",
    "fits_arrays",
    "is_accepted",
    "mean_train_loss",
    "metric",
    "metrics_of",
    "record_bytes",
    "sort_replies",
    "to_arrays",
    "to_record",
]

log = get_logger(__name__)
_MIN_GRACE = 0.5
Arrays = dict[str, npt.NDArray[Any]]


class MaskedOutcome(Protocol):
    """What :func:`sort_replies` needs of a SecAgg+ round (``secagg.SecAggResult`` has it)."""

    @property
    def aggregated(self) -> Sequence[int]: ...  # nodes whose masked update is in the sum

    @property
    def dropped(self) -> Mapping[int, str]: ...  # why each other sampled node is not

    @property
    def halted(self) -> str | None: ...  # where and why the protocol stopped, if it did


def to_record(arrays: Mapping[str, npt.NDArray[Any]]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def to_arrays(record: ArrayRecord) -> Arrays:
    return {name: array.numpy() for name, array in record.items()}


def record_bytes(record: ArrayRecord) -> int:
    return sum(len(array.data) for array in record.values())


def collect_replies(
    grid: Grid,
    messages: Sequence[Message],
    *,
    minimum: int,
    timeout: float,
    useful: Callable[[Message], bool],
    poll_interval: float = 0.1,
    clock: Callable[[], float] = time.monotonic,
) -> list[Message]:
    """Push ``messages`` and pull replies until all came, the timeout, or minimum + grace.

    The grace period after the minimum is a quarter of the time the minimum took, and at least
    half a second: fast federations stay fast, slow ones give slower peers a proportionate
    chance, and a peer that is merely a little behind (a quick decline, say) still counts.
    """
    ids = list(grid.push_messages(messages))
    pending, replies = set(ids), []
    started = clock()
    minimum_at: float | None = None
    while pending:
        for reply in grid.pull_messages(list(pending)):
            pending.discard(reply.metadata.reply_to_message_id)
            replies.append(reply)
        now = clock()
        if minimum_at is None and sum(1 for r in replies if useful(r)) >= minimum:
            minimum_at = now
        if not pending or now - started >= timeout:
            break
        if minimum_at is not None and now - minimum_at >= max(
            poll_interval, _MIN_GRACE, (minimum_at - started) / 4
        ):
            break
        time.sleep(poll_interval)
    if pending:
        log.info("closing with %d of %d replies (%d pending)", len(replies), len(ids), len(pending))
    return replies


def metric(record: MetricRecord, key: str, default: float = 0.0) -> float:
    value = record.get(key, default)
    return float(value) if isinstance(value, int | float) else default


def client_name(reply: Message) -> str:
    info = reply.content.config_records.get(m.INFO) if reply.has_content() else None
    if info is not None and isinstance(info.get(m.CLIENT), str):
        return str(info[m.CLIENT])
    return f"node-{reply.metadata.src_node_id}"


def is_accepted(reply: Message) -> bool:
    if reply.has_error() or not reply.has_content():
        return False
    metrics = reply.content.metric_records.get(m.METRICS)
    return metrics is not None and not metrics.get(m.DECLINED)


def fits_arrays(reply: Message, reference: Mapping[str, npt.NDArray[Any]]) -> bool:
    record = reply.content.array_records.get(m.ARRAYS)
    if record is None or set(record.keys()) != set(reference):
        return False
    return all(tuple(record[k].shape) == reference[k].shape for k in reference)


def mean_train_loss(replies: Iterable[Message]) -> float | None:
    """The replies' train loss weighted by their training examples; None without examples."""
    counted = [
        (metrics, metric(metrics, m.NUM_EXAMPLES))
        for metrics in (r.content.metric_records[m.METRICS] for r in replies)
    ]
    total = sum(n for _, n in counted)
    if total <= 0:
        return None
    return sum(metric(metrics, m.TRAIN_LOSS) * n for metrics, n in counted) / total


def metrics_of(reply: Message, name: str) -> MetricRecord | None:
    if reply.has_error() or not reply.has_content():
        return None
    return reply.content.metric_records.get(name)


def fill_evaluation(
    report: RoundReport, records: Iterable[MetricRecord | None], *, weight: str
) -> None:
    """Mean of the clients' held-out loss and accuracy, weighted by held-out examples.

    ``weight`` names the count: ``num-examples`` on an evaluate reply, ``eval-examples`` on a
    train reply (where ``num-examples`` counts training examples, and a holder that declined
    to train may still have evaluated).
    """
    useful = [r for r in records if r is not None and metric(r, weight) > 0]
    total = sum(metric(r, weight) for r in useful)
    if not useful:
        return
    report.eval_loss = sum(metric(r, m.EVAL_LOSS) * metric(r, weight) for r in useful) / total
    report.eval_accuracy = (
        sum(metric(r, m.EVAL_ACCURACY) * metric(r, weight) for r in useful) / total
    )
    report.eval_clients = len(useful)


def sort_replies(
    replies: list[Message],
    report: RoundReport,
    *,
    fits: Callable[[Message], bool],
    update_record: str,
    secure: MaskedOutcome | None = None,
) -> list[Message]:
    """Sort a round's replies into errors, declines, misfits and accepted updates.

    Fills ``report`` (who trained, who declined and why, what failed, epsilon and steps per
    holder, bytes received) and returns the accepted replies. ``fits`` says whether an update
    matches the global model; ``update_record`` names the record that carries it.
    """
    accepted = []
    for reply in replies:
        name = client_name(reply)
        if reply.has_error():
            report.failed.append(f"{name}: {reply.error.reason}")
        elif not is_accepted(reply):
            info = reply.content.config_records.get(m.INFO)
            report.declined[name] = str(info.get(m.REASON, "declined")) if info else "declined"
        elif secure is not None and reply.metadata.src_node_id not in secure.aggregated:
            node = reply.metadata.src_node_id
            report.failed.append(f"{name}: {secure.dropped.get(node, 'left the protocol')}")
        elif secure is None and not fits(reply):
            report.failed.append(f"{name}: update does not match the global model's arrays")
        else:
            accepted.append(reply)
            metrics = reply.content.metric_records[m.METRICS]
            report.clients.append(name)
            report.epsilon[name] = metric(metrics, m.EPSILON)
            report.noise_multiplier[name] = metric(metrics, m.NOISE_MULTIPLIER)
            report.steps[name] = int(metric(metrics, m.STEPS))
            report.num_examples += int(metric(metrics, m.NUM_EXAMPLES))
            report.train_seconds = max(
                report.train_seconds,
                metric(metrics, m.TRAIN_SECONDS),
            )
            if secure is None:
                record = reply.content.array_records[update_record]
                report.bytes_received += record_bytes(record)
    if secure is not None:
        answered = {r.metadata.src_node_id for r in replies}
        report.failed.extend(
            f"node-{node}: {why}" for node, why in secure.dropped.items() if node not in answered
        )
        if secure.halted is not None:
            report.failed.append(f"secure aggregation halted: {secure.halted}")
            return []
    return accepted
