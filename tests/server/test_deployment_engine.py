"""The Flower Deployment Engine with TLS: a real SuperLink, two real SuperNodes, fedge's apps.

The slow test is the production path end to end on loopback: certificates from fedge/tls.py,
``flower-superlink`` on a free port with TLS, one ``flower-supernode`` per data holder started by
client/node/supernode.py, the run submitted and followed through ``flwr`` by server/federation/deployment_engine.py. The
fast tests cover the error translation of the ``flwr`` wrapper (the certificate generator's are in
tests/kernel/test_tls.py, the SuperNode runner's in tests/client/test_supernode.py; the SuperLink
runner is tests/support/superlink.py).
Every process is started in a process group of its own and the whole group is stopped, whatever
the outcome.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.contract.tiny import build_tiny_model
from client.data.synthetic import generate, write_synthetic
from fedge.errors import FederationError, UsageError
from fedge.process import LOOPBACK
from server.federation.app_dir import write_app_dir
from server.federation.checkpoint import CheckpointStore
from server.federation.deployment_engine import (
    run_logs,
    run_status,
    stop_run,
    submit_run,
    wait_for_run,
    write_flwr_home,
)
from tests.conftest import REPO
from tests.support.superlink import SuperLink, free_port, running_superlink

# ---------------------------------------------------------------------------- flwr wrapper


def test_flwr_home_and_missing_flwr_binary(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("not read here")
    config = write_flwr_home(tmp_path / "home", address="127.0.0.1:9093", root_certificates=ca)
    text = config.read_text()
    assert 'default = "fedge"' in text and "[superlink.fedge]" in text
    assert f'root-certificates = "{ca.resolve()}"' in text
    with pytest.raises(FederationError, match="fedge-no-such-flwr.*not found"):
        wait_for_run(1, flwr_home=tmp_path / "home", timeout=1, flwr="fedge-no-such-flwr")
    with pytest.raises(FederationError, match="`fedge-no-such-flwr stop 7 fedge"):
        stop_run(7, flwr_home=tmp_path / "home", flwr="fedge-no-such-flwr")
    with pytest.raises(UsageError, match="HOST:PORT"):
        write_flwr_home(tmp_path / "home", address="127.0.0.1", root_certificates=ca)
    with pytest.raises(UsageError, match="does not exist"):
        write_flwr_home(tmp_path / "home", address="h:1", root_certificates=tmp_path / "no.crt")


def test_flwr_commands_refuse_a_home_without_the_connection(tmp_path: Path) -> None:
    """Without fedge's config.toml, ``flwr`` would start a local SuperLink of its own."""
    with pytest.raises(UsageError, match="write_flwr_home"):
        wait_for_run(1, flwr_home=tmp_path, timeout=1)
    app = tmp_path / "app"
    app.mkdir()
    with pytest.raises(UsageError, match="not a Flower app folder"):
        submit_run(app, flwr_home=tmp_path, run_config={})


