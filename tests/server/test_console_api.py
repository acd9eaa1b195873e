"""``fedge console``'s HTTP API against a real server: who may use it, and what it says.

Each test starts the real uvicorn server (``ConsoleServer(...).start()``, port 0, 127.0.0.1
unless it says otherwise) and talks to it over real HTTP with httpx: the token, the session
cookie and its CSRF token, the Host and Origin checks, TLS beyond loopback, the security headers,
the OpenAPI document, the listing documents against the CLI's JSON Schemas (a real enrollment
registry, a real placement state from ``fedge place apply``), the run views over a real
``metrics.jsonl`` and Flower app folder, and the change events when a round lands.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from fedge.artifact import sign_artifact
from fedge.enroll_token import ca_fingerprint, parse_token
from fedge.errors import UsageError
from fedge.node_keys import generate_node_key
from fedge.output_schemas import schema_for
from fedge.signing import generate_keypair
from fedge.tls import CertPaths, generate_federation_certs
from server.cli.app import app as fedge_app
from server.console.actions import ActionSettings
from server.console.fleet_watch import FleetSettings
from server.console.schemas import CONSOLE_SCHEMAS
from server.console.serve import ConsoleServer, ConsoleSettings
from server.enrollment.registry import Registry
from server.enrollment.rules import parse_node_public_key
from server.federation.app_dir import write_app_dir
from server.federation.metrics import MetricsLog, RoundReport
from server.fleet.controller import BrokerEndpoint
from tests.conftest import Result
from tests.support.cloud_servers import (
    inventory_document,
    local_target,
    placement_document,
    write_yaml,
)

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "server" / "console" / "static"
POLICY = ROOT / "policies" / "examples" / "federation.yaml"
Cli = Callable[..., Result]
Start = Callable[..., ConsoleServer]


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start consoles (port 0) on ``tmp_path/ops`` unless told otherwise; all stopped after."""
    started: list[ConsoleServer] = []

    def start_one(**settings: Any) -> ConsoleServer:
        workdir = settings.pop("workdir", tmp_path / "ops")
        workdir.mkdir(parents=True, exist_ok=True)
        server = ConsoleServer(ConsoleSettings(workdir=workdir, port=0, **settings))
        started.append(server)
        return server.start()

    yield start_one
    for server in started:
        server.stop()


def _client(server: ConsoleServer, **kwargs: Any) -> httpx.Client:
    kwargs.setdefault("timeout", 10)
    return httpx.Client(base_url=server.url.rstrip("/"), **kwargs)


