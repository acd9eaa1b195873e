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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    RecordDict,
)
from flwr.serverapp import Grid

from fedge import messages as m
from fedge.errors import FederationError
from fedge.he_wire import PUBLIC_CONTEXT_FILE
from fedge.logs import get_logger
from policies import FederationPolicy
from server.federation.checkpoint import CheckpointStore
from server.federation.he_round import (
    EncryptedGlobal,
    aggregate_replies,
    chunks_record,
    has_update,
)
from server.federation.metrics import MetricsLog, RoundReport
from server.federation.outliers import flag_outliers
from server.federation.replies import (
    client_name,
    collect_replies,
    fill_evaluation,
    fits_arrays,
    is_accepted,
    mean_train_loss,
    metric,
    metrics_of,
    record_bytes,
    sort_replies,
    to_arrays,
    to_record,
)
from server.federation.resume import Model, checkpoint_of, resume
from server.federation.strategy import make_strategy
from server.federation.user_dp import UserLevelDP

if TYPE_CHECKING:
    from server.federation.secagg import SecAggResult

__all__ = ["RoundReport", "RoundStarted", "RunEvent", "RunSettings", "Waiting", "run_federation"]

log = get_logger(__name__)
_MIN_GRACE = 0.5
Arrays = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class Waiting:
    """Progress: fewer holders are connected than the run needs, so it waits for them."""

    needed: int
    connected: int


@dataclass(frozen=True)
class RoundStarted:
    """Progress: a round's train messages went out to ``sampled`` holders."""

    round: int
    rounds: int
    sampled: int


RunEvent = Waiting | RoundStarted


@dataclass(frozen=True)
class RunSettings:
    """What the ServerApp needs: the policy (parsed and as sent), where to write, which run.

    ``observer`` hears what happens between round lines (waiting for holders, a round going
    out), so a command can show progress; the library itself never prints.
    """

    policy: FederationPolicy
    policy_text: str
    workdir: Path
    run_id: str
    seed: int = 0
    poll_interval: float = 0.1
    node_wait: float = 120.0
    he_public_context: Path | None = None  # protection he; default <workdir>/he-public.ctx
    observer: Callable[[RunEvent], None] | None = field(default=None, compare=False)