def _fake_flwr(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-flwr"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_flwr_failures_become_federation_errors(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (tmp_path / "ca.crt").write_text("x")
    write_flwr_home(home, address="127.0.0.1:1", root_certificates=tmp_path / "ca.crt")
    failing = _fake_flwr(tmp_path, 'echo "boom: no route" >&2; exit 3')
    with pytest.raises(FederationError, match=r"`fake-flwr ls fedge --run-id 5.*status 3: boom"):
        wait_for_run(5, flwr_home=home, timeout=1, flwr=failing)
    garbled = _fake_flwr(tmp_path, "echo 'this is not json'")
    with pytest.raises(FederationError, match="printed no JSON answer"):
        stop_run(5, flwr_home=home, flwr=garbled)
    refused = _fake_flwr(
        tmp_path, """echo '{"success": false, "error-message": "Run ID 5 not found"}'"""
    )
    with pytest.raises(FederationError, match="failed: Run ID 5 not found"):
        wait_for_run(5, flwr_home=home, timeout=1, flwr=refused)
    failed_run = _fake_flwr(
        tmp_path,
        """echo '{"success": true, "runs": [{"run-id": "5", "status": "finished:failed",'"""
        """' "status-details": "ServerApp raised an exception"}]}'""",
    )
    with pytest.raises(FederationError, match="finished:failed .ServerApp raised an exception"):
        wait_for_run(5, flwr_home=home, timeout=1, flwr=failed_run)
    running = _fake_flwr(
        tmp_path,
        """echo 'log line'; echo '{"success": true, "runs": [{"run-id": "5", "status": "running"}]}'""",
    )
    with pytest.raises(FederationError, match="still running after 0 s"):
        wait_for_run(5, flwr_home=home, timeout=0.0, poll=0.01, flwr=running)
    submitted = _fake_flwr(tmp_path, """echo '{"success": true, "run-id": "123"}'""")
    app = write_app_dir(tmp_path / "app", {"policy": "x", "run-id": "r"})
    assert (
        submit_run(app, flwr_home=home, run_config={"policy": 'a "b"\nc', "n": 2}, flwr=submitted)
        == 123
    )


def test_submit_run_sends_a_run_config_file_flower_reads_back(tmp_path: Path) -> None:
    """The TOML file travels intact through Flower's own parser (multi-line YAML, quotes)."""
    from flwr.common.config import parse_config_args

    home = tmp_path / "home"
    (tmp_path / "ca.crt").write_text("x")
    write_flwr_home(home, address="127.0.0.1:1", root_certificates=tmp_path / "ca.crt")
    capture = tmp_path / "captured.toml"
    fake = _fake_flwr(
        tmp_path,
        f'for a in "$@"; do last="$a"; done; cp "$last" {capture}; '
        """echo '{"success": true, "run-id": "9"}'""",
    )
    app = write_app_dir(tmp_path / "app", {"policy": "", "workdir": "", "run-id": ""})
    config = {"policy": 'spec:\n  name: "x" # \\ back', "workdir": "/w d", "run-id": "r-1"}
    assert submit_run(app, flwr_home=home, run_config=config, flwr=fake) == 9
    assert parse_config_args([str(capture)]) == config


# ---------------------------------------------------------------------------- the real engine


@pytest.fixture(scope="module")
def superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuperLink]:
    """A TLS SuperLink on a free loopback port, shared by the slow tests of this module."""
    with running_superlink(tmp_path_factory.mktemp("superlink")) as link:
        yield link


def _policy(model: Path) -> str:
    return f"""apiVersion: fedge/v1
kind: FederationPolicy
metadata: {{name: deploy-test}}
spec:
  model: {{source: {json.dumps(str(model))}, numLabels: 2, maxLength: 24}}
  rounds: 2
  clients: {{perRound: 2, minimum: 2, fractionEvaluate: 0.5}}
  roundTimeout: 120
  aggregation: {{strategy: fedavg}}
  training: {{batchSize: 16, learningRate: 0.01}}
  privacy: {{targetEpsilon: 8.0, delta: 1.0e-5}}
  lora: {{rank: 4, alpha: 8}}
"""


