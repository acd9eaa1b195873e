"""One SecAgg+ round inside fedge's own round loop: the coordinator learns only the masked sum.

Flower 1.41 ships SecAgg+ for its legacy API: ``SecAggPlusWorkflow`` runs the four stages
(setup, share keys, collect masked vectors, unmask) as TRAIN messages over a Grid and reads
the round from a ``LegacyContext``. This module runs that workflow for one round, on the nodes
fedge sampled, so the protocol stays Flower's code; it adds three small adapters:

- a Strategy that "samples" exactly fedge's nodes with fedge's config and keeps what the
  workflow hands to ``aggregate_fit`` (the unmasked weighted average and the weights);
- a Grid that runs each stage through :func:`server.federation.replies.collect_replies` (fedge's
  polling and its minimum-plus-grace close, instead of a blocking wait; the Deployment
  Engine's own Grid polls every 3 s), counts the bytes, keeps the training stage's replies
  (metrics and info; the masked vector stays inside the protocol) and turns a holder's
  decline into the error reply the workflow treats as a drop-out;
- a workflow subclass that forgets nodes that dropped out before the masked-vector stage.
  Flower's unmask stage counts them as dead: it would ask their neighbours for key shares none
  of them holds (they never received any) and compensate masks none of them added, so one slow
  ClientApp start would fail the whole round. A node that drops out during or after the
  masked-vector stage is the case the protocol is built for, and is left to it.

The result is the weighted average of the updates (weighted by each holder's num-examples,
quantized as Flower's mod does), within :func:`quantization_error_bound` of plain FedAvg.

One job, one module (hence its length): the three adapters only make sense together, around one
run of Flower's workflow. Every Flower internal they touch is listed in
``server/federation/flower_internals.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    RecordDict,
)
from flwr.app.message.message import make_message
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    parameters_to_ndarrays,
)
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.proto.node_pb2 import NodeInfo
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from client.contract import secagg_masks
from fedge import messages as m
from fedge.errors import FederationError, UsageError
from fedge.logs import get_logger
from server.federation.replies import collect_replies

__all__ = [
    "SecAggResult",
    "quantization_error_bound",
    "secagg_round",
]

log = get_logger(__name__)
Arrays = dict[str, npt.NDArray[Any]]

# The holders' mask generator (client/contract/secagg_masks.py): the masks of drop-outs that
# this side regenerates must be the ones they added.
secagg_masks.install()


@dataclass(frozen=True)
class SecAggResult:
    """What one SecAgg+ round gave the coordinator, and all it saw.

    ``replies`` are the training stage's replies reshaped as fedge's (``metrics`` and ``info``
    records, never arrays): accepted ones from the nodes in ``aggregated``, declines as the
    holder sent them, and error replies. ``dropped`` says why each other sampled node is not
    in the sum. ``arrays`` is None when the protocol halted (``halted`` says where and why).
    ``bytes_*`` count the payload of all four stages (array data and the serialized config
    and metric records: keys, shares, masked vectors), not only array data. ``error_bound``
    is :func:`quantization_error_bound` for the aggregated weights, with no knowledge of the
    updates' values: a guaranteed, loose bound.
    """

    arrays: Arrays | None
    replies: list[Message]
    aggregated: list[int]
    dropped: dict[int, str]
    num_examples: int
    bytes_sent: int
    bytes_received: int
    error_bound: float
    halted: str | None = None

    def strategy_replies(self) -> list[Message]:
        """The accepted replies, each carrying the secure average as its ``arrays``.

        This is how Flower's own workflow hands SecAgg+ results to a Strategy (every result's
        parameters replaced by the aggregate): FedAvg over them returns the average, FedAdam
        and its kin take their server step from it, and train metrics aggregate as usual.
        """
        if self.arrays is None:
            return []
        record = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in self.arrays.items()})
        accepted = []
        for reply in self.replies:
            if reply.has_error() or reply.metadata.src_node_id not in self.aggregated:
                continue
            content = RecordDict({m.ARRAYS: record})
            for name in (m.METRICS, m.INFO):
                if name in reply.content:
                    content[name] = reply.content[name]
            accepted.append(make_message(metadata=reply.metadata, content=content))
        return accepted


def quantization_error_bound(
    weights: Sequence[float],
    *,
    clipping_range: float,
    quantization_range: int,
    max_weight: float,
    max_abs: float | None = None,
) -> float:
    """Largest difference between SecAgg+'s weighted average and exact FedAvg, per value.

    ``weights`` are the aggregated holders' num-examples.

    Each holder sends ``q_i = round(n_i / max_weight * Q)`` and its update scaled by
    ``q_i / Q``, stochastically rounded on a grid of ``2 * clipping_range / Q``; the server
    divides the sum by ``sum(q_i) / Q``. Rounding each value costs less than one grid step per
    holder, and rounding the weights moves the average by at most ``max_abs`` per half step
    of each weight, so with ``k`` holders the error is below
    ``k * (2 * clipping_range + max_abs) / sum(q_i)``, ``max_abs`` being the largest magnitude
    of any value in any update. The coordinator never sees one; without ``max_abs`` the bound
    takes the largest a holder may send (client/federation/secagg.py drops out rather than let its
    scaled update be clipped): ``clipping_range * Q / min(q_i)``. Arrays come back in their own
    dtype, so add that dtype's rounding for float32 models.
    """
    quantized = [round(w / max_weight * quantization_range) for w in weights]
    if not quantized or min(quantized) <= 0:
        return math.inf
    if max_abs is None:
        max_abs = clipping_range * quantization_range / min(quantized)
    return len(quantized) * (2 * clipping_range + max_abs) / sum(quantized) * (1 + 1e-9)


def secagg_round(
    grid: Grid,
    *,
    nodes: Sequence[int],
    arrays: Arrays,
    config: ConfigRecord,
    round_: int,
    timeout: float,
    minimum: int | None = None,
    num_shares: int | float = 1.0,
    reconstruction_threshold: int | float = 0.5,
    clipping_range: float = 8.0,
    quantization_range: int = 2**22,
    modulus_range: int = 2**32,
    max_weight: float = 1000.0,
    poll_interval: float = 0.1,
) -> SecAggResult:
    """Train ``nodes`` on ``arrays`` for one round and securely average their updates.

    ``config`` is the train config every holder gets (fedge's CONFIG record); ``timeout``
    bounds each of the four stages. Each stage closes once every node answered, or at the
    timeout, or when ``minimum`` (default: all of ``nodes``) answered and a grace period
    passed. ``num_shares`` and ``reconstruction_threshold`` are Flower's: as floats, fractions
    of the sampled nodes and of the shares (1.0 and 0.5: every node shares its secrets with
    every other, and half of them, at least two, rebuild a drop-out's masks).
    ``max_weight`` must be near the largest num-examples: updates are scaled by
    ``num-examples / max_weight`` before clipping to ``clipping_range``, so a much larger
    ``max_weight`` costs precision and a holder whose scaled update would be clipped drops
    out instead (client/federation/secagg.py).
    """
    names = list(arrays)
    sampled = list(dict.fromkeys(nodes))
    if len(sampled) < 2:
        # The masked sum of one update is the update: there is nothing to hide it among.
        too_few = f"secure aggregation needs at least 2 clients, {len(sampled)} sampled"
        log.warning("round %d: %s", round_, too_few)
        return SecAggResult(
            arrays=None,
            replies=[],
            aggregated=[],
            dropped={n: too_few for n in sampled},
            num_examples=0,
            bytes_sent=0,
            bytes_received=0,
            error_bound=math.inf,
            halted=too_few,
        )
    try:
        workflow = _Workflow(
            num_shares,
            reconstruction_threshold,
            max_weight=max_weight,
            clipping_range=clipping_range,
            quantization_range=quantization_range,
            modulus_range=modulus_range,
            timeout=timeout,
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(f"secure aggregation settings: {exc}") from exc
    wire = _StageGrid(
        grid,
        minimum=len(sampled) if minimum is None else minimum,
        poll_interval=poll_interval,
    )
    strategy = _Sampled(sampled, grid, config, names)
    state = RecordDict(
        {
            MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: round_}),
            MAIN_PARAMS_RECORD: ArrayRecord(
                {str(i): Array(np.ascontiguousarray(arrays[n])) for i, n in enumerate(names)}
            ),
        }
    )
    context = LegacyContext(
        Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=state, run_config={}),
        strategy=strategy,
    )
    workflow(wire, context)

    aggregated = sorted(strategy.weights)
    weights = [strategy.weights[n] for n in aggregated]
    dropped = {n: wire.why_dropped(n) for n in sampled if n not in strategy.weights}
    halted = workflow.halted
    result: Arrays | None = None
    bound = math.inf
    if strategy.average is not None and halted is None:
        result = _named(strategy.average, arrays)
        bound = quantization_error_bound(
            weights,
            clipping_range=clipping_range,
            quantization_range=quantization_range,
            max_weight=max_weight,
        )
    elif halted is None:
        halted = "secure aggregation produced no aggregate"
    if halted is not None:
        log.warning("round %d: %s", round_, halted)
    return SecAggResult(
        arrays=result,
        replies=wire.training_replies,
        aggregated=aggregated if result is not None else [],
        dropped=dropped if result is not None else {n: halted or "" for n in sampled},
        num_examples=int(sum(weights)) if result is not None else 0,
        bytes_sent=wire.bytes_sent,
        bytes_received=wire.bytes_received,
        error_bound=bound,
        halted=halted,
    )


def _named(average: Parameters, reference: Arrays) -> Arrays:
    values = parameters_to_ndarrays(average)
    if len(values) != len(reference):
        raise FederationError("secure aggregation returned a different number of arrays")
    named: Arrays = {}
    for (name, ref), value in zip(reference.items(), values, strict=True):
        if value.shape != ref.shape:
            raise FederationError(f"secure aggregation returned {name} in another shape")
        named[name] = value.astype(ref.dtype, copy=False)
    return named


def _content_bytes(message: Message) -> int:
    """Payload bytes: array data plus the serialized config and metric records."""
    if not message.has_content():
        return 0
    total = 0
    for record in message.content.values():
        if isinstance(record, ArrayRecord):
            total += sum(len(array.data) for array in record.values())
        else:
            total += len(record.deflate())
    return total


def _stage(message: Message) -> str | None:
    configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
    stage = configs.get(Key.STAGE) if configs is not None else None
    return stage if isinstance(stage, str) else None


def _masked(reply: Message) -> bool:
    if reply.has_error() or not reply.has_content():
        return False
    configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
    return configs is not None and Key.MASKED_PARAMETERS in configs


def _as_fedge(reply: Message) -> Message:
    """The training reply as fedge reads one: metrics and info only."""
    if reply.has_error() or not reply.has_content():
        return reply
    kept = RecordDict(
        {name: reply.content[name] for name in (m.METRICS, m.INFO) if name in reply.content}
    )
    return make_message(metadata=reply.metadata, content=kept)


def _reason(reply: Message) -> str:
    if reply.has_error():
        return f"failed: {reply.error.reason or f'error {reply.error.code}'}"
    info = reply.content.config_records.get(m.INFO)
    reason = info.get(m.REASON) if info is not None else None
    return f"declined: {reason}" if isinstance(reason, str) else "declined"


class _StageGrid(Grid):
    """The Grid the workflow sees: fedge's reply collection, and a record of the round."""

    def __init__(self, grid: Grid, *, minimum: int, poll_interval: float) -> None:
        self._grid = grid
        self._minimum = minimum
        self._poll_interval = poll_interval
        self.bytes_sent = 0
        self.bytes_received = 0
        self.training_replies: list[Message] = []
        self._why: dict[int, str] = {}

    def why_dropped(self, node: int) -> str:
        return self._why.get(node, "no reply in time")

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        batch = list(messages)
        if not batch:
            return []
        stage = _stage(batch[0])
        training = stage == Stage.COLLECT_MASKED_VECTORS
        self.bytes_sent += sum(_content_bytes(message) for message in batch)
        replies = collect_replies(
            self._grid,
            batch,
            minimum=min(self._minimum, len(batch)),
            timeout=math.inf if timeout is None else timeout,
            useful=_masked if training else (lambda reply: not reply.has_error()),
            poll_interval=self._poll_interval,
        )
        self.bytes_received += sum(_content_bytes(reply) for reply in replies)
        answered = {reply.metadata.src_node_id for reply in replies}
        for message in batch:
            if message.metadata.dst_node_id not in answered:
                self._why.setdefault(message.metadata.dst_node_id, f"no reply in the {stage} stage")
        for reply in replies:
            if reply.has_error() or (training and not _masked(reply)):
                self._why.setdefault(reply.metadata.src_node_id, _reason(reply))
        if not training:
            return replies
        self.training_replies = [_as_fedge(reply) for reply in replies]
        # A decline carries no masked vector: for the workflow it is a node that dropped out.
        return [
            reply
            if reply.has_error() or _masked(reply)
            else make_message(
                metadata=reply.metadata,
                error=Error(code=ErrorCode.UNKNOWN, reason=_reason(reply)),
            )
            for reply in replies
        ]


class _Sampled(Strategy):
    """The legacy Strategy the workflow asks: fedge already chose the nodes and the config."""

    def __init__(
        self, nodes: Sequence[int], grid: Grid, config: ConfigRecord, names: list[str]
    ) -> None:
        self._nodes = list(nodes)
        self._grid = grid
        self._config: dict[str, Scalar] = {}
        for key, value in config.items():
            if not isinstance(value, bool | bytes | float | int | str):
                raise FederationError(f"secure aggregation: config key {key!r} is not a scalar")
            self._config[key] = value
        self._config[m.SECAGG_ARRAY_NAMES] = json.dumps(names)
        self.average: Parameters | None = None
        self.weights: dict[int, int] = {}

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        run_id = self._grid.run.run_id
        return [
            (GridClientProxy(node, self._grid, run_id), FitIns(parameters, dict(self._config)))
            for node in self._nodes
        ]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        # The workflow has put the unmasked weighted average into every result's parameters.
        self.weights = {proxy.node_id: res.num_examples for proxy, res in results}
        self.average = results[0][1].parameters if results else None
        return self.average, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return None


class _Workflow(SecAggPlusWorkflow):
    """Flower's workflow, minus the nodes that left before there was anything to unmask."""

    halted: str | None = None

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        ok = super().setup_stage(grid, context, state)
        if not state.active_node_ids:  # nobody to run the protocol with, or no one answered
            return self._halt(ok, "setup", state)
        return self._halt(self._forget_absent(state), "setup", state)

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        super().share_keys_stage(grid, context, state)
        return self._halt(self._forget_absent(state), "share-keys", state)

    def collect_masked_vectors_stage(
        self, grid: Grid, context: LegacyContext, state: WorkflowState
    ) -> bool:
        ok = super().collect_masked_vectors_stage(grid, context, state)
        return self._halt(ok, "collect-masked-vectors", state)

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        ok = super().unmask_stage(grid, context, state)
        return self._halt(ok, "unmask", state)

    def _forget_absent(self, state: WorkflowState) -> bool:
        """Nodes that did not answer before the masked-vector stage hold nothing and owe
        nothing: no one received their shares or masked with them."""
        active = set(state.active_node_ids)
        state.sampled_node_ids = set(active)
        state.nid_to_neighbours = {
            node: neighbours & active
            for node, neighbours in state.nid_to_neighbours.items()
            if node in active
        }
        return self._check_threshold(state)

    def _halt(self, ok: bool, stage: str, state: WorkflowState) -> bool:
        if not ok and self.halted is None:
            self.halted = (
                f"secure aggregation stopped in the {stage} stage with "
                f"{len(state.active_node_ids)} of {len(state.sampled_node_ids)} client(s) left; "
                f"it needs at least {max(state.threshold, 2)} per neighbourhood"
            )
        return ok