def _bearer(server: ConsoleServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


def _login(client: httpx.Client, server: ConsoleServer) -> str:
    """Trade the token for a session cookie (kept by the client); the session's CSRF token."""
    answer = client.post("/api/login", json={"token": server.token})
    assert answer.status_code == 200, answer.text
    assert client.cookies.get("fedge_console"), "no session cookie"
    return str(answer.json()["csrf"])


def _api_routes(server: ConsoleServer) -> list[tuple[str, str]]:
    """(method, path) of every /api/ route the application has, from its router."""
    api = server.app.app  # the Guard wraps the FastAPI application
    found = []
    for route in api.routes:
        path = getattr(route, "path", "")
        for method in sorted(getattr(route, "methods", None) or ()):
            if path.startswith("/api/") and method != "HEAD":
                found.append((method, path))
    assert len(found) >= 15, found  # the views, the session and the five actions
    return found


@dataclass
class Operator:
    """An operator's folder with a registry, a placement state and one finished run."""

    root: Path
    certs: CertPaths
    run: Path
    active: str = "north"
    pending: str = "south"


def _round(number: int, accuracy: float, epsilon: dict[str, float]) -> dict[str, Any]:
    return RoundReport(
        round=number,
        status="ok",
        clients=sorted(epsilon),
        train_loss=0.7 - number / 10,
        eval_loss=0.69 - number / 10,
        eval_accuracy=accuracy,
        eval_clients=len(epsilon),
        epsilon=epsilon,
        noise_multiplier=dict.fromkeys(epsilon, 1.1),
        steps=dict.fromkeys(epsilon, 12),
        num_examples=400,
        bytes_sent=1 << 20,
        bytes_received=1 << 20,
        train_seconds=2.5,
        seconds=3.0,
    ).to_dict()


def _write_run(folder: Path) -> Path:
    """A run folder as ``fedge train`` leaves it: metrics.jsonl and the Flower app folder."""
    log = MetricsLog(folder / "metrics.jsonl")
    log.append(_round(1, 0.61, {"north": 1.5, "east": 1.4}))
    log.append(_round(2, 0.72, {"north": 2.9, "east": 2.6}))
    write_app_dir(
        folder / "app",
        {"policy": POLICY.read_text(encoding="utf-8"), "run-id": "alpha", "workdir": str(folder)},
    )
    return folder


@pytest.fixture
def operator(tmp_path: Path, cli: Cli) -> Operator:
    root = tmp_path / "ops"
    certs = generate_federation_certs(tmp_path / "pki")
    pin = ca_fingerprint(certs.ca_cert.read_text(encoding="utf-8"))

    registry = Registry.in_workdir(root / "coordinator")
    issued = registry.issue_token("north", ttl=600, ca_sha256=pin, actor="operator test")
    claim = registry.claim(parse_token(issued.token)[0], actor="enrollment")
    key = parse_node_public_key(generate_node_key()[1])
    registry.activate(claim, key=key, node_id=7, actor="enrollment")
    registry.issue_token("south", ttl=600, ca_sha256=pin, actor="operator test")

    # placement: a signed artifact placed on two local stores by the real `fedge place apply`
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "model.onnx").write_bytes(os.urandom(2048))
    sign_artifact(
        artifact, generate_keypair(), name="sentiment", version="1.0", format="onnx-int8",
        labels={"app": "sentiment"}, created="2024-01-01T00:00:00Z",
    )  # fmt: skip
    inventory = write_yaml(
        tmp_path / "inventory.yaml",
        inventory_document(
            [
                local_target(tmp_path / "store-a", name="eu-a"),
                local_target(tmp_path / "store-b", name="eu-b"),
            ]
        ),
    )
    policy = write_yaml(
        tmp_path / "placement.yaml",
        placement_document(
            {
                "artifacts": {"matchLabels": {"app": "sentiment"}},
                "residency": ["eu"],
                "replicas": {"min": 2, "max": 2},
                "strategy": {"type": "ordered", "preference": ["eu-a", "eu-b"]},
                "retention": {"keepVersions": 1},
            }
        ),
    )
    placed = cli(
        fedge_app, "place", "apply", "--policy", policy, "--inventory", inventory,
        "--artifact", artifact, "--state", root / "placement.sqlite", "--attempts", "1",
    )  # fmt: skip
    assert placed.code == 0, placed
    return Operator(root=root, certs=certs, run=_write_run(root / "runs" / "alpha"))


# -- who may use it ---------------------------------------------------------------------------


def test_every_api_path_needs_the_token_and_a_bearer_token_needs_no_csrf(start: Start) -> None:
    server = start()
    routes = _api_routes(server)
    with _client(server) as client:
        for method, path in routes:
            if path == "/api/login":
                continue
            url = path.replace("{name:path}", "x")
            for headers in ({}, {"Authorization": "Bearer not-the-token"}):
                answer = client.request(method, url, json={"confirm": True}, headers=headers)
                assert answer.status_code == 401, (method, path, headers, answer.text)
                assert answer.json() == {"error": "log in with the operator token first"}
        page = client.get("/")
        assert (page.status_code, page.headers["location"]) == (303, "/login")
        assert client.get("/static/console.js").status_code == 303, "the page's code needs a login"
        assert client.get("/login").status_code == 200
        assert client.get("/healthz").json() == {"status": "ok"}

        wrong = client.post("/api/login", json={"token": server.token[:-1] + "x"})
        assert wrong.status_code == 401 and "fedge_console" not in wrong.headers.get(
            "set-cookie", ""
        )
        assert not client.cookies

        # a script: the token as a Bearer, for views and actions, and no CSRF token
        assert client.get("/api/overview", headers=_bearer(server)).status_code == 200
        session = client.get("/api/session", headers=_bearer(server)).json()
        assert session == {"via": "token", "csrf": None}
        issued = client.post(
            "/api/actions/token", json={"confirm": True, "name": "west"}, headers=_bearer(server)
        )
        assert issued.status_code == 400, issued.text  # got through the guard: no --ca given
        assert "without --federation-ca" in issued.json()["error"]  # the flag fedge console has


