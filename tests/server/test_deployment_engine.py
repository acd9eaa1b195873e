"""The Flower Deployment Engine with TLS: a real SuperLink, two real SuperNodes, fedge's apps.

The slow test is the production path end to end on loopback: certificates from server/tls.py,
``flower-superlink`` on a free port with TLS, one ``flower-supernode`` per data holder started by
client/node/supernode.py, the run submitted and followed through ``flwr`` by server/federation/deployment_engine.py. The
fast tests cover the certificate generator and the error translation of the ``flwr`` wrapper.
Every process is started in a process group of its own and the whole group is stopped, whatever
the outcome.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from client.contract.tiny import build_tiny_model
from client.data.synthetic import generate, write_synthetic
from client.node.supernode import (
    SuperNodeProcess,
    WarmCommands,
    WarmSuperNodeProcess,
    node_config_string,
    supernode_command,
    warm_commands,
)
from fedge.errors import FederationError, UsageError
from fedge.tls import CertPaths, generate_federation_certs
from server.federation.app_dir import write_app_dir
from server.federation.checkpoint import CheckpointStore
from server.federation.deployment_engine import (
    flower_environment,
    run_logs,
    run_status,
    stop_run,
    submit_run,
    superlink_command,
    wait_for_run,
    write_flwr_home,
)
from tests.conftest import REPO

LOOPBACK = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------- certificates


def test_certificates_chain_to_the_ca_and_name_the_hosts(tmp_path: Path) -> None:
    paths = generate_federation_certs(tmp_path / "certs", hosts=("localhost", "127.0.0.1", "::1"))
    assert paths == CertPaths.in_directory(tmp_path / "certs")
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert 30 * 86400 <= lifetime.total_seconds() <= 30 * 86400 + 600
    for key in (paths.ca_key, paths.server_key):
        assert key.stat().st_mode & 0o777 == 0o600
    for cert in (paths.ca_cert, paths.server_cert):
        assert cert.stat().st_mode & 0o077 != 0o077  # readable by others, yet not writable
        assert cert.stat().st_mode & 0o022 == 0


def test_certificates_are_accepted_by_a_real_tls_handshake(tmp_path: Path) -> None:
    """Python's own TLS stack (OpenSSL) accepts the chain for 127.0.0.1 and for localhost."""
    paths = generate_federation_certs(tmp_path, days=1)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(paths.server_cert, paths.server_key)
    client_ctx = ssl.create_default_context(cafile=str(paths.ca_cert))
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(2)
        port = listener.getsockname()[1]

        def serve() -> None:
            for _ in range(2):
                conn, _ = listener.accept()
                with contextlib.suppress(OSError), server_ctx.wrap_socket(conn, server_side=True):
                    pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        for name in ("127.0.0.1", "localhost"):
            with (
                socket.create_connection((LOOPBACK, port), timeout=5) as raw,
                client_ctx.wrap_socket(raw, server_hostname=name) as tls,
            ):
                assert tls.version() in {"TLSv1.2", "TLSv1.3"}
        thread.join(5)


