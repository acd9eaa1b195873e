"""``fedge train``'s operator experience without a SuperLink: progress, --rounds, the TLS check.

The real-SuperLink side (Ctrl-C stops the run, ``fedge runs``) is tests/server/test_runs_cli.py.
Here: the ServerApp's progress events (a Grid that gains nodes), the progress file the deployed
ServerApp leaves and ``fedge train`` follows, the operator's lines, the ``--rounds`` override
and its resume check, and the two different errors for a wrong port and a wrong CA (against a
real TLS server on loopback).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedge.errors import UsageError
from fedge.process import LOOPBACK
from fedge.tls import CertPaths, generate_federation_certs
from server.cli.app import app
from server.federation.checkpoint import Checkpoint, CheckpointStore
from server.federation.deployment_engine import (
    RunStatus,
    check_superlink,
    read_progress,
    write_progress,
)
from server.federation.metrics import MetricsLog, RoundReport
from server.federation.rounds import RoundStarted, RunEvent, Waiting, _Run
from server.federation.train import _Follower, load_plan
from tests.conftest import EXAMPLES, Result
from tests.support.superlink import free_port

POLICY = EXAMPLES / "federation.yaml"

# ---------------------------------------------------------------------------- wrong port, wrong CA


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, CertPaths]]:
    """A TLS server on loopback with a certificate from its own fedge CA; it accepts forever."""
    certs = generate_federation_certs(tmp_path / "server-certs")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    listener = socket.create_server((LOOPBACK, 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                continue
            try:
                with context.wrap_socket(raw, server_side=True):
                    pass
            except OSError:
                raw.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"{LOOPBACK}:{listener.getsockname()[1]}", certs
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_the_right_ca_and_port_pass(tls_server: tuple[str, CertPaths]) -> None:
    address, certs = tls_server
    check_superlink(address, certs.ca_cert)  # no exception: both are right


def test_a_wrong_port_and_a_wrong_ca_give_different_errors(
    tmp_path: Path, tls_server: tuple[str, CertPaths], cli: Callable[..., Result]
) -> None:
    address, certs = tls_server
    other = generate_federation_certs(tmp_path / "other-ca")
    with pytest.raises(UsageError, match=r"--ca .* does not verify the SuperLink's certificate"):
        check_superlink(address, other.ca_cert)
    closed = f"{LOOPBACK}:{free_port()}"
    with pytest.raises(UsageError, match=f"nothing listens on {closed}"):
        check_superlink(closed, certs.ca_cert)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(UsageError, match="--ca .*not a PEM CA certificate"):
        check_superlink(address, not_pem)

    # through `fedge train`, before anything is submitted: exit 2, the flag at fault named
    base = ["train", "--policy", str(POLICY), "--workdir", str(tmp_path / "run")]
    wrong_ca = cli(app, *base, "--superlink", address, "--ca", str(other.ca_cert))
    assert wrong_ca.code == 2, wrong_ca
    assert f"--ca {other.ca_cert} does not verify the SuperLink's certificate" in wrong_ca.err
    wrong_port = cli(app, *base, "--superlink", closed, "--ca", str(certs.ca_cert))
    assert wrong_port.code == 2, wrong_port
    assert f"nothing listens on {closed}" in wrong_port.err
    assert not (tmp_path / "run" / "app").exists(), "a run was prepared despite the error"


# ---------------------------------------------------------------------------- --rounds


def test_rounds_overrides_the_policy_and_travels_in_its_text(tmp_path: Path) -> None:
    plan = load_plan(POLICY, workdir=tmp_path / "run", run_id=None, rounds=7)
    assert plan.settings.policy.spec.rounds == 7
    sent = yaml.safe_load(plan.settings.policy_text)  # what the holders receive
    assert sent["spec"]["rounds"] == 7
    assert sent["spec"]["clients"]["minimum"] == 2  # the rest of the policy is unchanged
    assert load_plan(POLICY, workdir=tmp_path / "run", run_id=None).settings.policy.spec.rounds == 3


def test_rounds_below_a_resumed_checkpoint_names_the_flag(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    workdir = tmp_path / "run"
    arrays = {"head": np.zeros(2, dtype=np.float32)}
    CheckpointStore(workdir / "checkpoints").save(
        Checkpoint(run_id="sentiment-demo", round=4, arrays=arrays)
    )
    with pytest.raises(UsageError, match=r"--rounds 3: the run in .* already reached round 4"):
        load_plan(POLICY, workdir=workdir, run_id=None, rounds=3)
    assert (
        load_plan(POLICY, workdir=workdir, run_id=None, rounds=4).settings.policy.spec.rounds == 4
    )
    zero = cli(app, "train", "--policy", str(POLICY), "--simulate", "2", "--rounds", "0")
    assert zero.code == 2 and "--rounds" in zero.err, zero


# ---------------------------------------------------------------------------- progress


class _GrowingGrid:
    """A Grid whose holders connect one by one, each read of the node ids one step later."""

    def __init__(self, steps: list[list[int]]) -> None:
        self.steps = steps

    def get_node_ids(self) -> list[int]:
        return self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]


def test_waiting_for_nodes_reports_each_change(tmp_path: Path) -> None:
    events: list[RunEvent] = []
    plan = load_plan(POLICY, workdir=tmp_path / "run", run_id=None)
    settings = plan.settings.__class__(
        **{**plan.settings.__dict__, "poll_interval": 0.0, "observer": events.append}
    )
    grid = _GrowingGrid([[], [], [5], [5], [5, 9]])
    assert _Run(grid, settings).wait_for_nodes(2) == [5, 9]  # type: ignore[arg-type]
    assert events == [Waiting(needed=2, connected=0), Waiting(needed=2, connected=1)]


def test_the_follower_turns_the_progress_file_and_new_lines_into_callbacks(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "run"
    metrics = MetricsLog(workdir / "metrics.jsonl")
    metrics.append(RoundReport(round=1, status="ok").to_dict())  # from before a resume
    said: list[str] = []
    events: list[RunEvent] = []
    rounds: list[RoundReport] = []
    follower = _Follower(
        workdir, 12, say=said.append, progress=rounds.append, observer=events.append
    )
    running = RunStatus(run_id=12, status="running")
    follower.poll(RunStatus(run_id=12, status="starting"))
    write_progress(workdir, 12, {"state": "waiting", "needed": 2, "connected": 0, "rounds": 3})
    follower.poll(running)
    follower.poll(running)  # nothing new: nothing said twice
    base = {"state": "training", "rounds": 3, "training": 2, "sampled": {"2": 2}}
    write_progress(workdir, 12, base)
    metrics.append(
        RoundReport(round=2, status="ok", clients=["a", "b"], epsilon={"a": 1.5}).to_dict()
    )
    follower.poll(running)
    assert said == ["Flower run 12: starting", "Flower run 12: running"]
    assert events == [Waiting(2, 0), RoundStarted(round=2, rounds=3, sampled=2)]
    assert [(r.round, r.clients, r.epsilon) for r in rounds] == [(2, ["a", "b"], {"a": 1.5})]
    assert read_progress(workdir)[12]["flower-run"] == 12


def test_the_operator_sees_waiting_sent_and_round_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from rich.table import Table

    from server.cli.train import _Progress

    shown = _Progress(Table(), per_round=3)
    shown.event(Waiting(needed=2, connected=1))
    shown.event(RoundStarted(round=1, rounds=3, sampled=2))
    report = RoundReport(
        round=1,
        status="ok",
        clients=["a"],
        declined={"b": "budget"},
        eval_accuracy=0.8125,
        epsilon={"a": 1.25, "b": 7.5},
        seconds=4.25,
    )
    shown.round(report)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "waiting for 2 nodes (1 connected)",
        "round 1/3: sent to 2 client(s)",
        "round 1/3: ok, 2/2 clients replied, 1 declined, accuracy 0.812, max epsilon 7.50, 4.2 s",
    ]


def _progress_body(workdir: Path, run: int) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((workdir / "flower-runs" / f"{run}.json").read_text())
    return body


def test_the_deployed_server_app_keeps_its_progress_file(tmp_path: Path) -> None:
    """What the ServerApp's recorder writes for each event (the file ``fedge runs`` reads)."""
    from server.federation.flower_app import _ProgressFile

    plan = load_plan(POLICY, workdir=tmp_path / "run", run_id="demo", rounds=2)
    recorder = _ProgressFile(plan.settings, 31)
    recorder.event(Waiting(needed=2, connected=1))
    body = _progress_body(plan.workdir, 31)
    assert (body["state"], body["needed"], body["connected"], body["rounds"]) == (
        "waiting",
        2,
        1,
        2,
    )
    recorder.event(RoundStarted(round=1, rounds=2, sampled=2))
    recorder.round(RoundReport(round=1, status="ok", clients=["a", "b"]))
    body = _progress_body(plan.workdir, 31)
    assert (body["state"], body["round"], body["clients"], body["sampled"]) == (
        "training",
        1,
        2,
        {"1": 2},
    )
    assert body["run-id"] == "demo" and body["flower-run"] == 31


def test_fedge_runs_needs_the_superlink_and_its_ca(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    bare = cli(app, "runs")
    assert bare.code == 2 and "--superlink HOST:PORT and --ca CA are required" in bare.err, bare
    stop = cli(app, "runs", "stop", "5", "--superlink", "127.0.0.1:1")
    assert stop.code == 2 and "--ca CA" in stop.err, stop
    closed = f"{LOOPBACK}:{free_port()}"
    ca = generate_federation_certs(tmp_path / "certs").ca_cert
    logs = cli(app, "runs", "logs", "5", "--superlink", closed, "--ca", str(ca))
    assert logs.code == 2 and f"nothing listens on {closed}" in logs.err, logs
    missing = cli(app, "runs", "--workdir", str(tmp_path / "nope"), "--superlink", closed)
    assert missing.code == 2 and "--workdir" in missing.err, missing
