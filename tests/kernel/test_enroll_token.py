"""The enrollment token format (fedge/enroll_token.py), and both sides reading it through it.

The operator's side (server/enrollment/) makes tokens and the holder's side (client/node/enroll.py)
reads them; each words its own refusal, so the last tests check those words did not change.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from fedge.enroll_token import (
    TOKEN_FORMAT,
    TOKEN_PREFIX,
    ca_fingerprint,
    format_token,
    is_ca_sha256,
    new_secret,
    parse_token,
)
from fedge.errors import UsageError
from fedge.tls import generate_federation_certs

SECRET = "A" * 21 + "-_" + "z9" * 10
PIN = "0123456789abcdef" * 4


def test_a_token_is_prefix_secret_and_pin() -> None:
    token = format_token(SECRET, PIN)
    assert token == f"fedge1.{SECRET}.{PIN}"
    assert TOKEN_PREFIX == "fedge1"
    assert TOKEN_FORMAT == "fedge1.<secret>.<CA sha256>"
    assert parse_token(token) == (SECRET, PIN)
    assert parse_token(f"  {token}\n") == (SECRET, PIN)  # pasted with blanks around it


@given(secret=st.binary(min_size=32, max_size=32), ca=st.binary(min_size=1, max_size=64))
def test_round_trip(secret: bytes, ca: bytes) -> None:
    import base64

    text = base64.urlsafe_b64encode(secret).decode().rstrip("=")
    pin = hashlib.sha256(ca).hexdigest()
    assert parse_token(format_token(text, pin)) == (text, pin)


def test_new_secrets_are_fresh_43_character_base64url() -> None:
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert parse_token(format_token(secret, PIN)) == (secret, PIN)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "it has 1 dot-separated part(s), not 3"),
        ("hello", "it has 1 dot-separated part(s), not 3"),
        (f"fedge1.{SECRET}", "it has 2 dot-separated part(s), not 3"),
        (f"fedge1.{SECRET}.{PIN}.x", "it has 4 dot-separated part(s), not 3"),
        ("fedge1..", "its secret is not 43 base64url characters"),
        (f"fedge2.{SECRET}.{PIN}", "it does not start with fedge1."),
        (f"FEDGE1.{SECRET}.{PIN}", "it does not start with fedge1."),
        (f"fedge1.{SECRET[:-1]}.{PIN}", "its secret is not 43 base64url characters"),
        (f"fedge1.{SECRET}A.{PIN}", "its secret is not 43 base64url characters"),
        (f"fedge1.{SECRET[:-1]}+.{PIN}", "its secret is not 43 base64url characters"),
        (f"fedge1.{SECRET}.{PIN[:-1]}", "its CA pin is not 64 lower-case hex digits"),
        (f"fedge1.{SECRET}.{PIN.upper()}", "its CA pin is not 64 lower-case hex digits"),
        (f"fedge1.{SECRET}.{'g' * 64}", "its CA pin is not 64 lower-case hex digits"),
    ],
)
def test_each_malformed_form_is_refused_with_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(UsageError) as refused:
        parse_token(text)
    message = str(refused.value)
    assert message == f"not a fedge enrollment token (expected {TOKEN_FORMAT}): {why}"
    assert SECRET not in message  # a refusal never repeats a secret


def test_format_refuses_what_would_not_parse() -> None:
    with pytest.raises(UsageError, match="43 base64url"):
        format_token(SECRET + "=", PIN)
    with pytest.raises(UsageError, match="ca_sha256"):
        format_token(SECRET, PIN[:-1])
    assert is_ca_sha256(PIN)
    assert not is_ca_sha256(PIN.upper())
    assert not is_ca_sha256(PIN + "0")


def test_ca_fingerprint_is_the_sha256_of_the_der(tmp_path: Path) -> None:
    paths = generate_federation_certs(tmp_path)
    der = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    pin = ca_fingerprint(paths.ca_cert.read_text())
    assert pin == hashlib.sha256(der).hexdigest() == ca_fingerprint(paths.ca_cert.read_bytes())
    assert is_ca_sha256(pin)
    with pytest.raises(UsageError, match="the CA certificate is not a PEM certificate"):
        ca_fingerprint("nonsense")


# ------------------------------------------------------------------------- both sides


def test_a_token_made_by_the_server_parses_on_the_client(tmp_path: Path) -> None:
    from client.node.enroll import parse_token as client_parse_token
    from server.enrollment.registry import Registry
    from server.enrollment.rules import hash_secret

    certs = generate_federation_certs(tmp_path / "certs")
    pin = ca_fingerprint(certs.ca_cert.read_text())
    registry = Registry.in_workdir(tmp_path / "coordinator")
    issued = registry.issue_token("north", ttl=600, ca_sha256=pin, actor="test")
    secret, pinned = client_parse_token(issued.token)
    assert pinned == pin
    assert [t.token_hash for t in registry.tokens("north")] == [hash_secret(secret)]
    assert registry.claim(secret, actor="test").name == "north"


def test_each_side_keeps_its_own_words_for_a_malformed_token() -> None:
    from client.node.enroll import parse_token as client_parse_token
    from server.enrollment.errors import MalformedTokenError
    from server.enrollment.rules import parse_token as server_parse_token

    with pytest.raises(MalformedTokenError) as server_side:
        server_parse_token("hello")
    assert str(server_side.value) == (
        "not a fedge enrollment token (expected fedge1.<secret>.<CA sha256>)"
    )
    assert server_side.value.reason == "malformed-token"
    with pytest.raises(UsageError) as client_side:
        client_parse_token("hello")
    assert type(client_side.value) is UsageError
    assert str(client_side.value) == (
        "--token: not a fedge enrollment token (expected fedge1.<secret>.<CA sha256>, as printed "
        "by `fedge enroll token`)"
    )
