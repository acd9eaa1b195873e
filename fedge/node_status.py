"""The node-status request: how an enrolled SuperNode asks the coordinator "am I still admitted?".

Why it exists: when the operator revokes a data holder (``fedge enroll revoke``), the SuperLink
simply turns its SuperNode away, and Flower's SuperNode only says that it could not connect. The
holder's ``fedge-client start`` then asks the coordinator's enrollment endpoint, over HTTPS
checked against the federation's pinned CA, for the state of its own key, and can say "this node
was revoked by the coordinator" instead of a raw connection error.

The request proves possession of the node's private key (the EC key from ``fedge-client
enroll``, the one the SuperLink authenticates), so nobody can ask about a key that is not theirs,
and the answer speaks only of that key: it never says whether any other name exists. The signed
message binds a purpose tag, the public key, a timestamp and a random nonce; the coordinator
accepts a timestamp within :data:`MAX_SKEW_S` of its clock. Both sides build and check requests
only through this module (the holder in client/node/, the coordinator in server/enrollment/), and
it is in the kernel because ``cryptography`` lives here.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections.abc import Mapping
from typing import Any, Final

from fedge.errors import UsageError

__all__ = [
    "MAX_SKEW_S",
    "STATE_ACTIVE",
    "STATE_REVOKED",
    "STATE_UNKNOWN",
    "STATUS_PATH",
    "sign_status_request",
    "verify_status_request",
]

STATUS_PATH: Final = "/v1/status"
MAX_SKEW_S: Final = 300.0
STATE_ACTIVE: Final = "active"
STATE_REVOKED: Final = "revoked"
STATE_UNKNOWN: Final = "unknown"  # the coordinator admits no holder with this key (rotated away)

_PURPOSE = b"fedge-node-status-v1"


def _message(public_key: str, at: int, nonce: str) -> bytes:
    return b"\n".join((_PURPOSE, public_key.encode("ascii"), str(at).encode(), nonce.encode()))


def sign_status_request(private_key_pem: bytes, *, now: float | None = None) -> dict[str, Any]:
    """The JSON body of a status request, signed with the node's OpenSSH EC private key.

    UsageError if ``private_key_pem`` is not an unencrypted OpenSSH EC private key.
    """
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_ssh_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError("node key: not an unencrypted OpenSSH private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError("node key: not an EC key (fedge-client enroll makes EC P-384 keys)")
    line = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode("ascii")
    )
    at = int(time.time() if now is None else now)
    nonce = secrets.token_urlsafe(16)
    signature = key.sign(_message(line, at, nonce), ec.ECDSA(hashes.SHA384()))
    return {
        "public_key": line,
        "at": at,
        "nonce": nonce,
        "signature": base64.b64encode(signature).decode("ascii"),
    }


def verify_status_request(body: Mapping[str, Any], *, now: float | None = None) -> str:
    """The OpenSSH public-key line of a status request whose signature and time check out.

    UsageError naming the field otherwise; the message never depends on what the coordinator
    knows about the key, so a refusal tells nothing about who is enrolled.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public_key, at, nonce, signature = (
        body.get("public_key"),
        body.get("at"),
        body.get("nonce"),
        body.get("signature"),
    )
    if not (
        isinstance(public_key, str)
        and isinstance(at, int)
        and not isinstance(at, bool)
        and isinstance(nonce, str)
        and 0 < len(nonce) <= 64
        and isinstance(signature, str)
    ):
        raise UsageError(
            "request: expected JSON with public_key, at (an integer), nonce and signature"
        )
    if abs((time.time() if now is None else now) - at) > MAX_SKEW_S:
        raise UsageError(
            f"at: the request's time is more than {MAX_SKEW_S:.0f} s off the coordinator's "
            "clock (check this machine's clock)"
        )
    line = " ".join(public_key.split()[:2])
    try:
        key = serialization.load_ssh_public_key(line.encode("ascii"))
        raw = base64.b64decode(signature, validate=True)
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise UsageError(
            "public_key: not an OpenSSH EC public key, or a damaged signature"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise UsageError("public_key: not an EC key")
    try:
        key.verify(raw, _message(line, at, nonce), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise UsageError("signature: does not verify with public_key") from exc
    return line
