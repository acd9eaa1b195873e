"""The enrollment rules, as pure functions of the registry's rows and the time.

May this name get a token, may this token be redeemed now, is this a data holder's name, is this
a SuperNode's public key, how long may a token live: each answer is a function of its arguments
that returns or raises the :mod:`server.enrollment.errors` class saying why not, with the message
the operator or the data holder sees. The records the rules read, and that the registry
(server/enrollment/registry.py, the I/O around these rules) returns, are defined here too.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import re
import struct
from dataclasses import dataclass
from typing import Literal

from fedge import enroll_token
from fedge.durations import parse_duration
from fedge.errors import UsageError
from server.enrollment.errors import (
    DuplicateNameError,
    ExpiredTokenError,
    MalformedTokenError,
    ReusedTokenError,
    RevokedHolderError,
    SupersededTokenError,
    UnknownHolderError,
    UnknownTokenError,
)

__all__ = [
    "MAX_TTL",
    "AuditEntry",
    "Claim",
    "Holder",
    "IssuedToken",
    "NodePublicKey",
    "Purpose",
    "State",
    "TokenRecord",
    "check_claimable",
    "check_issuable",
    "format_time",
    "hash_secret",
    "parse_expires",
    "parse_node_public_key",
    "parse_token",
    "validate_name",
]

MAX_TTL = 30 * 86400.0

State = Literal["pending", "active", "revoked"]
Purpose = Literal["enroll", "rotate"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# OpenSSH ECDSA key types and the length of their uncompressed point (0x04 || X || Y).
_CURVES = {
    "ecdsa-sha2-nistp256": ("nistp256", 65),
    "ecdsa-sha2-nistp384": ("nistp384", 97),
    "ecdsa-sha2-nistp521": ("nistp521", 133),
}


# ----------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Holder:
    """One data holder as the registry knows it."""

    name: str
    state: State
    public_key: str | None
    fingerprint: str | None
    node_id: int | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class TokenRecord:
    """A stored token: its hash, never the token."""

    token_hash: str
    name: str
    purpose: Purpose
    created_at: float
    expires_at: float
    used_at: float | None
    superseded_at: float | None


@dataclass(frozen=True)
class IssuedToken:
    """What the operator hands to the data holder: ``token`` is shown once and never stored."""

    token: str
    name: str
    purpose: Purpose
    expires_at: float


@dataclass(frozen=True)
class Claim:
    """A token redeemed but not yet final: the key is being registered with the SuperLink."""

    token_hash: str
    name: str
    purpose: Purpose
    previous_node_id: int | None
    previous_fingerprint: str | None


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: float
    actor: str
    action: str
    subject: str
    detail: str


@dataclass(frozen=True)
class NodePublicKey:
    """A SuperNode's EC public key in the one-line OpenSSH form ``flwr supernode register``
    reads (``ecdsa-sha2-nistp384 AAAA...``), with its ``SHA256:`` fingerprint."""

    openssh: str
    fingerprint: str
    curve: str


# ---------------------------------------------------------------------------------- inputs


def format_time(epoch: float) -> str:
    """``2026-01-31 14:05 UTC``: what error messages and listings show."""
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_expires(text: str) -> float:
    """A token's lifetime from ``--expires`` (``30m``, ``24h``, ``7d``, ``1h30m``; the grammar of
    :mod:`fedge.durations`) in seconds; at most 30 days."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--expires {text!r}: expected a duration like 30m, 24h or 7d") from exc
    if not 0 < seconds <= MAX_TTL:
        raise UsageError(f"--expires {text!r}: a token lives between 1 second and 30 days")
    return seconds


def validate_name(name: str) -> str:
    """A data holder's name: letters, digits, ``.``, ``_``, ``-``; at most 64 characters."""
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return name


