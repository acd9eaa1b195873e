"""The Fleet API proxy (server/federation/fleet_proxy.py): real nginx, real SuperLink, real nodes.

The SuperLink serves its Fleet, Control and Runtime APIs on one port, and its Control API asks
for no credential; so it listens on loopback and nginx, with the configuration fedge ships
(deploy/nginx/fedge-fleet.conf is one rendering of it), lets only ``POST /v1/fleet/<method>``
through. Checked here: the shipped file is what ``fedge proxy config`` writes; in front of a
recording HTTPS stand-in, only Fleet calls reach the upstream and every other path (the Control
API first) is answered 403 by nginx; and end to end, a data holder enrolled with the proxy's
address trains a round through it while ``flwr supernode register/unregister/ls`` and ``fedge
enroll sync`` through the proxy are refused, then ``fedge enroll sync`` on loopback finds a node
registered behind fedge's back, removes it with ``--unregister-unknown``, and reports a key the
SuperLink will not take back, each with an audit row.

A missing nginx fails under CI (scripts/setup-env.sh installs it) and skips elsewhere.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import typer

from client.contract.tiny import build_tiny_model
from client.data.synthetic import generate, write_synthetic
from client.node.enroll import enroll_command, load_join
from fedge.cli import new_app
from fedge.errors import FederationError, UsageError
from fedge.node_keys import generate_node_key
from fedge.process import LOOPBACK, listening
from fedge.tls import CertPaths, generate_federation_certs
from server.cli.enroll import enroll_app
from server.cli.proxy import proxy_app
from server.enrollment.registry import Registry
from server.enrollment.service import Enroller, EnrollmentServer, SuperLinkControl
from server.federation.deployment_engine import CONNECTION, flwr_json, write_flwr_home
from server.federation.fleet_proxy import (
    FleetProxy,
    ProxySettings,
    check_upstream,
    find_nginx,
    render_site,
)
from tests.conftest import REPO, Result
from tests.support.superlink import SuperLink, free_port, running_superlink

SHIPPED = REPO / "deploy" / "nginx" / "fedge-fleet.conf"
JOIN_TIMEOUT = 90.0


def require_nginx() -> str:
    """nginx's path; a missing nginx fails under CI and skips elsewhere."""
    found = find_nginx()
    if found is None:
        message = "nginx is not installed (Debian: apt-get install nginx; scripts/setup-env.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def _operator() -> typer.Typer:
    app = new_app("fedge", "test")
    app.add_typer(proxy_app, name="proxy")
    app.add_typer(enroll_app, name="enroll")
    return app


# ------------------------------------------------------------------------ the configuration


def test_the_shipped_config_is_what_fedge_writes() -> None:
    example = ProxySettings(
        listen="0.0.0.0:9095",
        superlink="127.0.0.1:9092",
        certs=CertPaths.in_directory("/etc/fedge/pki"),
    )
    assert SHIPPED.read_text(encoding="utf-8") == render_site(example)
    text = SHIPPED.read_text(encoding="utf-8")
    assert "location ~ ^/v1/fleet/[a-z][a-z-]*$" in text
    assert "proxy_ssl_verify on;" in text and 'proxy_ssl_trusted_certificate "/etc/fedge' in text
    # everything that is not a Fleet call ends in a 403
    assert text.count("return 403;") == 2 and "deny all;" in text


def test_bad_settings_are_refused_with_the_flag(tmp_path: Path) -> None:
    certs = CertPaths.in_directory(tmp_path)
    good: dict[str, Any] = {"listen": "0.0.0.0:9095", "superlink": "127.0.0.1:9092"}
    for change, flag in [
        ({"listen": "9095"}, "--listen 9095"),
        ({"listen": "host:99999"}, "--listen"),
        ({"listen": "a b:1"}, "--listen"),
        ({"superlink": "[::1:9092"}, "--superlink"),
        ({"upstream_name": "127.0.0.1"}, "--upstream-name"),
        ({"upstream_name": "x;y"}, "--upstream-name"),
        ({"max_body": "1t"}, "--max-body"),
    ]:
        with pytest.raises(UsageError, match=flag):
            ProxySettings(certs=certs, **{**good, **change})
    v6 = ProxySettings(certs=certs, listen="[::]:9095", superlink="[::1]:9092")
    text = render_site(
        ProxySettings(
            certs=CertPaths.in_directory("/etc/pki"), listen=v6.listen, superlink="[::1]:1"
        )
    )
    assert "listen [::]:9095 ssl;" in text and "server [::1]:1;" in text
    evil = ProxySettings(certs=CertPaths.in_directory(tmp_path / "a$b"), **good)
    with pytest.raises(UsageError, match="nginx cannot take this path"):
        render_site(evil)


