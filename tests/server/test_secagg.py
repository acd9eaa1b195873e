"""SecAgg+ in Flower's simulation engine: the masked sum equals plain FedAvg, and nothing else.

One simulation (real Ray backend, 4 virtual SuperNodes) runs a tiny ServerApp that drives
fedge's rounds by hand: a plain round over 3 clients, then SecAgg+ rounds through
server/federation/secagg.py, with client/federation/secagg.py's mod around a ClientApp that answers in fedge's reply
format with known updates (the global arrays plus a fixed offset per client, weighted by a
fixed example count). Training is replaced by those known updates so the expected average is
exact arithmetic; every message still crosses the simulation engine and Flower's own SecAgg+
code on both sides. The ServerApp sees the Grid through a spy that keeps every reply it pulled.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.app.message.message import make_message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

import client.federation.secagg as client_secagg
import server.federation.secagg as server_secagg
from client.federation.secagg import arrived_masked, secagg_mod
from fedge import messages as m
from server.federation.replies import collect_replies
from server.federation.secagg import SecAggResult, quantization_error_bound, secagg_round

CLIP = 8.0
QUANT = 2**22
MAX_WEIGHT = 100.0
WEIGHTS = {0: 20, 1: 35, 2: 50, 3: 80}  # num-examples per partition
SHAPES = {"lora.A": (4, 8), "lora.B": (8, 4), "classifier.weight": (2, 8), "classifier.bias": (2,)}
DECLINES_IN_ROUND = 2  # partition 3 declines (its budget) in this round
FAILS_SETUP_IN_ROUND = 3  # partition 3 errors in the setup stage of this round
OVERSIZED_IN_ROUND = 4  # partition 2's update exceeds the clipping range in this round
ROUNDS = 4


def _offset(partition: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1000 + partition)
    return {k: rng.normal(0.0, 0.5, s).astype(np.float32) for k, s in SHAPES.items()}


def _initial() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {k: rng.normal(0.0, 0.2, s).astype(np.float32) for k, s in SHAPES.items()}


def _update(partition: int, incoming: dict[str, np.ndarray], round_: int) -> dict[str, np.ndarray]:
    scale = 40.0 if (partition, round_) == (2, OVERSIZED_IN_ROUND) else 1.0
    return {k: (incoming[k] + scale * v).astype(np.float32) for k, v in _offset(partition).items()}


# ------------------------------------------------------------------------------- the ClientApp


def _fail_setup(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """A holder whose ClientApp breaks in the setup stage: it drops out before any shares."""
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS) if msg.has_content() else None
    if (
        configs is not None
        and configs.get(Key.STAGE) == "setup"
        and int(ctxt.node_config["partition-id"]) == 3
        and msg.metadata.group_id == str(FAILS_SETUP_IN_ROUND)
    ):
        raise RuntimeError("this holder's ClientApp crashed")
    return call_next(msg, ctxt)


_client_app = ClientApp(mods=[_fail_setup, secagg_mod])


@_client_app.train()
def _train(msg: Message, ctxt: Context) -> Message:
    """fedge's reply format, with a known update instead of training."""
    partition = int(ctxt.node_config["partition-id"])
    round_ = int(str(msg.content.config_records[m.CONFIG][m.ROUND]))
    info = ConfigRecord({m.CLIENT: f"client-{partition}"})
    epsilon = 0.5 + partition + round_ / 10
    if partition == 3 and round_ == DECLINES_IN_ROUND:
        info[m.REASON] = "the round would exceed the privacy budget"
        metrics = MetricRecord({m.DECLINED: 1, m.NUM_EXAMPLES: 0, m.EPSILON: epsilon})
        return Message(RecordDict({m.METRICS: metrics, m.INFO: info}), reply_to=msg)
    incoming = {k: v.numpy() for k, v in msg.content.array_records[m.ARRAYS].items()}
    update = _update(partition, incoming, round_)
    metrics = MetricRecord(
        {
            m.NUM_EXAMPLES: WEIGHTS[partition],
            m.EPSILON: epsilon,
            m.DECLINED: 0,
            "masked": int(arrived_masked(msg)),
        }
    )
    content = RecordDict(
        {
            m.ARRAYS: ArrayRecord({k: Array(v) for k, v in update.items()}),
            m.METRICS: metrics,
            m.INFO: info,
        }
    )
    return Message(content, reply_to=msg)


