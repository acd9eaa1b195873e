"""The CKKS update on the wire (``protection: he``): what holder and coordinator must agree on.

The data holder encrypts (``client/federation/he.py``) and the coordinator sums ciphertexts it
cannot read (``server/federation/he_aggregate.py``); they never import each other, so the packing
(how many values each ciphertext carries), the chunk names inside a message's ArrayRecord, the
digest that travels next to the chunks, and the key-file names live here, once. Stdlib only: a
TenSEAL context is passed in as an object, never imported.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fedge.bounded import InputError, read_capped
from fedge.errors import KeyFileError

__all__ = [
    "CHUNK_PREFIX",
    "PUBLIC_CONTEXT_FILE",
    "SECRET_CONTEXT_FILE",
    "check_ckks_context",
    "chunk_name",
    "chunk_sizes",
    "context_slots",
    "in_chunk_order",
    "read_context_file",
    "update_digest",
]

SECRET_CONTEXT_FILE = "he-secret.ctx"  # noqa: S105 - a file name: the holders' shared secret key
PUBLIC_CONTEXT_FILE = "he-public.ctx"  # parameters and scale only: what the coordinator holds
CHUNK_PREFIX = "chunk-"


def chunk_name(index: int) -> str:
    """The name of the ``index``-th ciphertext in an ArrayRecord; names sort in chunk order."""
    return f"{CHUNK_PREFIX}{index:05d}"


def in_chunk_order(names: Iterable[str]) -> list[str]:
    """Chunk names in the order the ciphertexts were cut (zero-padded, so sorting is enough)."""
    return sorted(names)


def chunk_sizes(num_values: int, slots: int) -> list[int]:
    """Values per ciphertext for an update of ``num_values`` values plus the check value."""
    full, rest = divmod(num_values + 1, slots)
    return [slots] * full + ([rest] if rest else [])


def update_digest(chunks: Sequence[bytes]) -> str:
    """SHA-256 over the chunks, each prefixed by its length (so a cut cannot move bytes across)."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(len(chunk).to_bytes(8, "big"))
        digest.update(chunk)
    return digest.hexdigest()


def context_slots(context: Any) -> int:
    """Slots per ciphertext of a TenSEAL CKKS context: half its polynomial modulus degree."""
    degree: int = context.seal_context().data.first_context_data().parms().poly_modulus_degree()
    return degree // 2


_MAX_CONTEXT_FILE = 1 << 30  # a secret CKKS context with Galois keys is tens of MB


def read_context_file(path: str | os.PathLike[str], *, what: str) -> bytes:
    """The bytes of a serialized CKKS context (``what``: "secret" or "public"); errors name it."""
    file = Path(path)
    try:
        return read_capped(file, limit=_MAX_CONTEXT_FILE, what=f"an HE {what} context")
    except InputError as exc:
        raise KeyFileError(
            f"cannot read the HE {what} context ({exc.reason})", path=str(file)
        ) from exc


def check_ckks_context(context: Any, *, source: str) -> Any:
    """``context`` if it is a CKKS context with a global scale, else why not (naming ``source``).

    Both key files (the holders' secret context, the coordinator's public one) must pass this
    before anything is encrypted or summed under them.
    """
    parms = context.seal_context().data.first_context_data().parms()
    if parms.scheme().name != "CKKS":
        raise KeyFileError(f"a {parms.scheme().name} context, fedge needs CKKS", path=source)
    try:
        context.global_scale  # noqa: B018 - raises when the context was saved without a scale
    except ValueError as exc:
        raise KeyFileError("the context has no global scale", path=source) from exc
    return context
