"""The enrollment token: the one format ``fedge enroll token`` writes and ``fedge-client enroll``
reads.

A token is ``fedge1.<secret>.<ca sha256>``:

* ``fedge1`` names the format and its version;
* the secret is 32 random bytes in unpadded base64url (43 characters); the coordinator stores only
  its SHA-256, and a token works once;
* the last part pins the federation's CA certificate (the SHA-256 of its DER bytes, 64 lower-case
  hex digits), so a data holder who got the token out of band can tell the real coordinator from
  an impostor on first contact (kubeadm's ``--discovery-token-ca-cert-hash`` works the same way).

A token is redeemed over HTTPS (TLS with the pinned CA): ``GET`` :data:`CA_PATH` serves the CA
certificate to check against the pin, ``POST`` :data:`ENROLL_PATH` takes the token and the node's
public key. Those two paths are part of the same contract and live here too.

The operator's side (server/enrollment/) and the holder's side (client/node/enroll.py) both read
and write tokens only through this module. Each side words its own refusal for its users (a flag,
a wire reason); what is wrong in detail is in the :class:`~fedge.errors.UsageError` raised here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets

from fedge.errors import UsageError

__all__ = [
    "CA_PATH",
    "ENROLL_PATH",
    "SECRET_BYTES",
    "TOKEN_FORMAT",
    "TOKEN_PREFIX",
    "ca_fingerprint",
    "format_token",
    "is_ca_sha256",
    "new_secret",
    "parse_token",
]

CA_PATH = "/v1/ca"
ENROLL_PATH = "/v1/enroll"
TOKEN_PREFIX = "fedge1"  # noqa: S105 - a format tag, not a secret
TOKEN_FORMAT = f"{TOKEN_PREFIX}.<secret>.<CA sha256>"
SECRET_BYTES = 32

_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def new_secret() -> str:
    """A fresh token secret: 32 random bytes, unpadded base64url."""
    return base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")


def is_ca_sha256(text: str) -> bool:
    """Is ``text`` a CA pin: the 64 lower-case hex digits of a SHA-256?"""
    return _HEX64.fullmatch(text) is not None


def format_token(secret: str, ca_sha256: str) -> str:
    """The token for ``secret`` pinning the CA whose SHA-256 is ``ca_sha256``."""
    if not _SECRET.fullmatch(secret):
        raise UsageError("token secret: expected 43 base64url characters (32 bytes)")
    if not is_ca_sha256(ca_sha256):
        raise UsageError("ca_sha256: expected the 64 hex digits of the CA's SHA-256")
    return f"{TOKEN_PREFIX}.{secret}.{ca_sha256}"


def parse_token(text: str) -> tuple[str, str]:
    """``(secret, ca sha256)`` of a token (blanks around it are ignored).

    UsageError saying which part is wrong if ``text`` is not a token; the message never repeats
    the text, which may hold a secret.
    """
    parts = text.strip().split(".")
    problem = None
    if len(parts) != 3:
        problem = f"it has {len(parts)} dot-separated part(s), not 3"
    elif parts[0] != TOKEN_PREFIX:
        problem = f"it does not start with {TOKEN_PREFIX}."
    elif not _SECRET.fullmatch(parts[1]):
        problem = "its secret is not 43 base64url characters"
    elif not is_ca_sha256(parts[2]):
        problem = "its CA pin is not 64 lower-case hex digits"
    if problem is not None:
        raise UsageError(f"not a fedge enrollment token (expected {TOKEN_FORMAT}): {problem}")
    return parts[1], parts[2]


def ca_fingerprint(ca_pem: bytes | str) -> str:
    """The SHA-256 (hex) of the CA certificate's DER bytes: what a token pins.

    The same figure as ``openssl x509 -in ca.crt -outform der | sha256sum``.
    """
    import ssl

    text = ca_pem.decode("ascii") if isinstance(ca_pem, bytes) else ca_pem
    try:
        der = ssl.PEM_cert_to_DER_cert(text.strip() + "\n")
    except (ValueError, binascii.Error) as exc:
        raise UsageError("the CA certificate is not a PEM certificate") from exc
    return hashlib.sha256(der).hexdigest()