# ------------------------------------------------------------------------------- the ServerApp


class _SpyGrid(Grid):
    """The real Grid, keeping every reply the coordinator pulled (what it could have seen)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.pulled: list[Message] = []

    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.grid.pull_messages(message_ids))
        self.pulled.extend(replies)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Any:
        raise AssertionError("fedge's code pushes and pulls itself")


@dataclass
class _Run:
    names: dict[int, str] = field(default_factory=dict)  # node id -> client name
    plain: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # client -> update
    plain_masked_flags: list[int] = field(default_factory=list)
    globals_in: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    results: dict[int, SecAggResult] = field(default_factory=dict)
    pulled: dict[int, list[Message]] = field(default_factory=dict)


def _config(round_: int) -> ConfigRecord:
    return ConfigRecord({m.ROUND: round_, m.ROUNDS: ROUNDS, m.RUN_ID: "secagg-test"})


def _server_app(run: _Run) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        deadline = time.monotonic() + 60
        while len(nodes := sorted(grid.get_node_ids())) < 4:
            assert time.monotonic() < deadline, "the simulation started too few nodes"
            time.sleep(0.1)
        arrays = _initial()
        record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        # A plain round: fedge's ordinary train messages reach the app through the mod untouched.
        plain = collect_replies(
            grid,
            [
                Message(
                    RecordDict({m.ARRAYS: record, m.CONFIG: _config(1)}),
                    dst_node_id=node,
                    message_type=MessageType.TRAIN,
                    group_id="1",
                )
                for node in nodes
            ],
            minimum=4,
            timeout=60,
            useful=lambda r: not r.has_error(),
        )
        for reply in plain:
            assert not reply.has_error(), reply.error
            name = str(reply.content.config_records[m.INFO][m.CLIENT])
            run.names[reply.metadata.src_node_id] = name
            run.plain[name] = {
                k: v.numpy() for k, v in reply.content.array_records[m.ARRAYS].items()
            }
            run.plain_masked_flags.append(
                int(str(reply.content.metric_records[m.METRICS]["masked"]))
            )
        three = [n for n in nodes if run.names[n] != "client-3"]
        for round_ in range(1, ROUNDS + 1):
            spy = _SpyGrid(grid)
            run.globals_in[round_] = arrays
            result = secagg_round(
                spy,
                nodes=three if round_ == 1 else nodes,
                arrays=arrays,
                config=_config(round_),
                round_=round_,
                timeout=60,
                clipping_range=CLIP,
                quantization_range=QUANT,
                max_weight=MAX_WEIGHT,
            )
            run.results[round_] = result
            run.pulled[round_] = spy.pulled
            assert result.arrays is not None, result.halted
            arrays = result.arrays

    return app


def _fedavg(updates: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    total = sum(WEIGHTS[int(c.split("-")[1])] for c in updates)
    average: dict[str, np.ndarray] = {}
    for k, shape in SHAPES.items():
        average[k] = np.zeros(shape)
        for c, u in updates.items():
            average[k] += WEIGHTS[int(c.split("-")[1])] / total * u[k].astype(np.float64)
    return average


@pytest.fixture(scope="module")
def simulated() -> _Run:
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    run = _Run()
    run_simulation(
        server_app=_server_app(run),
        client_app=_client_app,
        num_supernodes=4,
        backend_config={
            "client_resources": {"num_cpus": 0.5, "num_gpus": 0.0},
            "init_args": {"include_dashboard": False},
        },
    )
    assert len(run.results) == ROUNDS, "the ServerApp stopped early (see the log above)"
    return run


# ------------------------------------------------------------------------------- slow: the runs


def _bound(clients: list[str], updates: dict[str, dict[str, np.ndarray]]) -> float:
    largest = max(float(np.max(np.abs(v))) for c in clients for v in updates[c].values())
    quantization = quantization_error_bound(
        [WEIGHTS[int(c.split("-")[1])] for c in clients],
        clipping_range=CLIP,
        quantization_range=QUANT,
        max_weight=MAX_WEIGHT,
        max_abs=largest,
    )
    # and the float32 the average comes back in
    return quantization + largest * float(np.finfo(np.float32).eps)


@pytest.mark.slow
def test_three_clients_secagg_equals_plain_fedavg_within_the_quantization_error(simulated) -> None:
    result = simulated.results[1]
    clients = sorted(simulated.names[n] for n in result.aggregated)
    assert clients == ["client-0", "client-1", "client-2"]
    assert result.dropped == {} and result.halted is None
    expected = _fedavg({c: simulated.plain[c] for c in clients})
    bound = _bound(clients, simulated.plain)
    assert 0 < bound < 1e-4
    assert result.error_bound >= quantization_error_bound(
        [20, 35, 50], clipping_range=CLIP, quantization_range=QUANT, max_weight=MAX_WEIGHT
    )
    worst = max(float(np.max(np.abs(result.arrays[k] - expected[k]))) for k in SHAPES)
    assert worst <= bound, (worst, bound)
    # not merely close to some average: a different weighting is far outside the bound
    unweighted = {k: np.mean([simulated.plain[c][k] for c in clients], axis=0) for k in SHAPES}
    assert (
        max(float(np.max(np.abs(result.arrays[k] - unweighted[k]))) for k in SHAPES) > 100 * bound
    )
    assert {k: v.dtype for k, v in result.arrays.items()} == {k: np.float32 for k in SHAPES}
    assert result.num_examples == 105
    # fedge's strategies take the secure average through the accepted replies
    replies = result.strategy_replies()
    assert len(replies) == 3
    via_strategy, metrics = FedAvg(weighted_by_key=m.NUM_EXAMPLES).aggregate_train(1, replies)
    assert via_strategy is not None and metrics is not None
    for k in SHAPES:
        assert np.allclose(via_strategy[k].numpy(), result.arrays[k], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_the_plain_round_passed_through_the_mod_untouched(simulated) -> None:
    assert sorted(simulated.plain) == ["client-0", "client-1", "client-2", "client-3"]
    assert simulated.plain_masked_flags == [0, 0, 0, 0]
    initial = _initial()
    for name, update in simulated.plain.items():
        expected = _update(int(name.split("-")[1]), initial, 1)
        assert all(np.array_equal(update[k], expected[k]) for k in SHAPES)


@pytest.mark.slow
def test_the_coordinator_never_holds_an_individual_update(simulated) -> None:
    for round_, pulled in simulated.pulled.items():
        assert pulled, f"round {round_}: nothing pulled"
        for reply in pulled:
            if reply.has_error():
                continue
            for record in reply.content.array_records.values():
                assert len(record) == 0, f"round {round_}: a reply carries arrays"
            assert m.ARRAYS not in reply.content
    # The masked vectors it did get do not dequantize to any holder's update.
    result = simulated.results[1]
    names = simulated.names
    masked = [
        r
        for r in simulated.pulled[1]
        if r.has_content() and Key.MASKED_PARAMETERS in r.content.config_records[RECORD_KEY_CONFIGS]
    ]
    assert len(masked) == 3
    for reply in masked:
        vectors = [
            bytes_to_ndarray(b)
            for b in reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
        ]
        partition = int(names[reply.metadata.src_node_id].split("-")[1])
        ratio = round(WEIGHTS[partition] / MAX_WEIGHT * QUANT) / QUANT
        guess = [v / ratio for v in dequantize(vectors[1:], CLIP, QUANT)]
        update = simulated.plain[f"client-{partition}"]
        for value, key in zip(guess, SHAPES, strict=True):
            assert float(np.mean(np.abs(value - update[key]))) > 1.0
    # metrics and info still reach the coordinator, as in a plain round
    epsilons = {
        str(r.content.config_records[m.INFO][m.CLIENT]): r.content.metric_records[m.METRICS][
            m.EPSILON
        ]
        for r in result.replies
    }
    assert epsilons == pytest.approx({"client-0": 0.6, "client-1": 1.6, "client-2": 2.6})
    assert all(r.content.metric_records[m.METRICS]["masked"] == 1 for r in result.replies)
    assert result.bytes_received > 0 and result.bytes_sent > 0


def _check_round_without(simulated: _Run, round_: int, absent: str) -> SecAggResult:
    result = simulated.results[round_]
    assert result.arrays is not None, result.halted
    clients = sorted(simulated.names[n] for n in result.aggregated)
    expected_clients = sorted(c for c in simulated.names.values() if c != absent)
    assert clients == expected_clients, result.dropped
    incoming = simulated.globals_in[round_]
    updates = {c: _update(int(c.split("-")[1]), incoming, round_) for c in clients}
    expected = _fedavg(updates)
    worst = max(float(np.max(np.abs(result.arrays[k] - expected[k]))) for k in SHAPES)
    assert worst <= _bound(clients, updates), worst
    (node,) = [n for n, c in simulated.names.items() if c == absent]
    assert list(result.dropped) == [node]
    return result


@pytest.mark.slow
def test_a_declined_round_is_a_drop_out_and_its_reason_and_epsilon_reach_the_coordinator(
    simulated,
) -> None:
    result = _check_round_without(simulated, DECLINES_IN_ROUND, "client-3")
    (node,) = result.dropped
    assert result.dropped[node] == "declined: the round would exceed the privacy budget"
    (decline,) = [r for r in result.replies if r.metadata.src_node_id == node]
    assert decline.content.metric_records[m.METRICS][m.DECLINED] == 1
    assert decline.content.metric_records[m.METRICS][m.EPSILON] == pytest.approx(3.7)
    assert str(decline.content.config_records[m.INFO][m.REASON]).startswith("the round would")


@pytest.mark.slow
def test_a_client_lost_before_any_shares_does_not_fail_the_round(simulated) -> None:
    result = _check_round_without(simulated, FAILS_SETUP_IN_ROUND, "client-3")
    (reason,) = result.dropped.values()
    assert reason.startswith("failed:") and "crashed" in reason


@pytest.mark.slow
def test_an_update_beyond_the_clipping_range_drops_out_instead_of_being_clipped(simulated) -> None:
    result = _check_round_without(simulated, OVERSIZED_IN_ROUND, "client-2")
    (reason,) = result.dropped.values()
    assert "clipping range" in reason


# ------------------------------------------------------------------------------- fast


def test_both_sides_name_the_arrays_under_the_kernels_key() -> None:
    for module in (client_secagg, server_secagg):
        source = inspect.getsource(module)
        assert "m.SECAGG_ARRAY_NAMES" in source, module.__name__
        assert f'"{m.SECAGG_ARRAY_NAMES}"' not in source, f"{module.__name__} copies the key"


@pytest.mark.parametrize("kind", [MessageType.TRAIN, MessageType.EVALUATE, "query.fedge_init"])
def test_messages_without_secagg_configs_pass_through_the_mod_untouched(kind: str) -> None:
    """No transport needed: the mod is a function of (message, context, next handler)."""

    def make(content: RecordDict) -> Message:
        metadata = Metadata(
            run_id=1,
            message_id="m1",
            src_node_id=0,
            dst_node_id=1,
            reply_to_message_id="",
            group_id="1",
            created_at=0.0,
            ttl=60.0,
            message_type=kind,
        )
        return make_message(metadata=metadata, content=content)

    content = RecordDict({m.CONFIG: _config(1)})
    message = make(content)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    seen: list[Message] = []
    sentinel = make(RecordDict())

    def handler(msg: Message, ctxt: Context) -> Message:
        seen.append(msg)
        return sentinel

    assert secagg_mod(message, context, handler) is sentinel
    assert seen == [message] and seen[0].content is content
    assert RECORD_KEY_STATE not in context.state.config_records
    assert not arrived_masked(message)


def test_the_error_bound_follows_the_weights_and_ranges() -> None:
    base = quantization_error_bound(
        [20, 35, 50], clipping_range=8.0, quantization_range=2**22, max_weight=100.0, max_abs=1.0
    )
    # k * (2c + max_abs) / sum(q_i), q_i = round(n_i / W * Q)
    q = [round(n / 100.0 * 2**22) for n in (20, 35, 50)]
    assert base == pytest.approx(3 * 17.0 / sum(q))
    looser = quantization_error_bound(
        [20, 35, 50], clipping_range=8.0, quantization_range=2**22, max_weight=100.0
    )
    assert looser > base  # without max_abs it assumes the largest value a holder may send
    assert quantization_error_bound(
        [0], clipping_range=8.0, quantization_range=2**22, max_weight=1000.0
    ) == float("inf")