def _plain_http_is_refused(port: int) -> None:
    """The TLS port does not answer plain HTTP (what ``--insecure`` clients would speak)."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
    except (OSError, http.client.HTTPException):
        return
    finally:
        connection.close()
    pytest.fail(f"the SuperLink answered plain HTTP with status {response.status}")


def _untrusted_tls_is_refused(port: int) -> None:
    """A client that does not hold fedge's CA cannot verify the SuperLink."""
    context = ssl.create_default_context()  # system CAs only
    with (
        socket.create_connection((LOOPBACK, port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname=LOOPBACK)


def _cmdlines() -> list[bytes]:
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            found.append(path.read_bytes())
        except OSError:  # the process ended while we looked
            continue
    return found


@pytest.mark.slow
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_two_supernodes_train_over_tls(tmp_path: Path, superlink: SuperLink, warm: bool) -> None:
    """Two holders through ``fedge-client start``; ``warm``: client/node/warm.py's forking SuperExec."""
    started = time.monotonic()
    port = int(superlink.address.rsplit(":", 1)[1])
    _plain_http_is_refused(port)
    _untrusted_tls_is_refused(port)

    model = build_tiny_model(tmp_path / "model")
    split = generate(num_clients=2, examples_per_client=60, seed=0, heldout=0)
    data_files = write_synthetic(split, tmp_path / "data")
    names = [path.stem for path in data_files]

    policy = tmp_path / "federation.yaml"
    policy.write_text(_policy(model))
    bin_dir = Path(sys.executable).parent
    holders: list[tuple[subprocess.Popen[bytes], Path]] = []
    workdir = tmp_path / "coordinator"
    try:
        # each data holder joins through its own entry point, as it would on its own machine
        for name, data in zip(names, data_files, strict=True):
            state = tmp_path / "holders" / name
            state.mkdir(parents=True)
            log = state / "fedge-client.log"
            command = [
                str(bin_dir / "fedge-client"),
                "start",
                "--superlink",
                superlink.address,
                "--ca",
                str(superlink.certs.ca_cert),
                "--data",
                str(data),
                "--policy",
                str(policy),
                "--state-dir",
                str(state),
                "--name",
                name,
                "--port",
                str(free_port()),
                "--warm" if warm else "--no-warm",
            ]
            with log.open("wb") as handle:
                holders.append(
                    (subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT), log)
                )
        # the operator drives the run through `fedge train`
        train = subprocess.run(
            [
                str(bin_dir / "fedge"),
                "train",
                "--policy",
                str(policy),
                "--superlink",
                superlink.address,
                "--ca",
                str(superlink.certs.ca_cert),
                "--workdir",
                str(workdir),
                "--run-id",
                "deploy-test",
                "--timeout",
                "240",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        holder_logs = "\n".join(log.read_text()[-1500:] for _, log in holders)
        assert train.returncode == 0, (
            f"{train.stdout[-3000:]}\n{train.stderr[-3000:]}\n{holder_logs}"
        )
        assert "completed" in train.stdout
        for process, log in holders:
            assert process.poll() is None, log.read_text()[-2000:]
    finally:
        for process, _log in holders:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # Ctrl-C: the client stops its SuperNode
        for process, _log in holders:
            try:
                assert process.wait(timeout=30) == 130
            except subprocess.TimeoutExpired:
                process.kill()
                raise
    leftovers = [
        cmdline
        for cmdline in _cmdlines()
        if (b"flower-supernode" in cmdline or b"client.node.warm" in cmdline)
        and str(tmp_path).encode() in cmdline
    ]
    assert leftovers == [], "a SuperNode outlived `fedge-client start`"

    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2]
    assert all(line["status"] == "ok" for line in lines), lines
    assert all(sorted(line["clients"]) == sorted(names) for line in lines), lines
    latest = CheckpointStore(workdir / "checkpoints").latest()
    assert latest is not None
    assert (latest.run_id, latest.round) == ("deploy-test", 2)
    for name in names:
        ledgers = list((tmp_path / "holders" / name / "privacy").glob("*.json"))
        assert ledgers, f"{name} kept no privacy ledger"
        superexec_log = tmp_path / "holders" / name / "superexec.log"
        if warm:  # the model was loaded once, and every ClientApp was forked from that process
            text = superexec_log.read_text(errors="replace")
            assert "pre-loaded the model" in text, text[-2000:]
            assert text.count("ClientApp forked as process") >= 3, text[-2000:]
            assert "exited with status" not in text, text[-2000:]
        else:
            assert not superexec_log.exists()
    print(  # the figures for the report; pytest -s shows them
        f"deployment engine ({'warm' if warm else 'cold'}): "
        f"{time.monotonic() - started:.1f} s in all; rounds took "
        + ", ".join(f"{line['seconds']:.1f} s" for line in lines)
    )


@pytest.mark.slow
def test_runs_are_followed_and_stopped_through_flwr(tmp_path: Path, superlink: SuperLink) -> None:
    """Unknown run ids, refused run configs, a failing ServerApp and a stopped run all raise."""
    home = superlink.flwr_home
    with pytest.raises(FederationError, match=r"`flwr ls fedge --run-id 12345 .*Run ID not found"):
        wait_for_run(12345, flwr_home=home, timeout=10)
    app = write_app_dir(
        tmp_path / "app",
        {"policy": "not: [a policy", "workdir": str(tmp_path / "w"), "run-id": "x"},
    )
    with pytest.raises(FederationError, match="Invalid run configuration"):
        submit_run(app, flwr_home=home, run_config={"no-such-key": 1})
    failing = submit_run(app, flwr_home=home)
    with pytest.raises(FederationError, match=f"run {failing} did not complete: finished:failed"):
        wait_for_run(failing, flwr_home=home, timeout=60, poll=0.5)
    assert "PolicyError" in run_logs(failing, flwr_home=home)
    with pytest.raises(FederationError, match="already finished"):
        stop_run(failing, flwr_home=home)

    # a valid run with no SuperNode to train waits for clients until it is stopped
    policy = (REPO / "policies" / "examples" / "federation.yaml").read_text()
    waiting_app = write_app_dir(
        tmp_path / "waiting",
        {"policy": policy, "workdir": str(tmp_path / "waiting-run"), "run-id": "waits"},
    )
    waiting = submit_run(waiting_app, flwr_home=home)
    deadline = time.monotonic() + 60
    while run_status(waiting, flwr_home=home).status != "running":
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.5)
    stop_run(waiting, flwr_home=home)
    with pytest.raises(FederationError, match=f"run {waiting} did not complete: finished:stopped"):
        wait_for_run(waiting, flwr_home=home, timeout=60, poll=0.5)