def test_existing_certificates_are_not_overwritten(tmp_path: Path) -> None:
    first = generate_federation_certs(tmp_path)
    before = first.ca_cert.read_bytes()
    with pytest.raises(UsageError, match=r"ca\.crt: already exists"):
        generate_federation_certs(tmp_path)
    assert first.ca_cert.read_bytes() == before
    again = generate_federation_certs(tmp_path, overwrite=True)
    assert again.ca_cert.read_bytes() != before


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hosts": ()}, "name at least one host"),
        ({"hosts": ("bad host!",)}, "neither an IP address nor a DNS name"),
        ({"days": 0}, "whole number of days"),
        ({"days": 1.5}, "whole number of days"),
    ],
)
def test_bad_certificate_options_are_usage_errors(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        generate_federation_certs(tmp_path, **options)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------- supernode command


def test_supernode_command_quotes_the_node_config(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args

    odd = tmp_path / 'a "quoted" dir\\with back slash'
    command = supernode_command(
        superlink="127.0.0.1:9092",
        root_certificates=tmp_path / "ca.crt",
        runtime_port=9094,
        data_path=odd / "client-0.tsv",
        state_dir=tmp_path / "state 0",
        client_name="hospital 'north'",
        policy_path=tmp_path / "own.yaml",
        eval_fraction=0.25,
    )
    assert command[0] == "flower-supernode"
    assert "--insecure" not in command
    assert command[command.index("--root-certificates") + 1] == str(tmp_path / "ca.crt")
    assert command[command.index("--port") + 1] == "9094"
    parsed = parse_config_args([command[command.index("--node-config") + 1]])
    assert parsed == {
        "data-path": str(odd / "client-0.tsv"),
        "state-dir": str(tmp_path / "state 0"),
        "client-name": "hospital 'north'",
        "policy-path": str(tmp_path / "own.yaml"),
        "eval-fraction": 0.25,
    }
    with pytest.raises(UsageError, match="runtime_port"):
        supernode_command(
            superlink="x:1",
            root_certificates="ca",
            runtime_port=0,
            data_path="d",
            state_dir="s",
            client_name="c",
        )
    with pytest.raises(UsageError, match="not a usable key"):
        node_config_string({"a b": "x"})


def test_warm_commands_run_both_halves_through_client_warm(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args

    from client.node.warm import parse_node_config

    commands = warm_commands(
        superlink="127.0.0.1:9092",
        root_certificates=tmp_path / "ca.crt",
        runtime_port=9094,
        data_path=tmp_path / 'odd "dir"' / "client-0.tsv",
        state_dir=tmp_path / "state",
        client_name="north",
        policy_path=tmp_path / "own.yaml",
    )
    node, executor = commands.supernode, commands.superexec
    assert node[:4] == [sys.executable, "-m", "client.node.warm", "supernode"]
    assert node[node.index("--isolation") + 1] == "process"
    assert node[node.index("--host") + 1] == "127.0.0.1"  # the Runtime API stays on loopback
    assert "--insecure" not in node  # the SuperLink connection is TLS
    assert executor[:4] == [sys.executable, "-m", "client.node.warm", "superexec"]
    assert executor[executor.index("--runtime-api-address") + 1] == "127.0.0.1:9094"
    assert "--insecure" in executor  # plain HTTP, loopback only
    assert "--parent-pid" not in executor  # WarmSuperNodeProcess adds the SuperNode's pid
    node_config = node[node.index("--node-config") + 1]
    preload = executor[executor.index("--preload-node-config") + 1]
    assert preload == node_config
    assert parse_node_config(preload) == parse_config_args([node_config])
    assert parse_node_config('{"data-path": "/d"}') == {"data-path": "/d"}
    # the default command is unchanged
    plain = supernode_command(
        superlink="127.0.0.1:9092",
        root_certificates=tmp_path / "ca.crt",
        runtime_port=9094,
        data_path="d",
        state_dir="s",
        client_name="c",
    )
    assert plain[0] == "flower-supernode" and "--isolation" not in plain


def test_the_supernode_sleep_cap_touches_only_its_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr.supernode.start_client_internal as loop

    from client.node.warm import cap_supernode_sleep

    monkeypatch.setattr(loop, "time", time)  # both restored after the test
    monkeypatch.setattr(loop, "pull_objects", vars(loop)["pull_objects"])
    assert cap_supernode_sleep(0.05)
    shim = vars(loop)["time"]
    started = time.monotonic()
    shim.sleep(3)
    assert time.monotonic() - started < 1.0
    assert shim is not time and shim.monotonic is time.monotonic
    assert time.sleep is not shim.sleep  # the real module is untouched
    pull = vars(loop)["pull_objects"]
    assert isinstance(pull, functools.partial) and pull.keywords == {"initial_backoff": 0.05}
    with pytest.raises(ValueError, match="idle poll"):
        cap_supernode_sleep(0)


def test_warm_supernode_refuses_a_busy_port_and_a_dead_supernode(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        commands = WarmCommands(["python", "-c", "pass"], ["python", "-c", "pass"], LOOPBACK, port)
        with pytest.raises(FederationError, match=f"port {port} on 127.0.0.1 is in use"):
            WarmSuperNodeProcess(commands, state_dir=tmp_path).start()
    dead = WarmCommands(
        ["python", "-c", "raise SystemExit(3)"], ["python", "-c", "pass"], LOOPBACK, _free_port()
    )
    node = WarmSuperNodeProcess(dead, state_dir=tmp_path, grace=1.0)
    with pytest.raises(FederationError, match="stopped before its Runtime API listened"):
        node.start()
    assert node.superexec is None and not node.running()
    assert node.stop() == 3  # idempotent after a failed start
    assert node.stop() == 3


def test_supernode_process_missing_binary_and_idempotent_stop(tmp_path: Path) -> None:
    node = SuperNodeProcess(["fedge-no-such-supernode", "--help"], state_dir=tmp_path)
    with pytest.raises(FederationError, match="fedge-no-such-supernode: not found"):
        node.start()
    assert node.stop() is None
    assert node.stop() is None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_supernode_process_stops_its_whole_group(tmp_path: Path) -> None:
    """A child that ignores SIGTERM is killed with the group once the grace period ends."""
    script = (
        "import signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        'print("ready", flush=True); time.sleep(60)\'])\n'
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    node = SuperNodeProcess(["python", "-c", script], state_dir=tmp_path, grace=1.0)
    with node:
        deadline = time.monotonic() + 20
        while "ready" not in node.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(node.log_text().split()[0])
        assert node.running()
    assert not node.running()
    deadline = time.monotonic() + 5  # SIGKILL is asynchronous: the child goes within moments
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


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


@dataclass
class SuperLink:
    address: str
    certs: CertPaths
    process: subprocess.Popen[bytes]
    log: Path
    flwr_home: Path


def _stop_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds, reap the leader."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=grace)


def _tls_ready(port: int, ca: Path) -> bool:
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with (
            socket.create_connection((LOOPBACK, port), timeout=1) as raw,
            context.wrap_socket(raw, server_hostname=LOOPBACK),
        ):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def running_superlink(tmp_path: Path, *, supernode_auth: bool = False) -> Iterator[SuperLink]:
    """A TLS SuperLink on a free loopback port, stopped at the end; fails under CI if missing."""
    env = flower_environment(tmp_path / "superlink-home")
    executable = shutil.which("flower-superlink", path=env["PATH"])
    if executable is None:
        message = "flower-superlink is not installed (pip install 'fedge[server]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    certs = generate_federation_certs(tmp_path / "certs")
    port = _free_port()
    log = tmp_path / "superlink.log"
    command = superlink_command(
        certs, host=LOOPBACK, port=port, executable=executable, supernode_auth=supernode_auth
    )
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        home = tmp_path / "operator-flwr"
        write_flwr_home(home, address=f"{LOOPBACK}:{port}", root_certificates=certs.ca_cert)
        deadline = time.monotonic() + 60
        while not _tls_ready(port, certs.ca_cert):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"flower-superlink did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield SuperLink(f"{LOOPBACK}:{port}", certs, process, log, home)
    finally:
        _stop_group(process)


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
                str(_free_port()),
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