class _Run:
    def __init__(self, grid: Grid, settings: RunSettings) -> None:
        self.grid = grid
        self.settings = settings
        self.spec = settings.policy.spec
        self.store = CheckpointStore(settings.workdir / "checkpoints")
        self.metrics = MetricsLog(settings.workdir / "metrics.jsonl")
        self.user_dp = UserLevelDP.for_spec(self.spec)  # None: sample-level DP only
        plain = make_strategy(self.spec)
        self.strategy = plain if self.user_dp is None else self.user_dp.wrap(plain)
        self.user_rate = 1.0  # level user/both: this round's holder sampling rate
        self.pending: RoundReport | None = None  # trained, its model not yet evaluated
        self.reports: list[RoundReport] = []
        self.progress: Callable[[RoundReport], None] | None = None
        self.he: Any = None  # protection he: the public context (never a secret key)
        if self.spec.protection == "he":
            from server.federation.he_aggregate import load_public_context

            path = settings.he_public_context or settings.workdir / PUBLIC_CONTEXT_FILE
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
        told = -1  # the connected count last reported to the observer
        while len(nodes := sorted(self.grid.get_node_ids())) < count:
            if len(nodes) != told and self.settings.observer is not None:
                told = len(nodes)
                self.settings.observer(Waiting(needed=count, connected=told))
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
        return to_arrays(replies[0].content.array_records[m.ARRAYS])

    def payload(self, model: Model) -> tuple[str, ArrayRecord, dict[str, int]]:
        """How the global model travels: arrays in the clear, or the encrypted sum (he)."""
        if isinstance(model, EncryptedGlobal):
            extras = {m.HE_TOTAL_WEIGHT: model.total_weight}
            return m.HE_GLOBAL, chunks_record(model.chunks), extras
        return m.ARRAYS, to_record(model), {}

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
        return not isinstance(model, EncryptedGlobal) and fits_arrays(reply, model)

    def train(self, round_: int, arrays: Model, report: RoundReport) -> Model:
        spec = self.spec
        nodes = self.wait_for_nodes(spec.clients.minimum)
        rng = random.Random(f"{self.settings.seed}:{round_}")
        sampled = sorted(rng.sample(nodes, min(spec.clients.per_round, len(nodes))))
        if self.user_dp is not None:  # before anything is sent: refuse a round over the budget
            self.user_rate = self.user_dp.admit(sampled=len(sampled), connected=len(nodes))
        if self.settings.observer is not None:
            self.settings.observer(RoundStarted(round_, spec.rounds, len(sampled)))
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
                useful=lambda r: is_accepted(r) and self.fits(r, arrays),
                poll_interval=self.settings.poll_interval,
            )
            report.bytes_sent = len(sampled) * record_bytes(self.payload(arrays)[1])
        accepted = sort_replies(
            replies,
            report,
            fits=lambda reply: self.fits(reply, arrays),
            update_record=m.HE_UPDATE if self.he is not None else m.ARRAYS,
            secure=secure,
        )
        self.max_examples = max(
            [self.max_examples]
            + [int(metric(r.content.metric_records[m.METRICS], m.NUM_EXAMPLES)) for r in accepted]
        )
        if pending is not None:  # the incoming model is the one the pending round produced
            fill_evaluation(
                pending, [metrics_of(r, m.METRICS) for r in replies], weight=m.EVAL_EXAMPLES
            )
            self.finish(pending)
        for reply in replies:  # declined clients still say what they have spent
            declined = reply.content.metric_records.get(m.METRICS) if reply.has_content() else None
            if declined is not None and declined.get(m.DECLINED):
                report.epsilon[client_name(reply)] = metric(declined, m.EPSILON)
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
        elif not isinstance(arrays, EncryptedGlobal):  # each update in the clear: look at each
            report.flagged = self.outliers(round_, arrays, accepted)
        return self.aggregate_plain(round_, arrays, accepted, report)

    def outliers(self, round_: int, arrays: Arrays, accepted: list[Message]) -> dict[str, str]:
        """Holders whose update is far outside the others' (outliers.py); read before the
        strategy runs, as FedMedian and FedTrimmedAvg consume the replies' arrays."""
        updates = {
            client_name(reply): to_arrays(reply.content.array_records[m.ARRAYS])
            for reply in accepted
        }
        flagged = flag_outliers(arrays, updates)
        for name, reason in flagged.items():
            log.warning("round %d: %s flagged: %s", round_, name, reason)
        return flagged

    def aggregate_plain(
        self, round_: int, arrays: Model, accepted: list[Message], report: RoundReport
    ) -> Arrays:
        """Flower's strategy (FedAvg, FedAdam, ...) over the updates in the clear."""
        if isinstance(arrays, EncryptedGlobal):
            raise FederationError("an encrypted global model needs protection he")
        if self.user_dp is not None:
            self.user_dp.prepare(arrays, accepted)
        elif hasattr(self.strategy, "current_arrays"):
            self.strategy.current_arrays = {k: np.array(v) for k, v in arrays.items()}
        aggregated, train_metrics = self.strategy.aggregate_train(round_, accepted)
        if aggregated is None:
            raise FederationError(f"round {round_}: aggregation produced no model")
        if self.user_dp is not None:  # released: charge the round to the run's user-level price
            report.user_sample_rate = self.user_rate
            report.user_noise_multiplier = self.user_dp.noise_multiplier
            report.user_clipping_norm = self.user_dp.clipping_norm
            report.user_epsilon = self.user_dp.record(self.user_rate)
        if train_metrics is not None and m.TRAIN_LOSS in train_metrics:
            report.train_loss = metric(train_metrics, m.TRAIN_LOSS)
        return to_arrays(aggregated)

    def aggregate_encrypted(
        self, round_: int, arrays: Model, accepted: list[Message], report: RoundReport
    ) -> Model:
        """The holders' encrypted weighted sum; a holder whose update fails is left out."""
        named = [(client_name(reply), reply) for reply in accepted]
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
        loss = mean_train_loss(r for name, r in named if name in result.weights)
        if loss is not None:
            report.train_loss = loss
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
            useful=is_accepted,
            poll_interval=self.settings.poll_interval,
        )
        fill_evaluation(
            report,
            [metrics_of(r, m.METRICS) for r in replies if is_accepted(r)],
            weight=m.NUM_EXAMPLES,
        )

    def start(self) -> tuple[int, Model]:
        checkpoint = self.store.latest()
        if checkpoint is None:
            initial = self.initial_arrays()
            self.num_values = sum(int(v.size) for v in initial.values())
            return 1, initial
        resumed = resume(
            checkpoint,
            run_id=self.settings.run_id,
            where=self.store.directory,
            metrics=self.metrics,
            strategy=self.strategy,
        )
        if self.user_dp is not None:
            state = checkpoint.meta.get("userDp")
            if not isinstance(state, dict):
                raise FederationError(
                    f"{self.store.directory}: the checkpoint has no user-level DP history; "
                    "it was written by a run without privacy.level user or both"
                )
            self.user_dp.restore(state)
        self.pending, self.num_values = resumed.pending, resumed.num_values
        return resumed.next_round, resumed.model

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
        self.store.save(
            checkpoint_of(
                model,
                run_id=self.settings.run_id,
                round_=round_,
                strategy=self.strategy,
                strategy_name=self.spec.aggregation.strategy,
                pending=pending,
                released=released,
                user_dp=None if self.user_dp is None else self.user_dp.state(),
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
        return to_arrays(usable[0].content.array_records[m.ARRAYS])


def run_federation(
    grid: Grid,
    settings: RunSettings,
    *,
    progress: Callable[[RoundReport], None] | None = None,
) -> list[RoundReport]:
    """Run (or resume) every remaining round of the federation; returns this call's rounds."""
    return _Run(grid, settings).run(progress)