def test_proxy_config_writes_both_files(tmp_path: Path, cli: Callable[..., Result]) -> None:
    certs = generate_federation_certs(tmp_path / "pki")
    missing = cli(_operator(), "proxy", "config", "--out", tmp_path / "p", "--certs", tmp_path)
    assert missing.code == 2 and "fedge certs makes it" in missing.err
    run_dir = tmp_path / "proxy"
    result = cli(
        _operator(),
        *("proxy", "config", "--out", run_dir, "--certs", certs.directory),
        *("--listen", "127.0.0.1:9095"),
    )
    assert result.code == 0, result.err
    site = (run_dir / "fedge-fleet.conf").read_text()
    main = (run_dir / "nginx.conf").read_text()
    assert f'ssl_certificate "{certs.server_cert.resolve()}";' in site
    assert "listen 127.0.0.1:9095 ssl;" in site and "server 127.0.0.1:9092;" in site
    assert f'include "{run_dir.resolve()}/fedge-fleet.conf";' in main
    assert f'pid "{run_dir.resolve()}/nginx.pid";' in main
    assert "daemon off;" in result.out and "fedge enroll serve --advertise" in result.out
    if find_nginx() is not None:  # the standalone config passes nginx's own check
        nginx = require_nginx()
        checked = subprocess.run(
            [nginx, "-t", "-p", str(run_dir), "-c", str(run_dir / "nginx.conf"), "-e", "stderr"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert checked.returncode == 0, checked.stderr


# ------------------------------------------------------ nginx before a recording stand-in


class _Recorder(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, str]]


class _Recording(BaseHTTPRequestHandler):
    server: _Recorder
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.seen.append((self.command, self.path))
        body = b"upstream"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_PUT(self) -> None:
        self._answer()


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[tuple[_Recorder, CertPaths]]:
    """An HTTPS server with the federation's certificate that records every request."""
    certs = generate_federation_certs(tmp_path / "pki")
    server = _Recorder((LOOPBACK, 0), _Recording)
    server.seen = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield server, certs
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def _call(address: str, ca: Path, method: str, path: str, body: bytes = b"x") -> tuple[int, bytes]:
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_only_fleet_calls_get_through(
    tmp_path: Path, recorder: tuple[_Recorder, CertPaths]
) -> None:
    require_nginx()
    upstream, certs = recorder
    settings = ProxySettings(
        listen=f"{LOOPBACK}:{free_port()}",
        superlink=f"{LOOPBACK}:{upstream.server_address[1]}",
        certs=certs,
        max_body="1k",
    )
    assert check_upstream(settings)
    with FleetProxy(settings, tmp_path / "proxy") as proxy:
        fleet = _call(proxy.address, certs.ca_cert, "POST", "/v1/fleet/pull-messages")
        assert fleet == (200, b"upstream")
        assert upstream.seen == [("POST", "/v1/fleet/pull-messages")]
        refused = [
            ("POST", "/v1/control/register-node"),
            ("POST", "/v1/control/unregister-node"),
            ("POST", "/v1/control/list-nodes"),
            ("POST", "/v1/control/start-run"),
            ("POST", "/v1/runtime/acquire-task"),
            ("GET", "/health"),
            ("GET", "/docs"),
            ("GET", "/openapi.json"),
            ("GET", "/v1/fleet/pull-messages"),
            ("PUT", "/v1/fleet/pull-messages"),
            ("POST", "/v1/fleet/../control/list-nodes"),
            ("POST", "/v1/fleet/%2e%2e/control/list-nodes"),
            ("POST", "/v1/fleet/..%2fcontrol/list-nodes"),
            ("POST", "/v1/fleet/%70ull-messages"),
            ("POST", "/v1/fleet/pull-messages?next=/v1/control/list-nodes"),
            ("POST", "//v1/fleet/pull-messages"),
            ("POST", "/v1/fleet/"),
        ]
        for method, path in refused:
            status, _ = _call(proxy.address, certs.ca_cert, method, path)
            assert status == 403, (method, path, status)
        assert upstream.seen == [("POST", "/v1/fleet/pull-messages")]
        # bodies over the limit stop at nginx too
        status, _ = _call(
            proxy.address, certs.ca_cert, "POST", "/v1/fleet/push-object", b"x" * 4096
        )
        assert status == 413
        assert len(upstream.seen) == 1
        access = (tmp_path / "proxy" / "access.log").read_text()
        assert '"POST /v1/control/register-node HTTP/1.1" 403' in access
    assert not proxy.running()
    assert not (tmp_path / "proxy" / "nginx.pid").exists()


def test_an_upstream_under_another_name_is_not_trusted(
    tmp_path: Path, recorder: tuple[_Recorder, CertPaths]
) -> None:
    """nginx checks the SuperLink's certificate by name: a wrong name is a 502, not a pass."""
    require_nginx()
    upstream, certs = recorder
    settings = ProxySettings(
        listen=f"{LOOPBACK}:{free_port()}",
        superlink=f"{LOOPBACK}:{upstream.server_address[1]}",
        certs=certs,
        upstream_name="superlink.example",
    )
    with pytest.raises(UsageError, match="--upstream-name superlink.example"):
        check_upstream(settings)
    with FleetProxy(settings, tmp_path / "proxy") as proxy:
        status, _ = _call(proxy.address, certs.ca_cert, "POST", "/v1/fleet/pull-messages")
    assert status == 502
    assert upstream.seen == []


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_fedge_proxy_run_stops_nginx_with_itself(
    tmp_path: Path, recorder: tuple[_Recorder, CertPaths], signum: int, code: int
) -> None:
    """``fedge proxy run`` as an operator runs it: SIGTERM exits 0, Ctrl-C 130, no nginx left."""
    require_nginx()
    upstream, certs = recorder
    port = free_port()
    listen = f"{LOOPBACK}:{port}"
    run_dir = tmp_path / "proxy"
    command = [
        str(Path(sys.executable).parent / "fedge"),
        *("proxy", "run", "--dir", str(run_dir), "--certs", str(certs.directory)),
        *("--listen", listen, "--superlink", f"{LOOPBACK}:{upstream.server_address[1]}"),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "nginx.pid").exists() or not listening(LOOPBACK, port):
            assert process.poll() is None and time.monotonic() < deadline, process.stdout
            time.sleep(0.1)
        master = int((run_dir / "nginx.pid").read_text())
        assert _call(listen, certs.ca_cert, "POST", "/v1/fleet/get-run") == (200, b"upstream")
        assert _call(listen, certs.ca_cert, "POST", "/v1/control/list-nodes")[0] == 403
        process.send_signal(signum)
        output = process.communicate(timeout=30)[0].decode()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == code, output
    assert f"Fleet API proxy on {listen}" in output and f"nginx pid {master}" in output
    assert not Path(f"/proc/{master}").exists()
    assert upstream.seen == [("POST", "/v1/fleet/get-run")]


def test_a_config_nginx_refuses_is_reported_in_its_words(tmp_path: Path) -> None:
    require_nginx()
    certs = generate_federation_certs(tmp_path / "pki")
    certs.server_key.write_text("not a key\n")
    settings = ProxySettings(
        listen=f"{LOOPBACK}:{free_port()}", superlink=f"{LOOPBACK}:9092", certs=certs
    )
    with pytest.raises(FederationError, match=r"nginx refused the proxy config .*server\.key"):
        FleetProxy(settings, tmp_path / "proxy").start()
    with pytest.raises(FederationError, match="not found on PATH"):
        FleetProxy(settings, tmp_path / "proxy", nginx="fedge-no-such-nginx").start()


# -------------------------------------------------- end to end: SuperLink, holder, operator


def _policy(model: Path) -> str:
    return f"""apiVersion: fedge/v1
kind: FederationPolicy
metadata: {{name: proxy-test}}
spec:
  model: {{source: {json.dumps(str(model))}, numLabels: 2, maxLength: 24}}
  rounds: 1
  clients: {{perRound: 1, minimum: 1, fractionEvaluate: 1.0}}
  roundTimeout: 120
  aggregation: {{strategy: fedavg}}
  training: {{batchSize: 16, learningRate: 0.01}}
  privacy: {{targetEpsilon: 8.0, delta: 1.0e-5}}
  lora: {{rank: 4, alpha: 8}}
"""


def _wait_online(
    control: SuperLinkControl, node_id: int, holder: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT
    while control.nodes().get(node_id) != "online":
        if holder.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"node {node_id} did not go online through the proxy\n{log.read_text()}")
        time.sleep(0.5)


@pytest.fixture
def auth_superlink(tmp_path: Path) -> Iterator[SuperLink]:
    with running_superlink(tmp_path / "superlink", supernode_auth=True) as link:
        yield link


@pytest.mark.slow
def test_a_holder_trains_through_the_proxy_and_the_control_api_stays_closed(
    tmp_path: Path, auth_superlink: SuperLink, cli: Callable[..., Result]
) -> None:
    require_nginx()
    started = time.monotonic()
    certs = auth_superlink.certs
    operator = _operator()
    holder_app = new_app("fedge-client", "test")
    holder_app.command("enroll")(enroll_command)
    workdir = tmp_path / "coordinator"
    registry = Registry.in_workdir(workdir)
    control = SuperLinkControl(auth_superlink.flwr_home)  # the operator's own, on loopback
    settings = ProxySettings(
        listen=f"{LOOPBACK}:{free_port()}", superlink=auth_superlink.address, certs=certs
    )
    holder: subprocess.Popen[bytes] | None = None
    holder_log = tmp_path / "north.log"
    with FleetProxy(settings, tmp_path / "proxy") as proxy:
        enroller = Enroller(
            registry, control, superlink=proxy.address, ca_cert=certs.ca_cert.read_text()
        )
        service = EnrollmentServer(enroller, certfile=certs.server_cert, keyfile=certs.server_key)
        try:
            service.start()
            # the data holder enrolls and is told to dial the proxy, not the SuperLink
            issued = cli(operator, "enroll", "token", "north", "--ca", certs.ca_cert,
                         "--workdir", workdir)  # fmt: skip
            assert issued.code == 0, issued.err
            token = next(line for line in issued.out.splitlines() if line.startswith("fedge1."))
            state = tmp_path / "north"
            enrolled = cli(holder_app, "enroll", "--coordinator", service.address,
                           "--token", token, "--state-dir", state)  # fmt: skip
            assert enrolled.code == 0, enrolled.err
            join = load_join(state)
            assert join.superlink == proxy.address

            # it joins through nginx with its node key
            model = build_tiny_model(tmp_path / "model")
            (data,) = write_synthetic(
                generate(num_clients=1, examples_per_client=40, seed=0, heldout=0),
                tmp_path / "data",
            )
            policy = tmp_path / "federation.yaml"
            policy.write_text(_policy(model))
            bin_dir = Path(sys.executable).parent
            command = [
                str(bin_dir / "fedge-client"),
                *("start", "--data", str(data), "--policy", str(policy)),
                *("--state-dir", str(state), "--port", str(free_port()), "--no-warm"),
            ]
            with holder_log.open("wb") as handle:
                holder = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
            _wait_online(control, join.node_id, holder, holder_log)

            # the Control API through the proxy: refused, whatever the command
            outside = tmp_path / "outside-flwr"
            write_flwr_home(outside, address=proxy.address, root_certificates=certs.ca_cert)
            rogue_key = tmp_path / "rogue.pub"
            rogue_key.write_text(generate_node_key()[1] + "\n")
            before = control.nodes()
            for args in (
                ["supernode", "register", str(rogue_key), CONNECTION, "--format", "json"],
                ["supernode", "unregister", str(join.node_id), CONNECTION, "--format", "json"],
                ["supernode", "ls", CONNECTION, "--format", "json"],
                ["ls", CONNECTION, "--format", "json"],
            ):
                with pytest.raises(FederationError, match="403"):
                    flwr_json(args, flwr_home=outside, flwr="flwr")
            sync_outside = cli(operator, "enroll", "sync", "--superlink", proxy.address,
                               "--ca", certs.ca_cert, "--workdir", workdir)  # fmt: skip
            assert sync_outside.code == 1 and "403" in sync_outside.err, sync_outside.err
            assert control.nodes() == before
            assert control.nodes()[join.node_id] == "online"

            # the operator trains on loopback; the round's messages go through the proxy
            train = subprocess.run(
                [
                    str(bin_dir / "fedge"),
                    *("train", "--policy", str(policy), "--superlink", auth_superlink.address),
                    *("--ca", str(certs.ca_cert), "--workdir", str(workdir)),
                    *("--run-id", "proxy-test", "--timeout", "240"),
                ],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert train.returncode == 0, (
                f"{train.stdout[-2000:]}\n{train.stderr[-2000:]}\n{holder_log.read_text()[-2000:]}"
            )
            lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
            assert [(x["round"], x["status"], x["clients"]) for x in lines] == [
                (1, "ok", ["north"])
            ]
            access = (tmp_path / "proxy" / "access.log").read_text()
            for call in ("activate-node", "pull-messages", "push-messages", "push-object"):
                assert f'POST /v1/fleet/{call} HTTP/1.1" 200' in access, call
            assert '"POST /v1/control/register-node HTTP/1.1" 403' in access
        finally:
            if holder is not None and holder.poll() is None:
                holder.send_signal(signal.SIGINT)
                try:
                    holder.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    holder.kill()
                    holder.wait()
            service.stop()
    print(f"fleet proxy end to end: {time.monotonic() - started:.1f} s")
