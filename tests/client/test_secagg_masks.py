"""SecAgg+ masks from full-entropy seeds (Flower issue #7522), checked against Flower's own.

Flower's generator folds a seed to 32 bits: two different 32-byte seeds whose 4-byte words XOR to
the same value give the same masks, and every mask comes from one of 2**32 Mersenne Twister
states. fedge's generator must use the whole seed, stay inside Flower's range (so masks still
cancel in its modular sum), and be what both of Flower's SecAgg+ modules call once installed.
End-to-end rounds with masks that cancel are in tests/server/test_secagg.py.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen as flower_gen

from client.contract.secagg_masks import FLOWER_MASK_USERS, install, mask_arrays

RANGE = 1 << 32
SHAPES = [(3, 4), (), (1000,)]


def folded_twins() -> tuple[bytes, bytes]:
    """Two different seeds that Flower's 32-bit XOR fold maps to the same Twister seed."""
    first = bytes(32)
    word = b"\x01\x02\x03\x04"
    second = word + word + bytes(24)  # word ^ word == 0, like the all-zero seed
    return first, second


def test_flowers_generator_collides_on_folded_seeds_and_fedges_does_not() -> None:
    first, second = folded_twins()
    assert first != second
    flower = [flower_gen(seed, RANGE, SHAPES) for seed in (first, second)]
    assert all(np.array_equal(a, b) for a, b in zip(*flower, strict=True))  # the defect
    ours = [mask_arrays(seed, RANGE, SHAPES) for seed in (first, second)]
    assert not np.array_equal(ours[0][2], ours[1][2])


def test_masks_are_deterministic_shaped_and_in_flowers_range() -> None:
    seed = bytes(range(32))
    a, b = mask_arrays(seed, RANGE, SHAPES), mask_arrays(seed, RANGE, SHAPES)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert [x.shape for x in a] == SHAPES
    assert all(x.dtype == np.int64 for x in a)
    values = np.concatenate([x.ravel() for x in a])
    assert values.min() >= 0 and values.max() <= RANGE - 2


def test_masks_look_uniform() -> None:
    values = mask_arrays(b"\x07" * 32, 16, [(160_000,)])[0]
    counts = np.bincount(values, minlength=16)
    assert counts[15] == 0  # Flower's range stops at num_range - 2
    expected = values.size / 15
    chi2 = float(((counts[:15] - expected) ** 2 / expected).sum())
    assert chi2 < 50, chi2  # 14 degrees of freedom: p < 1e-5 beyond ~45


def test_one_bit_of_seed_changes_every_mask() -> None:
    seed = bytearray(32)
    base = mask_arrays(bytes(seed), RANGE, [(256,)])[0]
    seed[31] ^= 0x80
    flipped = mask_arrays(bytes(seed), RANGE, [(256,)])[0]
    assert (base != flipped).mean() > 0.99


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        mask_arrays(b"", RANGE, SHAPES)
    with pytest.raises(ValueError, match="at least 2"):
        mask_arrays(b"1234", 1, SHAPES)


def test_install_replaces_the_generator_in_both_of_flowers_modules() -> None:
    install()
    install()  # idempotent
    for name in FLOWER_MASK_USERS:
        assert importlib.import_module(name).pseudo_rand_gen is mask_arrays
    # fedge's SecAgg+ modules install it on import, on each side
    import client.federation.secagg  # noqa: F401
    import server.federation.secagg  # noqa: F401

    assert importlib.import_module(FLOWER_MASK_USERS[0]).pseudo_rand_gen is mask_arrays
