"""Ed25519 keys and signatures for artifacts.

A public key travels in two spellings: a PEM file, or the short inline form
``ed25519:<base64 of the 32 raw bytes>`` that fits in an AgentConfig. A key id (the first 16 hex
digits of the SHA-256 of the raw public key) lets a device holding several trusted keys (during a
rotation, say) tell which one a signature claims, without trusting that claim.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedge.atomic import atomic_write_bytes
from fedge.bounded import InputError, read_capped
from fedge.errors import KeyFileError, SignatureError

__all__ = [
    "INLINE_PREFIX",
    "KeyPair",
    "PublicKey",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "parse_public_key",
]

INLINE_PREFIX = "ed25519:"


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key with its id; ``verify`` raises, it never returns a bool."""

    key: Ed25519PublicKey

    @property
    def raw(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()[:16]

    @property
    def inline(self) -> str:
        return INLINE_PREFIX + base64.b64encode(self.raw).decode("ascii")

    def pem(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, signature: bytes, data: bytes, *, what: str) -> None:
        try:
            self.key.verify(signature, data)
        except InvalidSignature as exc:
            raise SignatureError(
                f"signature does not verify with key {self.key_id}", file=what
            ) from exc


@dataclass(frozen=True)
class KeyPair:
    """A signing key and its public half."""

    private: Ed25519PrivateKey

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.private.public_key())

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)

    def save(
        self, directory: str | os.PathLike[str], *, stem: str = "signing"
    ) -> tuple[Path, Path]:
        """Write ``<stem>.key`` (PKCS#8 PEM, mode 0600) and ``<stem>.pub`` (PEM)."""
        folder = Path(directory)
        private_pem = self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        key_path = atomic_write_bytes(folder / f"{stem}.key", private_pem, mode=0o600)
        pub_path = atomic_write_bytes(folder / f"{stem}.pub", self.public.pem(), mode=0o644)
        return key_path, pub_path


_MAX_KEY_FILE = 64 << 10  # a PEM Ed25519 key is a few hundred bytes


def generate_keypair() -> KeyPair:
    return KeyPair(Ed25519PrivateKey.generate())


def _read_key_file(path: Path) -> bytes:
    try:
        return read_capped(path, limit=_MAX_KEY_FILE, what="a key file")
    except InputError as exc:
        if exc.reason == "does not exist":
            raise KeyFileError("key file does not exist", path=str(path)) from exc
        raise KeyFileError(exc.reason, path=str(path)) from exc


def load_private_key(path: str | os.PathLike[str]) -> KeyPair:
    """Load a PEM Ed25519 private key written by :meth:`KeyPair.save`."""
    file = Path(path)
    data = _read_key_file(file)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError("not an unencrypted PEM private key", path=str(file)) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"expected an Ed25519 key, found {type(key).__name__}", path=str(file))
    return KeyPair(key)


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """Load a PEM Ed25519 public key."""
    file = Path(path)
    data = _read_key_file(file)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError("not a PEM public key", path=str(file)) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"expected an Ed25519 key, found {type(key).__name__}", path=str(file))
    return PublicKey(key)


def parse_public_key(value: str, *, base_dir: str | os.PathLike[str] | None = None) -> PublicKey:
    """Accept ``ed25519:<base64>`` or a path to a PEM file (relative to ``base_dir``)."""
    if value.startswith(INLINE_PREFIX):
        encoded = value[len(INLINE_PREFIX) :]
        try:
            raw = base64.b64decode(encoded, validate=True)
            return PublicKey(Ed25519PublicKey.from_public_bytes(raw))
        except (binascii.Error, ValueError) as exc:
            raise KeyFileError("not 32 bytes of base64 after 'ed25519:'", path=value) from exc
    path = Path(value)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    return load_public_key(path)
