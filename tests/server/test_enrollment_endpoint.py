"""The enrollment endpoint: the real HTTPS server and the real ``fedge-client enroll`` code.

Both run over loopback, but the enrollment service gets a recording stand-in for the SuperLink's
Control API (``FakeNodes``), so that pinning, one-time tokens and the CLI's exit codes are checked
in a second; the same paths against a real ``flower-superlink --enable-supernode-auth`` are in
test_enrollment_deployment.py, and the registry's rules in test_enrollment_registry.py.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer
from cryptography.hazmat.primitives import serialization

from client.node.enroll import (
    JOIN_FILE,
    KEY_FILE,
    CoordinatorError,
    EnrollmentRefusedError,
    PinMismatchError,
    enroll,
    enroll_command,
    load_join,
)
from client.node.enroll import parse_token as client_parse_token
from fedge.cli import new_app
from fedge.enroll_token import ca_fingerprint
from fedge.errors import FederationError, UsageError
from fedge.tls import CertPaths, generate_federation_certs
from server.cli.enroll import enroll_app
from server.enrollment.registry import Registry
from server.enrollment.rules import NodePublicKey
from server.enrollment.service import (
    Enroller,
    EnrollmentServer,
    NodeControl,
    reconcile,
    revoke_holder,
)
from tests.conftest import Result

ACTOR = "operator test"


# ---------------------------------------------------------------------------- the endpoint


@dataclass
class FakeNodes:
    """Records what the service asks of the SuperLink; ``fail`` makes ``register`` fail."""

    nodes_by_id: dict[int, str] = field(default_factory=dict)
    keys: dict[int, str] = field(default_factory=dict)
    fail: bool = False
    next_id: int = 100

    def register(self, key: NodePublicKey, *, name: str) -> int:
        if self.fail:
            raise FederationError("`flwr supernode register` failed: the SuperLink is down")
        self.next_id += 1
        self.nodes_by_id[self.next_id] = "registered"
        self.keys[self.next_id] = key.openssh
        return self.next_id

    def unregister(self, node_id: int) -> None:
        self.nodes_by_id[node_id] = "unregistered"

    def nodes(self) -> dict[int, str]:
        return dict(self.nodes_by_id)


@dataclass
class Coordinator:
    certs: CertPaths
    registry: Registry
    control: FakeNodes
    server: EnrollmentServer

    def token(self, name: str, **options: object) -> str:
        issued = self.registry.issue_token(
            name,
            ttl=600,
            ca_sha256=ca_fingerprint(self.certs.ca_cert.read_text()),
            actor=ACTOR,
            **options,  # type: ignore[arg-type]
        )
        return issued.token


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    certs = generate_federation_certs(tmp_path / "certs")
    registry = Registry.in_workdir(tmp_path / "coordinator")
    control = FakeNodes()
    enroller = Enroller(
        registry,
        control,
        superlink="127.0.0.1:9092",
        ca_cert=certs.ca_cert.read_text(),
        he_public_context=b"\x00public-he\xff",
    )
    with EnrollmentServer(enroller, certfile=certs.server_cert, keyfile=certs.server_key) as server:
        yield Coordinator(certs, registry, control, server)


def _client_app() -> typer.Typer:
    app = new_app("fedge-client", "test")
    app.command("enroll")(enroll_command)
    return app


def _operator_app() -> typer.Typer:
    app = new_app("fedge", "test")
    app.add_typer(enroll_app, name="enroll")
    return app


def test_enrollment_writes_the_key_at_home_and_registers_its_public_half(
    tmp_path: Path, coordinator: Coordinator
) -> None:
    state = tmp_path / "holder"
    info = enroll(
        coordinator=coordinator.server.address,
        token=coordinator.token("north"),
        state_dir=state,
    )
    join = load_join(state)
    assert join == info
    assert (join.name, join.superlink) == ("north", "127.0.0.1:9092")
    key_file = Path(join.auth_private_key)
    assert key_file == (state / KEY_FILE).resolve()
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert (state / JOIN_FILE).stat().st_mode & 0o777 == 0o600
    private = serialization.load_ssh_private_key(key_file.read_bytes(), password=None)
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert coordinator.control.keys[join.node_id] == public.decode()  # only the public half
    holder = coordinator.registry.holder("north")
    assert (holder.state, holder.node_id, holder.fingerprint) == (
        "active",
        join.node_id,
        join.fingerprint,
    )
    assert Path(join.root_certificates).read_text() == coordinator.certs.ca_cert.read_text()
    assert join.he_public_context is not None
    assert Path(join.he_public_context).read_bytes() == b"\x00public-he\xff"
    assert not list(state.glob(".*pending*"))


def test_reused_and_expired_tokens_fail_in_one_line_with_exit_2(
    tmp_path: Path, coordinator: Coordinator, cli: Callable[..., Result]
) -> None:
    app = _client_app()
    token = coordinator.token("north")
    args = ["enroll", "--coordinator", coordinator.server.address, "--token", token]
    first = cli(app, *args, "--state-dir", tmp_path / "a")
    assert first.code == 0, first.err
    assert "enrolled as north" in first.out
    again = cli(app, *args, "--state-dir", tmp_path / "b")
    assert again.code == 2
    assert again.err.count("\n") == 1
    assert again.err.startswith("fedge-client: error: --token: this enrollment token was already")
    assert not (tmp_path / "b" / KEY_FILE).exists()
    assert not list((tmp_path / "b").glob(".*pending*"))

    past = Registry(coordinator.registry.path, clock=lambda: 1_000_000_000.0)
    stale = past.issue_token(
        "late", ttl=60, ca_sha256=ca_fingerprint(coordinator.certs.ca_cert.read_text()), actor=ACTOR
    )
    expired = cli(
        app,
        "enroll",
        "--coordinator",
        coordinator.server.address,
        "--token",
        stale.token,
        "--state-dir",
        tmp_path / "c",
    )
    assert expired.code == 2
    assert expired.err.count("\n") == 1
    assert "--token: this enrollment token expired at 2001-09-09 01:47:40 UTC" in expired.err
    malformed = cli(app, *args[:3], "--token", "hello", "--state-dir", tmp_path / "d")
    assert malformed.code == 2 and "--token: not a fedge enrollment token" in malformed.err


def test_a_coordinator_without_the_pinned_ca_gets_nothing(
    tmp_path: Path, coordinator: Coordinator
) -> None:
    """A token pinning another CA: the client stops before it makes or sends a key."""
    other = generate_federation_certs(tmp_path / "other")
    token = coordinator.registry.issue_token(
        "north", ttl=60, ca_sha256=ca_fingerprint(other.ca_cert.read_text()), actor=ACTOR
    ).token
    with pytest.raises(PinMismatchError, match="but the token pins .* someone is in between"):
        enroll(coordinator=coordinator.server.address, token=token, state_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()
    assert coordinator.control.keys == {}


def test_a_superlink_failure_gives_the_token_back(tmp_path: Path, coordinator: Coordinator) -> None:
    token = coordinator.token("north")
    coordinator.control.fail = True
    with pytest.raises(CoordinatorError, match="the SuperLink is down"):
        enroll(coordinator=coordinator.server.address, token=token, state_dir=tmp_path / "s")
    assert not (tmp_path / "s" / KEY_FILE).exists()
    coordinator.control.fail = False
    assert enroll(coordinator=coordinator.server.address, token=token, state_dir=tmp_path / "s")
    assert [e.action for e in coordinator.registry.audit(subject="north")][-3:] == [
        "token.released",
        "token.used",
        "holder.enrolled",
    ]


def test_rotation_replaces_the_key_and_drops_the_old_node(
    tmp_path: Path, coordinator: Coordinator
) -> None:
    state = tmp_path / "s"
    first = enroll(
        coordinator=coordinator.server.address, token=coordinator.token("north"), state_dir=state
    )
    old_key = Path(first.auth_private_key).read_bytes()
    rotation = coordinator.token("north", purpose="rotate")
    with pytest.raises(EnrollmentRefusedError, match="is for data holder north, not south"):
        enroll(
            coordinator=coordinator.server.address, token=rotation, state_dir=state, name="south"
        )
    assert Path(first.auth_private_key).read_bytes() == old_key  # the working key stays
    second = enroll(coordinator=coordinator.server.address, token=rotation, state_dir=state)
    assert second.node_id != first.node_id
    assert Path(second.auth_private_key).read_bytes() != old_key
    assert coordinator.control.nodes_by_id == {
        first.node_id: "unregistered",
        second.node_id: "registered",
    }


def test_revocation_and_sync_drive_the_node_list(tmp_path: Path, coordinator: Coordinator) -> None:
    joined = enroll(
        coordinator=coordinator.server.address,
        token=coordinator.token("north"),
        state_dir=tmp_path / "n",
    )
    enroll(
        coordinator=coordinator.server.address,
        token=coordinator.token("south"),
        state_dir=tmp_path / "s",
    )
    control: NodeControl = coordinator.control
    with pytest.raises(UsageError, match="give --superlink and --ca"):
        revoke_holder(coordinator.registry, None, "north", actor=ACTOR)
    revoke_holder(coordinator.registry, control, "north", actor=ACTOR)
    assert coordinator.control.nodes_by_id[joined.node_id] == "unregistered"
    assert coordinator.registry.holder("north").state == "revoked"

    # a SuperLink restarted on an in-memory database forgets every node
    coordinator.control.nodes_by_id.clear()
    changes = reconcile(coordinator.registry, control, actor=ACTOR)
    assert len(changes) == 1 and changes[0].startswith("south: registered key SHA256:")
    south = coordinator.registry.holder("south")
    assert coordinator.control.nodes_by_id == {south.node_id: "registered"}
    assert reconcile(coordinator.registry, control, actor=ACTOR) == []


def test_the_endpoint_answers_bad_requests_in_json(coordinator: Coordinator) -> None:
    host, port = coordinator.server.address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(coordinator.certs.ca_cert))
    for path, body, status in [
        ("/v1/enroll", b"not json", 400),
        ("/v1/enroll", json.dumps({"token": 1}).encode(), 400),
        ("/v1/nowhere", b"{}", 404),
    ]:
        connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
        assert response.status == status, answer
        assert set(answer) == {"error", "message"}


def test_operator_commands(
    tmp_path: Path, coordinator: Coordinator, cli: Callable[..., Result]
) -> None:
    app = _operator_app()
    workdir = coordinator.registry.path.parent
    ca = coordinator.certs.ca_cert
    issued = cli(
        app, "enroll", "token", "north", "--ca", ca, "--workdir", workdir, "--expires", "2h"
    )
    assert issued.code == 0, issued.err
    token = next(line for line in issued.out.splitlines() if line.startswith("fedge1."))
    assert client_parse_token(token)[1] == ca_fingerprint(ca.read_text())
    duplicate = cli(app, "enroll", "token", "north", "--ca", ca, "--workdir", workdir)
    assert duplicate.code == 0  # still pending: a new token replaces the first
    enroll(
        coordinator=coordinator.server.address,
        token=next(line for line in duplicate.out.splitlines() if line.startswith("fedge1.")),
        state_dir=tmp_path / "n",
    )
    taken = cli(app, "enroll", "token", "north", "--ca", ca, "--workdir", workdir)
    assert taken.code == 2 and "fedge enroll rotate north" in taken.err
    bad = cli(app, "enroll", "token", "north", "--ca", ca, "--workdir", workdir, "--expires", "1y")
    assert bad.code == 2 and "--expires" in bad.err
    listed = cli(app, "enroll", "list", "--workdir", workdir)
    assert listed.code == 0 and "north" in listed.out and "active" in listed.out
    refused = cli(app, "enroll", "revoke", "north", "--workdir", workdir)
    assert refused.code == 2 and "give --superlink and --ca" in refused.err
    rotated = cli(app, "enroll", "rotate", "north", "--ca", ca, "--workdir", workdir)
    assert rotated.code == 0 and "rotate token for north" in rotated.out
    audit = cli(app, "enroll", "audit", "--workdir", workdir, "--name", "north")
    assert audit.code == 0 and "holder.enrolled" in audit.out


def test_supernode_command_passes_the_enrolled_key(tmp_path: Path) -> None:
    from client.node.supernode import supernode_command

    options = {
        "superlink": "127.0.0.1:9092",
        "root_certificates": tmp_path / "ca.crt",
        "runtime_port": 9094,
        "data_path": tmp_path / "d.tsv",
        "state_dir": tmp_path,
        "client_name": "north",
    }
    command = supernode_command(**options, auth_private_key=tmp_path / "supernode.key")  # type: ignore[arg-type]
    flag = command.index("--auth-supernode-private-key")
    assert command[flag + 1] == str((tmp_path / "supernode.key").resolve())
    assert "--auth-supernode-private-key" not in supernode_command(**options)  # type: ignore[arg-type]
