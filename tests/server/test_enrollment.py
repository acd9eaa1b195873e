"""Enrollment without a SuperLink: the registry's rules, and the HTTPS endpoint with CA pinning.

The registry tests drive server/enrollment/registry.py with a hand-moved clock. The endpoint tests run the
real HTTPS server and the real ``fedge-client enroll`` code over loopback, but hand the
enrollment service a recording stand-in for the SuperLink's Control API (``FakeNodes``), so that
pinning, one-time tokens and the CLI's exit codes are checked in a second; the same paths against
a real ``flower-superlink --enable-supernode-auth`` are in test_enrollment_deployment.py.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import sqlite3
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

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
from fedge.errors import FederationError, UsageError
from fedge.node_keys import generate_node_key
from fedge.tls import CertPaths, generate_federation_certs
from server.cli.enroll import enroll_app
from server.enrollment.registry import (
    DuplicateKeyError,
    DuplicateNameError,
    ExpiredTokenError,
    MalformedTokenError,
    NodePublicKey,
    Registry,
    ReusedTokenError,
    RevokedHolderError,
    SupersededTokenError,
    UnknownHolderError,
    UnknownTokenError,
    ca_fingerprint,
    format_token,
    parse_duration,
    parse_node_public_key,
    parse_token,
    validate_name,
)
from server.enrollment.service import (
    Enroller,
    EnrollmentServer,
    NodeControl,
    reconcile,
    revoke_holder,
)
from tests.conftest import Result

CA_PIN = "ab" * 32
ACTOR = "operator test"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _secret(token: str) -> str:
    return parse_token(token)[0]


def _key() -> NodePublicKey:
    return parse_node_public_key(generate_node_key()[1])


# ---------------------------------------------------------------------------- pure pieces


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800), ("1h30m", 5400), ("30d", 2592000)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "h", "0s", "31d", "1y", "-1h", "1h x"])
def test_bad_durations_name_the_flag(text: str) -> None:
    with pytest.raises(UsageError, match="--expires"):
        parse_duration(text)


def test_token_format_is_the_same_on_both_sides() -> None:
    secret = base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=")
    token = format_token(secret, CA_PIN)
    assert parse_token(token) == client_parse_token(token) == (secret, CA_PIN)
    for bad in ("", "fedge1..", f"fedge2.{secret}.{CA_PIN}", f"fedge1.{secret}.{CA_PIN[:-1]}"):
        with pytest.raises(MalformedTokenError):
            parse_token(bad)
        with pytest.raises(UsageError, match="--token: not a fedge enrollment token"):
            client_parse_token(bad)


def test_names() -> None:
    assert validate_name("hospital-north.eu_1") == "hospital-north.eu_1"
    for bad in ("", "-x", "a b", "x" * 65, "ü"):
        with pytest.raises(UsageError, match="name"):
            validate_name(bad)


def test_node_keys_are_openssh_p384_with_ssh_fingerprints() -> None:
    private, public = generate_node_key()
    key = serialization.load_ssh_private_key(private, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP384R1)
    assert private.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    parsed = parse_node_public_key(public + " holder@host")
    blob = base64.b64decode(public.split()[1])
    expected = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert parsed.fingerprint == f"SHA256:{expected}"  # what `ssh-keygen -lf` prints
    assert parsed.openssh == public and parsed.curve == "nistp384"
    own = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert own.decode() == public


@pytest.mark.parametrize(
    "text",
    [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
        "ecdsa-sha2-nistp384 not*base64",
        "ecdsa-sha2-nistp384 " + base64.b64encode(b"\x00\x00\x00\x05short").decode(),
        "-----BEGIN PUBLIC KEY-----",
    ],
)
def test_damaged_or_foreign_public_keys_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="public_key"):
        parse_node_public_key(text)


def test_ca_fingerprint_is_the_sha256_of_the_der(tmp_path: Path) -> None:
    paths = generate_federation_certs(tmp_path)
    cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    assert ca_fingerprint(paths.ca_cert.read_text()) == hashlib.sha256(der).hexdigest()
    with pytest.raises(UsageError, match="not a PEM certificate"):
        ca_fingerprint("nonsense")


# ---------------------------------------------------------------------------- the registry


def test_a_token_works_once_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    clock = Clock()
    registry = Registry.in_workdir(tmp_path, clock=clock)
    assert registry.path.stat().st_mode & 0o777 == 0o600
    issued = registry.issue_token("north", ttl=3600, ca_sha256=CA_PIN, actor=ACTOR)
    assert issued.token.endswith(CA_PIN)
    assert issued.expires_at == clock.now + 3600
    assert registry.holder("north").state == "pending"
    secret = _secret(issued.token)
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("enrollment"))
    assert secret.encode() not in raw  # a copy of the registry enrolls nobody
    assert [t.token_hash for t in registry.tokens("north")] == [
        hashlib.sha256(secret.encode()).hexdigest()
    ]

    clock.now += 60
    claim = registry.claim(secret, actor="svc")
    assert (claim.name, claim.purpose, claim.previous_node_id) == ("north", "enroll", None)
    with pytest.raises(ReusedTokenError, match="already used at .* a token works once"):
        registry.claim(secret, actor="svc")
    with pytest.raises(UnknownTokenError, match="does not know this enrollment token"):
        registry.claim("A" * 43, actor="svc")

    key = _key()
    holder = registry.activate(claim, key=key, node_id=2**64 - 5, actor="svc")
    assert holder.state == "active"
    assert holder.node_id == 2**64 - 5  # Flower's node ids are unsigned 64-bit
    assert holder.fingerprint == key.fingerprint
    assert [(e.action, e.subject) for e in registry.audit()] == [
        ("holder.created", "north"),
        ("token.issued", "north"),
        ("token.used", "north"),
        ("token.refused", "north"),  # the reuse; the unknown token leaves no row
        ("holder.enrolled", "north"),
    ]
    assert registry.audit()[3].detail == "reused-token"
    assert key.fingerprint in registry.audit()[-1].detail


def test_expired_and_superseded_tokens_are_refused(tmp_path: Path) -> None:
    clock = Clock()
    registry = Registry.in_workdir(tmp_path, clock=clock)
    first = registry.issue_token("south", ttl=600, ca_sha256=CA_PIN, actor=ACTOR)
    clock.now += 601
    with pytest.raises(ExpiredTokenError, match=r"expired at 2027-01-15 08:\d\d:00 UTC.*new one"):
        registry.claim(_secret(first.token), actor="svc")
    second = registry.issue_token("south", ttl=600, ca_sha256=CA_PIN, actor=ACTOR)
    with pytest.raises(SupersededTokenError, match="replaced by a newer one"):
        registry.claim(_secret(first.token), actor="svc")
    assert registry.claim(_secret(second.token), actor="svc").name == "south"
    assert "1 earlier token(s) superseded" in registry.audit(subject="south")[-3].detail


def test_duplicate_names_keys_and_rotation(tmp_path: Path) -> None:
    registry = Registry.in_workdir(tmp_path, clock=Clock())
    claim = registry.claim(
        _secret(registry.issue_token("north", ttl=60, ca_sha256=CA_PIN, actor=ACTOR).token),
        actor="svc",
    )
    old_key = _key()
    registry.activate(claim, key=old_key, node_id=11, actor="svc")
    with pytest.raises(DuplicateNameError, match="already enrolled .*`fedge enroll rotate north`"):
        registry.issue_token("north", ttl=60, ca_sha256=CA_PIN, actor=ACTOR)
    with pytest.raises(UnknownHolderError, match="only an active holder"):
        registry.issue_token("nobody", ttl=60, ca_sha256=CA_PIN, actor=ACTOR, purpose="rotate")

    # another holder cannot take north's key
    other = registry.claim(
        _secret(registry.issue_token("south", ttl=60, ca_sha256=CA_PIN, actor=ACTOR).token),
        actor="svc",
    )
    with pytest.raises(DuplicateKeyError, match="for another data holder"):
        registry.check_key_free(other, old_key.fingerprint)

    rotation = registry.issue_token(
        "north", ttl=60, ca_sha256=CA_PIN, actor=ACTOR, purpose="rotate"
    )
    again = registry.claim(_secret(rotation.token), actor="svc")
    assert (again.purpose, again.previous_node_id) == ("rotate", 11)
    with pytest.raises(DuplicateKeyError, match="make a new key pair"):
        registry.check_key_free(again, old_key.fingerprint)  # rotating to the same key
    new_key = _key()
    registry.check_key_free(again, new_key.fingerprint)
    holder = registry.activate(again, key=new_key, node_id=12, actor="svc")
    assert (holder.state, holder.node_id, holder.fingerprint) == ("active", 12, new_key.fingerprint)
    rotated = registry.audit(subject="north")[-1]
    assert rotated.action == "holder.rotated"
    assert f"{old_key.fingerprint} (node 11) -> {new_key.fingerprint} (node 12)" in rotated.detail


def test_revocation_is_final_and_voids_tokens(tmp_path: Path) -> None:
    registry = Registry.in_workdir(tmp_path, clock=Clock())
    unused = registry.issue_token("west", ttl=60, ca_sha256=CA_PIN, actor=ACTOR)
    before = registry.revoke("west", actor=ACTOR, reason="left the consortium")
    assert before.state == "pending"
    assert registry.holder("west").state == "revoked"
    with pytest.raises(RevokedHolderError, match="its tokens no longer work"):
        registry.claim(_secret(unused.token), actor="svc")
    with pytest.raises(RevokedHolderError, match="enroll it under a new name"):
        registry.issue_token("west", ttl=60, ca_sha256=CA_PIN, actor=ACTOR)
    with pytest.raises(RevokedHolderError, match="already revoked"):
        registry.revoke("west", actor=ACTOR)
    with pytest.raises(UnknownHolderError):
        registry.revoke("nobody", actor=ACTOR)
    revoked = registry.audit(subject="west")[-2]
    assert revoked.action == "holder.revoked"
    assert "1 unused token(s) voided; left the consortium" in revoked.detail


def test_a_holder_revoked_mid_enrollment_is_not_activated(tmp_path: Path) -> None:
    registry = Registry.in_workdir(tmp_path, clock=Clock())
    token = registry.issue_token("east", ttl=60, ca_sha256=CA_PIN, actor=ACTOR)
    claim = registry.claim(_secret(token.token), actor="svc")
    registry.revoke("east", actor=ACTOR)
    with pytest.raises(RevokedHolderError, match="revoked while it enrolled"):
        registry.activate(claim, key=_key(), node_id=3, actor="svc")
    assert registry.holder("east").state == "revoked"


def test_released_tokens_work_again(tmp_path: Path) -> None:
    registry = Registry.in_workdir(tmp_path, clock=Clock())
    token = registry.issue_token("north", ttl=60, ca_sha256=CA_PIN, actor=ACTOR)
    claim = registry.claim(_secret(token.token), actor="svc")
    registry.release(claim, actor="svc", reason="FederationError")
    assert registry.claim(_secret(token.token), actor="svc").name == "north"
    assert registry.audit()[-2].action == "token.released"


def test_the_audit_log_is_append_only(tmp_path: Path) -> None:
    registry = Registry.in_workdir(tmp_path, clock=Clock())
    registry.issue_token("north", ttl=60, ca_sha256=CA_PIN, actor=ACTOR)
    with sqlite3.connect(registry.path) as db:
        for statement in ("UPDATE audit SET actor = 'someone else'", "DELETE FROM audit"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                db.execute(statement)
    assert [e.actor for e in registry.audit()] == [ACTOR, ACTOR]


def test_racing_claims_of_one_token_have_one_winner(tmp_path: Path) -> None:
    registry = Registry.in_workdir(tmp_path)
    secret = _secret(registry.issue_token("north", ttl=60, ca_sha256=CA_PIN, actor=ACTOR).token)
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def race() -> None:
        barrier.wait()
        try:
            Registry(registry.path).claim(secret, actor="svc")
            outcomes.append("won")
        except ReusedTokenError:
            outcomes.append("refused")

    threads = [threading.Thread(target=race) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["refused", "refused", "refused", "won"]


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