def hash_secret(secret: str) -> str:
    """What the registry stores of a token's secret, and looks a presented secret up by."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def parse_token(text: str) -> tuple[str, str]:
    """``(secret, ca sha256)`` of a token; MalformedTokenError (the wire's ``malformed-token``)
    if it is not one."""
    try:
        return enroll_token.parse_token(text)
    except UsageError as exc:
        raise MalformedTokenError(
            f"not a fedge enrollment token (expected {enroll_token.TOKEN_FORMAT})"
        ) from exc


def _ssh_strings(blob: bytes) -> list[bytes]:
    fields, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise ValueError("truncated length")
        (length,) = struct.unpack(">I", blob[offset : offset + 4])
        offset += 4
        if offset + length > len(blob):
            raise ValueError("truncated field")
        fields.append(blob[offset : offset + length])
        offset += length
    return fields


def parse_node_public_key(text: str) -> NodePublicKey:
    """Check the OpenSSH line of a NIST-curve ECDSA key and compute its fingerprint.

    This checks the structure; the SuperLink checks the point itself when it registers the key.
    """
    words = text.strip().split()
    if len(words) < 2 or words[0] not in _CURVES:
        raise UsageError(
            "public_key: expected an OpenSSH ECDSA key line (ecdsa-sha2-nistp384 AAAA...)"
        )
    key_type, encoded = words[0], words[1]
    curve, point_length = _CURVES[key_type]
    try:
        blob = base64.b64decode(encoded, validate=True)
        fields = _ssh_strings(blob)
    except (binascii.Error, ValueError) as exc:
        raise UsageError(f"public_key: the base64 part of the {key_type} key is damaged") from exc
    if (
        len(fields) != 3
        or fields[0] != key_type.encode()
        or fields[1] != curve.encode()
        or len(fields[2]) != point_length
        or fields[2][0] != 4
    ):
        raise UsageError(f"public_key: not a well-formed {key_type} public key")
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return NodePublicKey(f"{key_type} {encoded}", f"SHA256:{digest}", curve)


# --------------------------------------------------------------------------------- decisions


def check_issuable(holder: Holder | None, purpose: Purpose) -> None:
    """May ``holder`` get a token for ``purpose``? A first token or a reissue while pending is
    fine; a rotation needs an active holder; a revoked name is never reused."""
    if holder is not None and holder.state == "revoked":
        raise RevokedHolderError(
            f"data holder {holder.name} was revoked at {format_time(holder.updated_at)}; "
            "enroll it under a new name"
        )
    if purpose == "enroll" and holder is not None and holder.state == "active":
        raise DuplicateNameError(
            f"data holder {holder.name} is already enrolled (active); "
            f"use `fedge enroll rotate {holder.name}` to give it a new key"
        )
    if purpose == "rotate" and (holder is None or holder.state != "active"):
        state = "not enrolled" if holder is None else holder.state
        name = holder.name if holder is not None else "this name"
        raise UnknownHolderError(
            f"data holder {name} is {state}: only an active holder's key can be rotated"
        )


def check_claimable(token: TokenRecord | None, holder: Holder | None, *, now: float) -> None:
    """Raise the error that tells the data holder why ``token`` cannot be redeemed, if any."""
    if token is None or holder is None:
        raise UnknownTokenError(
            "the coordinator does not know this enrollment token "
            "(mistyped, or issued by another coordinator)"
        )
    if token.used_at is not None:
        raise ReusedTokenError(
            f"this enrollment token was already used at {format_time(token.used_at)}; "
            "a token works once: ask the operator for a new one"
        )
    if holder.state == "revoked":
        raise RevokedHolderError(
            f"data holder {holder.name} was revoked at {format_time(holder.updated_at)}; "
            "its tokens no longer work"
        )
    if token.superseded_at is not None:
        raise SupersededTokenError(
            f"this enrollment token was replaced by a newer one at "
            f"{format_time(token.superseded_at)}; use the newest token"
        )
    if now >= token.expires_at:
        raise ExpiredTokenError(
            f"this enrollment token expired at {format_time(token.expires_at)}; "
            f"ask the operator for a new one (fedge enroll token {holder.name})"
        )
    if token.purpose == "rotate" and holder.state != "active":
        raise UnknownTokenError(f"data holder {holder.name} is no longer active")