def test_a_session_action_needs_the_csrf_token(start: Start, operator: Operator) -> None:
    server = start(workdir=operator.root, actions=ActionSettings(ca=operator.certs.ca_cert))
    body = {"confirm": True, "name": "west", "expires": "1h"}
    with _client(server) as client:
        csrf = _login(client, server)
        assert client.get("/api/session").json() == {"via": "session", "csrf": csrf}
        for headers in ({}, {"X-CSRF-Token": "x" * len(csrf)}, {"X-CSRF-Token": ""}):
            refused = client.post("/api/actions/token", json=body, headers=headers)
            assert refused.status_code == 403, (headers, refused.text)
            assert refused.json() == {"error": "missing or wrong CSRF token"}
        assert "west" not in {h["name"] for h in client.get("/api/holders").json()["items"]}

        unconfirmed = client.post(
            "/api/actions/token", json={**body, "confirm": False}, headers={"X-CSRF-Token": csrf}
        )
        assert unconfirmed.status_code == 400, unconfirmed.text

        issued = client.post("/api/actions/token", json=body, headers={"X-CSRF-Token": csrf})
        assert issued.status_code == 200, issued.text
        answer = issued.json()
        token = answer["token"]
        secret, pin = parse_token(token)
        assert pin == ca_fingerprint(operator.certs.ca_cert.read_text(encoding="utf-8"))
        assert answer["name"] == "west" and "fedge-client enroll" in answer["command"]

        # shown once: the registry keeps its hash, no view repeats it
        registry = Registry.in_workdir(operator.root / "coordinator")
        assert registry.holder("west").state == "pending"
        assert [t.token_hash for t in registry.tokens("west")] == [
            hashlib.sha256(secret.encode()).hexdigest()
        ]
        stored = b"".join(p.read_bytes() for p in (operator.root / "coordinator").iterdir())
        assert secret.encode() not in stored
        audit = client.get("/api/audit", params={"name": "west"}).json()
        rows = [(e["action"], e["subject"]) for e in audit["items"]]
        assert ("token.issued", "west") in rows
        assert all(e["actor"].startswith("console") for e in audit["items"])
        for view in ("/api/audit", "/api/holders", "/api/overview"):
            assert secret not in client.get(view).text, view

        # logging out forgets the session: the cookie no longer works
        assert client.post("/api/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
        assert client.get("/api/holders").status_code == 401


def test_a_forged_host_or_origin_is_refused(start: Start) -> None:
    server = start()
    port = server.port
    with _client(server) as client:
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", ""):
            answer = client.get("/api/overview", headers={**_bearer(server), "Host": host})
            assert answer.status_code == 421, (host, answer.text)
        for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
            answer = client.get("/api/overview", headers={**_bearer(server), "Host": host})
            assert answer.status_code == 200, host

        for origin in ("http://evil.example", f"http://evil.example:{port}", "null"):
            forged = client.post(
                "/api/login", json={"token": server.token}, headers={"Origin": origin}
            )
            assert forged.status_code == 403, (origin, forged.text)
            assert "set-cookie" not in forged.headers
            read = client.get("/api/overview", headers={**_bearer(server), "Origin": origin})
            assert read.status_code == 403
        own = client.post(
            "/api/login",
            json={"token": server.token},
            headers={"Origin": f"http://127.0.0.1:{port}"},
        )
        assert own.status_code == 200 and "fedge_console=" in own.headers["set-cookie"]


def test_cookie_flags_and_security_headers(start: Start) -> None:
    server = start()
    with _client(server) as client:
        login = client.post("/api/login", json={"token": server.token})
        cookie = [part.strip() for part in login.headers["set-cookie"].split(";")]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain HTTP on loopback: a Secure cookie would be dropped
        for answer in (login, client.get("/"), client.get("/api/overview")):
            csp = answer.headers["content-security-policy"]
            assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert answer.headers["x-frame-options"] == "DENY"
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert "strict-transport-security" not in answer.headers
        assert "server" not in login.headers


# -- TLS beyond loopback ----------------------------------------------------------------------


def _own_address() -> str | None:
    """This machine's non-loopback IPv4 address (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_loopback else address


def test_nothing_is_served_beyond_loopback_without_tls(
    tmp_path: Path, cli: Cli, start: Start
) -> None:
    hosts = ["0.0.0.0", "::"] + [a for a in [_own_address()] if a]  # noqa: S104
    for host in hosts:
        with pytest.raises(UsageError, match=r"--host .*needs TLS"):
            ConsoleServer(ConsoleSettings(workdir=tmp_path, host=host, port=0))
    assert not (tmp_path / ".console").exists(), "refused before a token was made"

    refused = cli(fedge_app, "console", "--workdir", tmp_path, "--host", "0.0.0.0")  # noqa: S104
    assert refused.code == 2, refused
    lines = refused.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedge: error: --host 0.0.0.0"), refused.err
    assert "operator token" not in refused.out

    certs = generate_federation_certs(tmp_path / "pki")
    with pytest.raises(UsageError, match="--tls-cert and --tls-key go together"):
        ConsoleServer(ConsoleSettings(workdir=tmp_path, host="0.0.0.0", tls_cert=certs.server_cert))  # noqa: S104
    # and on loopback plain HTTP is fine
    assert start(workdir=tmp_path).url.startswith("http://127.0.0.1:")


def test_beyond_loopback_it_serves_https_only(tmp_path: Path, start: Start) -> None:
    address = _own_address()
    # without another interface: listen everywhere, and reach it by 127.0.0.1 as a --name
    host, reach = (address, address) if address else ("0.0.0.0", "127.0.0.1")  # noqa: S104
    certs = generate_federation_certs(tmp_path / "pki", hosts=(reach,))
    server = start(
        host=host,
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        names=() if address else (reach,),
    )
    assert server.url.startswith("https://")
    base = f"https://{reach}:{server.port}"
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    with httpx.Client(base_url=base, verify=context, timeout=10) as client:
        login = client.post("/api/login", json={"token": server.token})
        assert login.status_code == 200, login.text
        cookie = [part.strip() for part in login.headers["set-cookie"].split(";")]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert login.headers["strict-transport-security"].startswith("max-age=")
        assert client.get("/api/overview").status_code == 200  # the Secure cookie came back
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{reach}:{server.port}/healthz", timeout=5)
    with pytest.raises(httpx.HTTPError):  # and not with a certificate from another CA
        httpx.get(f"{base}/healthz", timeout=5)


# -- what it says -----------------------------------------------------------------------------


def test_openapi_lists_every_api_route_with_the_cli_schemas(start: Start) -> None:
    server = start()
    with _client(server, headers=_bearer(server)) as client:
        answer = client.get("/api/openapi.json")
    assert answer.status_code == 200
    spec = answer.json()
    documented = {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method in operations
    }
    routes = {
        (method, path.replace("{name:path}", "{name}"))
        for method, path in _api_routes(server)
        if path != "/api/openapi.json"
    }
    assert routes - documented == set()
    assert all(path.startswith("/api/") for _method, path in documented)

    def schema(path: str) -> dict[str, Any]:
        response = spec["paths"][path]["get"]["responses"]["200"]
        return dict(response["content"]["application/json"]["schema"])

    cli_kinds = {
        "/api/holders": "HolderList",
        "/api/audit": "AuditLog",
        "/api/placement": "PlacementStatus",
        "/api/fleet": "DeviceList",
        "/api/rollouts": "RolloutList",
    }
    for path, kind in cli_kinds.items():
        assert schema(path) == schema_for(kind), path
    for path, kind in {
        "/api/overview": "ConsoleOverview",
        "/api/runs": "ConsoleRunList",
        "/api/runs/{name}": "ConsoleRun",
    }.items():
        assert schema(path) == CONSOLE_SCHEMAS[kind], path
    for action in ("token", "revoke", "stop-run", "rollout", "rollback"):
        body = spec["paths"][f"/api/actions/{action}"]["post"]["requestBody"]
        assert body["required"] is True, action


def test_listings_validate_against_the_cli_schemas(start: Start, operator: Operator) -> None:
    server = start(workdir=operator.root)
    with _client(server, headers=_bearer(server)) as client:
        docs = {
            kind: client.get(path).json()
            for path, kind in {
                "/api/holders": "HolderList",
                "/api/audit": "AuditLog",
                "/api/placement": "PlacementStatus",
                "/api/fleet": "DeviceList",
                "/api/rollouts": "RolloutList",
                "/api/overview": "ConsoleOverview",
                "/api/runs": "ConsoleRunList",
                "/api/runs/runs/alpha": "ConsoleRun",
            }.items()
        }
    for kind, doc in docs.items():
        assert doc["kind"] == kind
        jsonschema.validate(doc, CONSOLE_SCHEMAS.get(kind) or schema_for(kind))

    holders = {h["name"]: h for h in docs["HolderList"]["items"]}
    assert holders["north"]["state"] == "active" and holders["north"]["nodeId"] == 7
    assert holders["south"]["state"] == "pending"
    actions = [(e["action"], e["subject"]) for e in docs["AuditLog"]["items"]]
    assert ("holder.enrolled", "north") in actions and ("token.issued", "south") in actions
    versions = docs["PlacementStatus"]["items"]
    assert [(v["artifact"], v["version"], v["health"]) for v in versions] == [
        ("sentiment", "1.0", "ok")
    ]
    assert sorted(r["target"] for r in versions[0]["replicas"]) == ["eu-a", "eu-b"]
    overview = docs["ConsoleOverview"]
    assert overview["holders"] == {
        "total": 2,
        "byState": {"active": 1, "pending": 1},
        "epsilonSpent": {"north": 2.9, "east": 2.6},  # the closed HolderList has no room
    }
    assert overview["replicas"] == {"total": 2, "healthy": 2, "versions": 1}
    assert overview["alerts"] == []


def test_the_run_views_and_a_change_event_when_a_round_lands(
    start: Start, operator: Operator
) -> None:
    server = start(workdir=operator.root)
    with _client(server, headers=_bearer(server)) as client:
        runs = client.get("/api/runs").json()
        # 2 of the policy's 3 rounds, written just now: a run without progress files (the
        # simulation engine's) is judged running from its metrics
        assert [(r["name"], r["state"], r["round"], r["rounds"]) for r in runs["items"]] == [
            ("runs/alpha", "running", 2, 3)
        ]
        assert runs["items"][0]["accuracy"] == pytest.approx(0.72)
        run = client.get("/api/runs/runs/alpha").json()
        assert [r["round"] for r in run["rounds"]] == [1, 2]
        assert run["budget"]["epsilon"] == 8.0 and run["budget"]["rounds"] == 3
        assert run["epsilonPerHolder"] == {"north": 2.9, "east": 2.6}
        assert client.get("/api/runs/runs/nothing").status_code == 404

    events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    stream = _client(server, headers=_bearer(server), timeout=httpx.Timeout(10, read=None))

    def listen() -> None:
        with contextlib.suppress(httpx.HTTPError), stream.stream("GET", "/api/events") as sse:
            events.put(("content-type", {"value": sse.headers["content-type"]}))
            name = ""
            for line in sse.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.put((name, json.loads(line[6:])))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    with _client(server, headers=_bearer(server)) as client:
        try:
            assert events.get(timeout=5)[1]["value"].startswith("text/event-stream")
            assert events.get(timeout=5)[0] == "hello"
            MetricsLog(operator.run / "metrics.jsonl").append(
                _round(3, 0.75, {"north": 4.0, "east": 3.9})
            )
            appended = time.monotonic()
            seen = []
            while time.monotonic() - appended < 3.0:
                with contextlib.suppress(queue.Empty):
                    seen.append(events.get(timeout=0.1))
                    if seen[-1][0] == "change" and "runs" in seen[-1][1]["views"]:
                        break
            waited = time.monotonic() - appended
            assert seen and seen[-1][0] == "change", seen
            assert {"runs", "overview"} <= set(seen[-1][1]["views"]), seen
            assert waited < 3.0, waited
            run = client.get("/api/runs/runs/alpha").json()
            assert [r["round"] for r in run["rounds"]] == [1, 2, 3]
            assert run["epsilonPerHolder"]["north"] == 4.0
        finally:
            # stopping ends the open stream at once (no wait for uvicorn's grace period)
            stopping = time.monotonic()
            server.stop()
            stopped = time.monotonic() - stopping
            listener.join(5)
            stream.close()
    assert not listener.is_alive(), "the event stream outlived the console"
    assert stopped < 2.5, f"an open event stream held the console's stop for {stopped:.1f} s"


# -- the token and the vendored files ---------------------------------------------------------


def test_the_token_file_is_private_and_reused(tmp_path: Path, start: Start) -> None:
    workdir = tmp_path / "ops"
    first = start(workdir=workdir)
    path = workdir / ".console" / "token"
    assert first.token_is_new and len(first.token) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert (workdir / ".console").stat().st_mode & 0o077 == 0
    assert path.read_text().strip() == first.token
    first.stop()

    again = start(workdir=workdir)
    assert (again.token, again.token_is_new) == (first.token, False)
    with _client(again, headers=_bearer(again)) as client:
        assert client.get("/api/overview").status_code == 200
    again.stop()
    assert start(workdir=tmp_path / "other").token != first.token

    path.chmod(0o644)
    with pytest.raises(UsageError, match="readable by others"):
        ConsoleServer(ConsoleSettings(workdir=workdir, port=0))
    path.chmod(0o600)
    path.write_text("short\n")
    with pytest.raises(UsageError, match="not a console token"):
        ConsoleServer(ConsoleSettings(workdir=workdir, port=0))


def test_the_vendored_chart_library_matches_its_pins() -> None:
    pins = json.loads((STATIC / "vendor.json").read_text(encoding="utf-8"))
    assert pins["sha256"], "nothing pinned"
    for name, digest in pins["sha256"].items():
        path = STATIC / "vendor" / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, name
    assert any(name.endswith(".js") for name in pins["sha256"])
    index = (STATIC / "index.html").read_text(encoding="utf-8")
    for name in pins["sha256"]:
        if name.endswith((".js", ".css")):
            assert f"vendor/{name}" in index, f"{name} is pinned but the page does not load it"


def test_the_console_never_logs_the_token(
    tmp_path: Path,
    start: Start,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    uvicorn = logging.getLogger("uvicorn")
    uvicorn.addHandler(caplog.handler)
    try:
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()  # nothing listens there: the fleet watcher logs a warning
        broker = BrokerEndpoint(
            host="127.0.0.1", port=port, username="operator", password="broker-secret-1"
        )
        server = start(fleet=FleetSettings(endpoint=broker, fleet="clinics"))
        with _client(server) as client:
            _login(client, server)
            client.post("/api/login", json={"token": server.token + "x"})
            client.get("/api/overview")
            client.get("/api/overview", headers=_bearer(server))
            client.get("/api/overview", headers={"Authorization": f"Bearer {server.token}x"})
            client.post("/api/actions/token", json={"confirm": True, "name": "w"})
        server.stop()
    finally:
        uvicorn.removeHandler(caplog.handler)
    assert "broker is unreachable" in caplog.text, "the console's log was not captured"
    assert server.token not in caplog.text
    assert "broker-secret-1" not in caplog.text
    captured = capsys.readouterr()
    assert server.token not in captured.out + captured.err


def test_fedge_console_stops_at_once_on_sigterm_with_a_page_open(tmp_path: Path) -> None:
    """The command: prints its address and token, and SIGTERM (systemd's stop) is a clean exit 0
    even while a page holds its event stream."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(Path(sys.executable).with_name("fedge")), "console", "--workdir", str(tmp_path)]
    process = subprocess.Popen(
        [*command, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.strip() == f"fedge console on http://127.0.0.1:{port}/", first
        token = process.stdout.readline().strip().removeprefix("operator token: ")
        assert token == (tmp_path / ".console" / "token").read_text().strip()
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "fedge console did not answer"
            time.sleep(0.1)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(
            base_url=base, headers=headers, timeout=httpx.Timeout(10, read=None)
        ) as page:
            with page.stream("GET", "/api/events") as sse:
                lines = sse.iter_lines()
                assert next(lines) == "retry: 2000"
                process.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                rest = list(lines)  # ends when the console ends the stream
            assert "event: hello" in rest
        code = process.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    _out, err = process.communicate()
    assert code == 0, err
    assert took < 2.5, f"SIGTERM took {took:.1f} s with a page open"
    assert "Traceback" not in err and token not in err


# -- explanations -------------------------------------------------------------------------------


def test_explanations_come_from_the_demos_summary(start: Start, tmp_path: Path) -> None:
    from server.report.summary import (
        ExplainedWord,
        RunSummary,
        SampleExplanation,
        SampleInference,
    )

    workdir = tmp_path / "ops"
    server = start(workdir=workdir)
    with _client(server, headers=_bearer(server)) as client:
        empty = client.get("/api/explanations").json()
        assert (empty["kind"], empty["items"]) == ("ConsoleExplanations", [])
        why = SampleExplanation(
            device="edge-1",
            label="positive",
            score=0.98,
            words=(ExplainedWord("kind", 4, 8, 0.3), ExplainedWord("nurse", 13, 18, 0.01)),
            ms=12.5,
        )
        summary = RunSummary(
            run_id="demo",
            samples=(
                SampleInference("The kind nurse", "positive", {"edge-1": "positive"}, why),
                SampleInference("unexplained", "negative", {"edge-1": "negative"}),
            ),
        )
        (workdir / "summary.json").write_text(summary.to_json(), encoding="utf-8")
        doc = client.get("/api/explanations").json()
        spec = client.get("/api/openapi.json").json()
    jsonschema.validate(doc, CONSOLE_SCHEMAS["ConsoleExplanations"])
    assert doc["items"] == [
        {
            "run": ".",
            "text": "The kind nurse",
            "expected": "positive",
            "device": "edge-1",
            "label": "positive",
            "score": 0.98,
            "ms": 12.5,
            "words": [
                {"word": "kind", "start": 4, "end": 8, "attribution": 0.3},
                {"word": "nurse", "start": 13, "end": 18, "attribution": 0.01},
            ],
        }
    ]
    documented = spec["paths"]["/api/explanations"]["get"]["responses"]["200"]
    schema = documented["content"]["application/json"]["schema"]
    assert schema == CONSOLE_SCHEMAS["ConsoleExplanations"]
    assert "explanations" in server.app.app.state.console.sources.fingerprint()
    (workdir / "summary.json").write_text('{"schema": "nope"}', encoding="utf-8")
    with _client(server, headers=_bearer(server)) as client:
        assert client.get("/api/explanations").json()["items"] == []  # unreadable: nothing shown
