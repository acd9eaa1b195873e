"""Signed artifacts on disk: a folder of files, ``manifest.json`` and ``manifest.sig``.

Verification order matters: the signature is checked over the raw manifest bytes before the
manifest is parsed, and every file is hashed before any caller may load it. Every failure raises
(naming the file at fault); nothing returns a bool that a caller could forget to check.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from fedge.atomic import atomic_write_bytes
from fedge.bounded import InputError, load_json, read_capped
from fedge.errors import ArtifactError, SignatureError
from fedge.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_NAME,
    FileEntry,
    Manifest,
    Provenance,
)
from fedge.signing import KeyPair, PublicKey

__all__ = [
    "SIGNATURE_SCHEMA",
    "check_signature",
    "hash_file",
    "scan_files",
    "sign_artifact",
    "verify_artifact",
    "verify_manifest",
]

SIGNATURE_SCHEMA = "fedge.signature/v1"
_CHUNK = 1 << 20
_RESERVED = frozenset({MANIFEST_NAME, SIGNATURE_NAME})


def hash_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """SHA-256 and size of a file, read in chunks so large models do not fill memory."""
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return hasher.hexdigest(), size


def _walk(directory: Path) -> Iterable[tuple[str, Path]]:
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if Path(root, d).is_symlink()]:
            full = Path(root, name)
            yield full.relative_to(directory).as_posix(), full


def scan_files(directory: str | os.PathLike[str]) -> list[FileEntry]:
    """List every regular file of an artifact folder (manifest and signature excluded)."""
    folder = Path(directory)
    if not folder.is_dir():
        raise ArtifactError("artifact folder does not exist", file=str(folder))
    entries = []
    for rel, full in _walk(folder):
        if rel in _RESERVED:
            continue
        if full.is_symlink() or not full.is_file():
            raise ArtifactError("only regular files may be part of an artifact", file=rel)
        digest, size = hash_file(full)
        entries.append(FileEntry(path=rel, sha256=digest, size=size))
    if not entries:
        raise ArtifactError("artifact folder holds no files", file=str(folder))
    return entries


def sign_artifact(
    directory: str | os.PathLike[str],
    keypair: KeyPair,
    *,
    name: str,
    version: str,
    format: str,
    provenance: Provenance | None = None,
    labels: Mapping[str, str] | None = None,
    metrics: Mapping[str, float] | None = None,
    created: str | None = None,
) -> Manifest:
    """Hash the folder, then write ``manifest.json`` and ``manifest.sig`` atomically."""
    folder = Path(directory)
    manifest = Manifest.create(
        name=name,
        version=version,
        format=format,
        files=scan_files(folder),
        created=created,
        provenance=provenance,
        labels=labels,
        metrics=metrics,
    )
    body = manifest.canonical_bytes()
    signature = {
        "schema": SIGNATURE_SCHEMA,
        "alg": "ed25519",
        "keyId": keypair.public.key_id,
        "signature": base64.b64encode(keypair.sign(body)).decode("ascii"),
    }
    # The signature goes last: a crash in between leaves an unsigned manifest, which verification
    # refuses, rather than a signature over a manifest that was never written.
    atomic_write_bytes(folder / MANIFEST_NAME, body)
    atomic_write_bytes(folder / SIGNATURE_NAME, json.dumps(signature, sort_keys=True).encode())
    return manifest


def _read(path: Path, *, error: type[ArtifactError], what: str, limit: int) -> bytes:
    try:
        return read_capped(path, limit=limit, what=what)
    except InputError as exc:
        if exc.reason == "does not exist":
            raise error(f"{what} is missing", file=path.name) from exc
        raise error(f"{what} {exc.reason}", file=path.name) from exc


def check_signature(body: bytes, raw_signature: bytes, trusted: Sequence[PublicKey]) -> None:
    """Check ``manifest.sig`` over the raw manifest bytes, before anything trusts the manifest.

    Public so that a device can verify a downloaded manifest before it fetches one payload byte.
    """
    try:
        sig_doc = load_json(raw_signature, source=SIGNATURE_NAME, max_depth=2)
        if not isinstance(sig_doc, dict):
            raise TypeError("not a JSON object")
        key_id = str(sig_doc["keyId"])
        signature = base64.b64decode(sig_doc["signature"], validate=True)
        if sig_doc.get("alg") != "ed25519":
            raise ValueError(f"algorithm {sig_doc.get('alg')!r} is not ed25519")
    except InputError as exc:
        raise SignatureError(
            f"malformed signature file ({exc.reason})", file=SIGNATURE_NAME
        ) from exc
    except (ValueError, TypeError, KeyError, binascii.Error) as exc:
        raise SignatureError(f"malformed signature file ({exc})", file=SIGNATURE_NAME) from exc
    if not trusted:
        raise SignatureError("no trusted keys were given to verify against", file=SIGNATURE_NAME)
    matching = [key for key in trusted if key.key_id == key_id]
    if not matching:
        known = ", ".join(key.key_id for key in trusted)
        raise SignatureError(
            f"signed by key {key_id}, which is not among the trusted keys ({known})",
            file=SIGNATURE_NAME,
        )
    matching[0].verify(signature, body, what=MANIFEST_NAME)


def verify_manifest(body: bytes, raw_signature: bytes, trusted: Sequence[PublicKey]) -> Manifest:
    """The manifest, once its signature has been checked over exactly these bytes."""
    check_signature(body, raw_signature, trusted)
    return Manifest.from_bytes(body)


def verify_artifact(directory: str | os.PathLike[str], trusted: Sequence[PublicKey]) -> Manifest:
    """Check signature, then every file's size and hash; raise on the first mismatch.

    Files present in the folder but absent from the manifest are refused too: an attacker must
    not be able to slip an extra file next to a genuine model.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise ArtifactError("artifact folder does not exist", file=str(folder))
    body = _read(
        folder / MANIFEST_NAME, error=ArtifactError, what="the manifest", limit=MAX_MANIFEST_BYTES
    )
    raw = _read(
        folder / SIGNATURE_NAME,
        error=SignatureError,
        what="the signature",
        limit=MAX_SIGNATURE_BYTES,
    )
    manifest = verify_manifest(body, raw, trusted)
    listed = {entry.path for entry in manifest.files}
    for entry in manifest.files:
        path = folder / entry.path
        if path.is_symlink() or not path.is_file():
            raise ArtifactError("listed in the manifest but missing", file=entry.path)
        # The size first: a listed file far bigger than signed is refused without hashing it.
        size = path.stat().st_size
        if size == entry.size:
            digest, size = hash_file(path)
        if size != entry.size:
            raise ArtifactError(
                f"size is {size} bytes, manifest says {entry.size}", file=entry.path
            )
        if digest != entry.sha256:
            raise ArtifactError(
                f"sha256 {digest[:12]}… does not match the manifest's {entry.sha256[:12]}…",
                file=entry.path,
            )
    for rel, _full in _walk(folder):
        if rel not in _RESERVED and rel not in listed:
            raise ArtifactError("present in the folder but not listed in the manifest", file=rel)
    return manifest
