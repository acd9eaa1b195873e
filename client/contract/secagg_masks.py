"""The SecAgg+ mask generator both sides must share: full-entropy seeds, a cryptographic stream.

Flower 1.41's ``pseudo_rand_gen`` folds each mask seed (32 random bytes for a holder's private
mask, a 32-byte Diffie-Hellman key for a pairwise one) into 32 bits by XOR and expands that with
NumPy's Mersenne Twister (Flower issue #7522). A 32-bit seed can be searched in full, and the
Twister's output reveals its state, so one recovered mask value can unmask a holder's update.

Here every byte of the seed goes into SHAKE-256, an extendable-output function from the standard
library (FIPS 202), and its output, read as little-endian 64-bit words, is reduced modulo the mask
range.
The reduction's bias is below ``num_range / 2**64`` (2**-32 for Flower's 2**32 range), far under
what the quantization noise of the protocol already adds. The range is Flower's exactly
(``0 .. num_range - 2``, as ``randint(0, num_range - 1)`` draws), so the masks still cancel in
Flower's modular arithmetic.

The coordinator and every holder must generate the same masks from the same seed, so this one
function is the contract; ``client/node/flower_internals.py`` and
``server/federation/flower_internals.py`` list the two places in Flower it replaces, and each
side installs it with :func:`install` before a SecAgg+ round.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["FLOWER_MASK_USERS", "install", "mask_arrays"]

_DOMAIN = b"fedge secagg mask v1\x00"  # no other use of SHAKE-256 in fedge gives these bytes

# The modules of Flower 1.41 that import pseudo_rand_gen by name and call it for masks.
FLOWER_MASK_USERS = (
    "flwr.client.mod.secure_aggregation.secaggplus_mod",
    "flwr.server.workflow.secure_aggregation.secaggplus_workflow",
)


def mask_arrays(
    seed: bytes, num_range: int, dimensions_list: list[tuple[int, ...]]
) -> list[npt.NDArray[np.int64]]:
    """Masks for arrays of the given shapes, drawn uniformly from ``0 .. num_range - 2``."""
    if not seed:
        raise ValueError("a mask seed must not be empty")
    if num_range < 2:
        raise ValueError(f"the mask range must be at least 2, got {num_range}")
    counts = [int(np.prod(shape)) if shape else 1 for shape in dimensions_list]
    total = sum(counts)
    stream = hashlib.shake_256(_DOMAIN + seed).digest(8 * total)
    words = np.frombuffer(stream, dtype="<u8")
    values = (words % np.uint64(num_range - 1)).astype(np.int64)
    output: list[npt.NDArray[np.int64]] = []
    offset = 0
    for shape, count in zip(dimensions_list, counts, strict=True):
        chunk = values[offset : offset + count]
        offset += count
        output.append(np.array(chunk[0], dtype=np.int64) if not shape else chunk.reshape(shape))
    return output


def install() -> None:
    """Make Flower's SecAgg+ code (client mod and server workflow) draw masks from here.

    Idempotent; importing Flower's modules is this function's job so that a caller cannot patch
    one side and forget the other.
    """
    import importlib

    for name in FLOWER_MASK_USERS:
        module: Any = sys.modules.get(name) or importlib.import_module(name)
        if getattr(module, "pseudo_rand_gen", None) is not mask_arrays:
            module.pseudo_rand_gen = mask_arrays
