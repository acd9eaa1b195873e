"""Enrollment's pure rules and its SQLite registry, without a network.

The rules (server/enrollment/rules.py: durations, the token format on both sides, names, node
keys, the CA pin) are plain functions; the registry tests drive server/enrollment/registry.py
with a hand-moved clock. The HTTPS endpoint is in test_enrollment_endpoint.py.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.node.enroll import parse_token as client_parse_token
from fedge.enroll_token import ca_fingerprint, format_token
from fedge.errors import UsageError
from fedge.node_keys import generate_node_key
from fedge.tls import generate_federation_certs
from server.enrollment.errors import (
    DuplicateKeyError,
    DuplicateNameError,
    ExpiredTokenError,
    MalformedTokenError,
    ReusedTokenError,
    RevokedHolderError,
    SupersededTokenError,
    UnknownHolderError,
    UnknownTokenError,
)
from server.enrollment.registry import Registry
from server.enrollment.rules import (
    NodePublicKey,
    parse_expires,
    parse_node_public_key,
    parse_token,
    validate_name,
)

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
    assert parse_expires(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "h", "0s", "31d", "1y", "-1h", "1h x"])
def test_bad_durations_name_the_flag(text: str) -> None:
    with pytest.raises(UsageError, match="--expires"):
        parse_expires(text)


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
