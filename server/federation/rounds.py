"""The federated run: rounds of training and evaluation over a Flower Grid, resumable.

The Grid is the I/O boundary (the simulation engine and the Deployment Engine both hand one to
the ServerApp); everything else here is bookkeeping. Each round samples clients, pushes the
global adapter, and pulls replies until every sampled client answered, or the round timeout
passed, or the minimum answered and the stragglers had a grace period: a dropped client never
stalls a round once the minimum replied. Declines (a client's budget or data said no) and broken
replies are counted and left out of the aggregate. Federated evaluation rides on the next round's
train message (one round trip per round instead of two), plus one evaluate message after the
last round. After each round a checkpoint is written, and each round's metrics line once its
model is evaluated; the checkpoint carries the line still waiting, so a coordinator killed
mid-run resumes at the next round and loses no line.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid

from fedge import messages as m
from fedge.errors import FederationError
from fedge.logs import get_logger
from policies import FederationPolicy
from server.federation.checkpoint import Checkpoint, CheckpointStore
from server.federation.he_round import (
    EncryptedGlobal,
    aggregate_replies,
    chunks_record,
    from_checkpoint,
    has_update,
    to_checkpoint,
)
from server.federation.metrics import MetricsLog
from server.federation.strategy import make_strategy, restore_strategy_state, strategy_state

if TYPE_CHECKING:
    from server.federation.secagg import SecAggResult

__all__ = ["RoundReport", "RunSettings", "collect_replies", "run_federation"]

log = get_logger(__name__)
_MIN_GRACE = 0.5
Arrays = dict[str, npt.NDArray[Any]]
Model = Arrays | EncryptedGlobal  # the global model: in the clear, or (protection he) encrypted
HE_PUBLIC_FILE = "he-public.ctx"


@dataclass(frozen=True)
class RunSettings:
    """What the ServerApp needs: the policy (parsed and as sent), where to write, which run."""

    policy: FederationPolicy
    policy_text: str
    workdir: Path
    run_id: str
    seed: int = 0
    poll_interval: float = 0.1
    node_wait: float = 120.0
    he_public_context: Path | None = None  # protection he; default <workdir>/he-public.ctx


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _to_record(arrays: Mapping[str, npt.NDArray[Any]]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def _to_arrays(record: ArrayRecord) -> Arrays:
    return {name: array.numpy() for name, array in record.items()}


def _record_bytes(record: ArrayRecord) -> int:
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


def _number(record: MetricRecord, key: str, default: float = 0.0) -> float:
    value = record.get(key, default)
    return float(value) if isinstance(value, int | float) else default


def _client_name(reply: Message) -> str:
    info = reply.content.config_records.get(m.INFO) if reply.has_content() else None
    if info is not None and isinstance(info.get(m.CLIENT), str):
        return str(info[m.CLIENT])
    return f"node-{reply.metadata.src_node_id}"


def _is_accepted(reply: Message) -> bool:
    if reply.has_error() or not reply.has_content():
        return False
    metrics = reply.content.metric_records.get(m.METRICS)
    return metrics is not None and not metrics.get(m.DECLINED)


def _fits(reply: Message, reference: Mapping[str, npt.NDArray[Any]]) -> bool:
    record = reply.content.array_records.get(m.ARRAYS)
    if record is None or set(record.keys()) != set(reference):
        return False
    return all(tuple(record[k].shape) == reference[k].shape for k in reference)


def _record_of(reply: Message, name: str) -> MetricRecord | None:
    if reply.has_error() or not reply.has_content():
        return None
    return reply.content.metric_records.get(name)


def _fill_evaluation(
    report: RoundReport, records: Iterable[MetricRecord | None], *, weight: str
) -> None:
    """Mean of the clients' held-out loss and accuracy, weighted by held-out examples.

    ``weight`` names the count: ``num-examples`` on an evaluate reply, ``eval-examples`` on a
    train reply (where ``num-examples`` counts training examples, and a holder that declined
    to train may still have evaluated).
    """
    useful = [r for r in records if r is not None and _number(r, weight) > 0]
    total = sum(_number(r, weight) for r in useful)
    if not useful:
        return
    report.eval_loss = sum(_number(r, m.EVAL_LOSS) * _number(r, weight) for r in useful) / total
    report.eval_accuracy = (
        sum(_number(r, m.EVAL_ACCURACY) * _number(r, weight) for r in useful) / total
    )
    report.eval_clients = len(useful)


class _Run:
    def __init__(self, grid: Grid, settings: RunSettings) -> None:
        self.grid = grid
        self.settings = settings
        self.spec = settings.policy.spec
        self.store = CheckpointStore(settings.workdir / "checkpoints")
        self.metrics = MetricsLog(settings.workdir / "metrics.jsonl")
        self.strategy = make_strategy(self.spec)
        self.pending: RoundReport | None = None  # trained, its model not yet evaluated
        self.reports: list[RoundReport] = []
        self.progress: Callable[[RoundReport], None] | None = None
        self.he: Any = None  # protection he: the public context (never a secret key)
        if self.spec.protection == "he":
            from server.federation.he_aggregate import load_public_context

            path = settings.he_public_context or settings.workdir / HE_PUBLIC_FILE
            self.he = load_public_context(path)
        self.num_values = 0
        self.max_examples = 0  # the largest num-examples a holder reported (SecAgg+ scaling)

    def config(self, round_: int, *, evaluate: bool = False) -> ConfigRecord:
        return ConfigRecord(
            {
                m.ROUND: round_,
                m.ROUNDS: self.spec.rounds,
                m.RUN_ID: self.settings.run_id,
                m.POLICY: self.settings.policy_text,
                m.EVALUATE: int(evaluate),
            }
        )

    def wait_for_nodes(self, count: int) -> list[int]:
        deadline = time.monotonic() + self.settings.node_wait
        while len(nodes := sorted(self.grid.get_node_ids())) < count:
            if time.monotonic() > deadline:
                raise FederationError(
                    f"only {len(nodes)} client(s) connected within "
                    f"{self.settings.node_wait:.0f} s; "
                    f"the policy needs at least {count}"
                )
            time.sleep(self.settings.poll_interval)
        return nodes

    def initial_arrays(self) -> Arrays:
        """Ask one client for the starting adapter and head (every client builds the same)."""
        node = self.wait_for_nodes(1)[0]
        query = Message(
            RecordDict({m.CONFIG: self.config(0)}),
            dst_node_id=node,
            message_type=f"{MessageType.QUERY}.{m.QUERY_INIT}",
        )
        replies = collect_replies(
            self.grid,
            [query],
            minimum=1,
            timeout=self.spec.round_timeout,
            useful=lambda r: not r.has_error(),
            poll_interval=self.settings.poll_interval,
        )
        if not replies or replies[0].has_error() or m.ARRAYS not in replies[0].content:
            reason = replies[0].error.reason if replies and replies[0].has_error() else "no reply"
            raise FederationError(f"could not get the initial model from a client ({reason})")
        return _to_arrays(replies[0].content.array_records[m.ARRAYS])

    def payload(self, model: Model) -> tuple[str, ArrayRecord, dict[str, int]]:
        """How the global model travels: arrays in the clear, or the encrypted sum (he)."""
        if isinstance(model, EncryptedGlobal):
            extras = {m.HE_TOTAL_WEIGHT: model.total_weight}
            return m.HE_GLOBAL, chunks_record(model.chunks), extras
        return m.ARRAYS, _to_record(model), {}

    def messages(
        self,
        nodes: Iterable[int],
        kind: str,
        round_: int,
        model: Model,
        *,
        evaluate: bool = False,
    ) -> list[Message]:
        name, record, extras = self.payload(model)
        config = self.config(round_, evaluate=evaluate)
        for key, value in extras.items():
            config[key] = value
        return [
            Message(
                RecordDict({name: record, m.CONFIG: config}),
                dst_node_id=node,
                message_type=kind,
                group_id=str(round_),
            )
            for node in nodes
        ]

    def fits(self, reply: Message, model: Model) -> bool:
        if self.he is not None:
            return has_update(reply)
        return not isinstance(model, EncryptedGlobal) and _fits(reply, model)

    def train(self, round_: int, arrays: Model, report: RoundReport) -> Model:
        spec = self.spec
        nodes = self.wait_for_nodes(spec.clients.minimum)
        rng = random.Random(f"{self.settings.seed}:{round_}")
        sampled = sorted(rng.sample(nodes, min(spec.clients.per_round, len(nodes))))
        pending = self.pending
        secure: SecAggResult | None = None
        if spec.protection == "secagg" and not isinstance(arrays, EncryptedGlobal):
            from server.federation.secagg import (
                secagg_round,  # it drives its stages with collect_replies
            )

            secure = secagg_round(
                self.grid,
                nodes=sampled,
                arrays=arrays,
                config=self.config(round_, evaluate=pending is not None),
                round_=round_,
                timeout=spec.round_timeout,
                minimum=spec.clients.minimum,
                poll_interval=self.settings.poll_interval,
                # weights are scaled by num-examples / max_weight before quantization: near the
                # largest count keeps precision (1000 until the holders' counts are known)
                max_weight=1.25 * self.max_examples if self.max_examples else 1000.0,
            )
            replies = secure.replies
            report.bytes_sent, report.bytes_received = secure.bytes_sent, secure.bytes_received
            report.secagg_error_bound = secure.error_bound
        else:
            messages = self.messages(
                sampled, MessageType.TRAIN, round_, arrays, evaluate=pending is not None
            )
            replies = collect_replies(
                self.grid,
                messages,
                minimum=spec.clients.minimum,
                timeout=spec.round_timeout,
                useful=lambda r: _is_accepted(r) and self.fits(r, arrays),
                poll_interval=self.settings.poll_interval,
            )
            report.bytes_sent = len(sampled) * _record_bytes(self.payload(arrays)[1])
        accepted = self.accept(replies, arrays, report, secure=secure)
        if pending is not None:  # the incoming model is the one the pending round produced
            _fill_evaluation(
                pending, [_record_of(r, m.METRICS) for r in replies], weight=m.EVAL_EXAMPLES
            )
            self.finish(pending)
        for reply in replies:  # declined clients still say what they have spent
            declined = reply.content.metric_records.get(m.METRICS) if reply.has_content() else None
            if declined is not None and declined.get(m.DECLINED):
                report.epsilon[_client_name(reply)] = _number(declined, m.EPSILON)
        if len(accepted) < spec.clients.minimum:
            report.status = "skipped"
            log.warning(
                "round %d: %d useful replies, fewer than the minimum %d; the model is unchanged",
                round_,
                len(accepted),
                spec.clients.minimum,
            )
            return arrays
        if self.he is not None:
            return self.aggregate_encrypted(round_, arrays, accepted, report)
        if secure is not None:  # the coordinator holds only the unmasked sum
            accepted = secure.strategy_replies()
        return self.aggregate_plain(round_, arrays, accepted, report)

    def aggregate_plain(
        self, round_: int, arrays: Model, accepted: list[Message], report: RoundReport
    ) -> Arrays:
        """Flower's strategy (FedAvg, FedAdam, ...) over the updates in the clear."""
        if isinstance(arrays, EncryptedGlobal):
            raise FederationError("an encrypted global model needs protection he")
        if hasattr(self.strategy, "current_arrays"):
            self.strategy.current_arrays = {k: np.array(v) for k, v in arrays.items()}
        aggregated, train_metrics = self.strategy.aggregate_train(round_, accepted)
        if aggregated is None:
            raise FederationError(f"round {round_}: aggregation produced no model")
        if train_metrics is not None and m.TRAIN_LOSS in train_metrics:
            report.train_loss = _number(train_metrics, m.TRAIN_LOSS)
        return _to_arrays(aggregated)

    def accept(
        self,
        replies: list[Message],
        arrays: Model,
        report: RoundReport,
        *,
        secure: SecAggResult | None = None,
    ) -> list[Message]:
        """Sort a round's replies into errors, declines, misfits and accepted updates."""
        accepted = []
        for reply in replies:
            name = _client_name(reply)
            if reply.has_error():
                report.failed.append(f"{name}: {reply.error.reason}")
            elif not _is_accepted(reply):
                info = reply.content.config_records.get(m.INFO)
                report.declined[name] = str(info.get(m.REASON, "declined")) if info else "declined"
            elif secure is not None and reply.metadata.src_node_id not in secure.aggregated:
                node = reply.metadata.src_node_id
                report.failed.append(f"{name}: {secure.dropped.get(node, 'left the protocol')}")
            elif secure is None and not self.fits(reply, arrays):
                report.failed.append(f"{name}: update does not match the global model's arrays")
            else:
                accepted.append(reply)
                metrics = reply.content.metric_records[m.METRICS]
                report.clients.append(name)
                report.epsilon[name] = _number(metrics, m.EPSILON)
                report.noise_multiplier[name] = _number(metrics, m.NOISE_MULTIPLIER)
                report.steps[name] = int(_number(metrics, m.STEPS))
                report.num_examples += int(_number(metrics, m.NUM_EXAMPLES))
                self.max_examples = max(self.max_examples, int(_number(metrics, m.NUM_EXAMPLES)))
                report.train_seconds = max(
                    report.train_seconds,
                    _number(metrics, m.TRAIN_SECONDS),
                )
                if secure is None:
                    update = m.HE_UPDATE if self.he is not None else m.ARRAYS
                    report.bytes_received += _record_bytes(reply.content.array_records[update])
        if secure is not None:
            answered = {r.metadata.src_node_id for r in replies}
            report.failed.extend(
                f"node-{node}: {why}"
                for node, why in secure.dropped.items()
                if node not in answered
            )
            if secure.halted is not None:
                report.failed.append(f"secure aggregation halted: {secure.halted}")
                return []
        return accepted

    def aggregate_encrypted(
        self, round_: int, arrays: Model, accepted: list[Message], report: RoundReport
    ) -> Model:
        """The holders' encrypted weighted sum; a holder whose update fails is left out."""
        named = [(_client_name(reply), reply) for reply in accepted]
        try:
            model, result = aggregate_replies(
                self.he, named, num_values=self.num_values, minimum=self.spec.clients.minimum
            )
        except FederationError as exc:
            report.status = "skipped"
            report.failed.append(str(exc))
            log.warning("round %d: %s; the model is unchanged", round_, exc)
            return arrays
        for name, error in result.rejected.items():
            report.failed.append(f"{name}: {error.reason}")
            if name in report.clients:
                report.clients.remove(name)
        counted = [
            (r, _number(r.content.metric_records[m.METRICS], m.NUM_EXAMPLES))
            for _, r in named
            if _client_name(r) in result.weights
        ]
        total = sum(n for _, n in counted)
        if total > 0:
            report.train_loss = (
                sum(
                    _number(r.content.metric_records[m.METRICS], m.TRAIN_LOSS) * n
                    for r, n in counted
                )
                / total
            )
        return model

    def evaluate(self, round_: int, arrays: Model, report: RoundReport) -> None:
        nodes = sorted(self.grid.get_node_ids())
        if not nodes:
            return
        rng = random.Random(f"{self.settings.seed}:eval:{round_}")
        count = max(1, round(len(nodes) * self.spec.clients.fraction_evaluate))
        sampled = sorted(rng.sample(nodes, min(count, len(nodes))))
        replies = collect_replies(
            self.grid,
            self.messages(sampled, MessageType.EVALUATE, round_, arrays),
            minimum=len(sampled),
            timeout=self.spec.round_timeout,
            useful=_is_accepted,
            poll_interval=self.settings.poll_interval,
        )
        _fill_evaluation(
            report,
            [_record_of(r, m.METRICS) for r in replies if _is_accepted(r)],
            weight=m.NUM_EXAMPLES,
        )

    def start(self) -> tuple[int, Model]:
        checkpoint = self.store.latest()
        if checkpoint is None:
            initial = self.initial_arrays()
            self.num_values = sum(int(v.size) for v in initial.values())
            return 1, initial
        if checkpoint.run_id != self.settings.run_id:
            raise FederationError(
                f"{self.store.directory} holds checkpoints of run {checkpoint.run_id!r}, "
                f"not {self.settings.run_id!r}; use another work directory or run id"
            )
        restore_strategy_state(self.strategy, checkpoint.strategy_state)
        self.metrics.truncate_after(checkpoint.round)
        written = {int(line["round"]) for line in self.metrics.read()}
        pending = checkpoint.meta.get("pending")
        if isinstance(pending, dict) and checkpoint.round not in written:
            self.pending = RoundReport(**pending)
        log.info("resuming run %s after round %d", checkpoint.run_id, checkpoint.round)
        encrypted = from_checkpoint(checkpoint.arrays, checkpoint.meta)
        if encrypted is not None:
            self.num_values = encrypted.num_values
            return checkpoint.round + 1, encrypted
        self.num_values = sum(int(v.size) for v in checkpoint.arrays.values())
        return checkpoint.round + 1, dict(checkpoint.arrays)

    def finish(self, report: RoundReport) -> None:
        """Write the line of a round whose model has been evaluated."""
        self.metrics.append(report.to_dict())
        self.reports.append(report)
        self.pending = None
        if self.progress is not None:
            self.progress(report)

    def run(self, progress: Callable[[RoundReport], None] | None) -> list[RoundReport]:
        self.progress = progress
        first, arrays = self.start()
        for round_ in range(first, self.spec.rounds + 1):
            started = time.monotonic()
            report = RoundReport(round=round_, status="ok")
            arrays = self.train(round_, arrays, report)  # also writes the previous round's line
            report.seconds = time.monotonic() - started
            self.pending = report
            # The line of this round waits for its evaluation (next round's train replies, or
            # the final evaluation), so the checkpoint carries it: a restart still writes it.
            self.save(round_, arrays, pending=report)
        if self.pending is not None:
            last = self.pending
            started = time.monotonic()
            self.evaluate(last.round, arrays, last)
            last.seconds += time.monotonic() - started
            self.finish(last)
        if isinstance(arrays, EncryptedGlobal):
            self.save(self.spec.rounds, self.release(arrays), pending=None, released=True)
        return self.reports

    def save(
        self, round_: int, model: Model, *, pending: RoundReport | None, released: bool = False
    ) -> None:
        meta: dict[str, Any] = {"strategy": self.spec.aggregation.strategy}
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
        self.store.save(
            Checkpoint(
                run_id=self.settings.run_id,
                round=round_,
                arrays=arrays,
                strategy_state=strategy_state(self.strategy),
                meta=meta,
            )
        )

    def release(self, model: EncryptedGlobal) -> Arrays:
        """protection he: ask one holder to decrypt the final model for export (DESIGN.md 5)."""
        node = self.wait_for_nodes(1)[0]
        message = self.messages([node], f"{MessageType.QUERY}.{m.QUERY_RELEASE}", 0, model)[0]
        replies = collect_replies(
            self.grid,
            [message],
            minimum=1,
            timeout=self.spec.round_timeout,
            useful=lambda r: r.has_content() and m.ARRAYS in r.content.array_records,
            poll_interval=self.settings.poll_interval,
        )
        usable = [r for r in replies if r.has_content() and m.ARRAYS in r.content.array_records]
        if not usable:
            reason = replies[0].error.reason if replies and replies[0].has_error() else "no reply"
            raise FederationError(f"no holder released the final model ({reason})")
        return _to_arrays(usable[0].content.array_records[m.ARRAYS])


def run_federation(
    grid: Grid,
    settings: RunSettings,
    *,
    progress: Callable[[RoundReport], None] | None = None,
) -> list[RoundReport]:
    """Run (or resume) every remaining round of the federation; returns this call's rounds."""
    return _Run(grid, settings).run(progress)
