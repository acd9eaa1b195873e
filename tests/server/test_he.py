"""``protection: he``: CKKS encryption on the holders' side, key-less FedAvg on the coordinator's.

Real TenSEAL throughout, no fakes: keys are generated per module, updates are small (a few
thousand values, a few ciphertexts) so the whole file runs in seconds. The coordinator's side is
tested at the level of its pure function; the Flower-level round lives with the federation tests.
"""

from __future__ import annotations

import math
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tenseal as ts

from client.federation import he as client_he
from client.federation.he import (
    DEFAULT_PARAMS,
    EncryptedUpdate,
    HeKeys,
    HeParams,
    check_same_parameters,
    decrypt_aggregate,
    encrypt_update,
    generate_keys,
    load_secret_context,
    secret_context_from_bytes,
    write_keys,
)
from fedge import he_wire
from fedge.errors import FederationError, KeyFileError, UsageError
from server.federation import he_aggregate as server_he
from server.federation.he_aggregate import (
    AggregateResult,
    ClientUpdate,
    EncryptedUpdateError,
    aggregate_encrypted,
    integer_weights,
    load_public_context,
    public_context_from_bytes,
    weighted_sum,
)

# A LoRA-shaped update: two adapter pairs and a classifier head (4,354 values, 3 ciphertexts).
SHAPES = [(8, 128), (128, 8), (8, 128), (128, 8), (2, 128), (2,)]
NUM_VALUES = sum(math.prod(s) for s in SHAPES)
COUNTS = [120, 3000, 45, 999]


@pytest.fixture(scope="module")
def keys() -> HeKeys:
    return generate_keys()


@pytest.fixture(scope="module")
def secret(keys: HeKeys) -> Any:
    return secret_context_from_bytes(keys.secret_context)


@pytest.fixture(scope="module")
def public(keys: HeKeys) -> Any:
    return public_context_from_bytes(keys.public_context)


def make_update(seed: int) -> list[np.ndarray]:
    """Values spread over the range LoRA deltas have, |x| from 1e-3 to 1, both signs."""
    rng = np.random.default_rng(seed)
    return [
        (rng.uniform(-1, 1, s) * 10 ** rng.uniform(-3, 0, s)).astype(np.float32) for s in SHAPES
    ]


def fedavg(updates: list[list[np.ndarray]], weights: list[int]) -> list[np.ndarray]:
    """Plaintext weighted FedAvg in float64, the reference the encrypted round must match."""
    means = []
    for k, shape in enumerate(SHAPES):
        acc = np.zeros(shape)
        for update, weight in zip(updates, weights, strict=True):
            acc += weight * update[k].astype(np.float64)
        means.append(acc / sum(weights))
    return means


def client_update(secret: Any, name: str, arrays: list[np.ndarray], n: int) -> ClientUpdate:
    enc = encrypt_update(secret, arrays)
    return ClientUpdate(name, enc.chunks, n, enc.digest)


@pytest.fixture(scope="module")
def plain_updates() -> list[list[np.ndarray]]:
    return [make_update(seed) for seed in range(len(COUNTS))]


@pytest.fixture(scope="module")
def encrypted(secret: Any, plain_updates: list[list[np.ndarray]]) -> list[ClientUpdate]:
    return [
        client_update(secret, f"holder-{i}", u, n)
        for i, (u, n) in enumerate(zip(plain_updates, COUNTS, strict=True))
    ]


def max_error(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    return max(
        float(np.max(np.abs(g.astype(np.float64) - w))) for g, w in zip(got, want, strict=True)
    )


def aggregate(public: Any, updates: list[ClientUpdate], **kwargs: Any) -> AggregateResult:
    kwargs.setdefault("minimum", 2)
    return aggregate_encrypted(public, updates, num_values=NUM_VALUES, **kwargs)


def tampered(
    update: ClientUpdate, chunks: list[bytes], *, fix_digest: bool = False
) -> ClientUpdate:
    digest = he_wire.update_digest(chunks) if fix_digest else update.digest
    return ClientUpdate(update.client, chunks, update.num_examples, digest)


# --------------------------------------------------------------------------------------------
# Keys: who holds what


def test_coordinator_context_holds_no_secret_key(
    keys: HeKeys, public: Any, encrypted: list[ClientUpdate]
) -> None:
    assert not public.is_private()
    assert not public.has_secret_key()
    with pytest.raises(ValueError, match="doesn't hold a Secret key"):
        public.secret_key()
    # Neither can the coordinator read what it aggregates.
    result = aggregate(public, encrypted)
    with pytest.raises(ValueError, match="doesn.t hold a secret_key"):
        ts.ckks_vector_from(public, result.chunks[0]).decrypt()
    with pytest.raises(ValueError, match="doesn.t hold a secret_key"):
        ts.ckks_vector_from(public, encrypted[0].chunks[0]).decrypt()
    # With symmetric encryption the public context is the parameters and scale alone.
    assert len(keys.public_context) < 1024 < len(keys.secret_context)


def test_coordinator_refuses_a_context_with_the_secret_key(keys: HeKeys, secret: Any) -> None:
    with pytest.raises(KeyFileError, match="holds the secret key"):
        public_context_from_bytes(keys.secret_context, source="he-secret.ctx")
    with pytest.raises(FederationError, match="secret key"):
        aggregate_encrypted(secret, [], num_values=NUM_VALUES, minimum=1)


def test_public_key_parameters_keep_the_coordinator_keyless() -> None:
    keys = generate_keys(HeParams(symmetric=False))
    public = public_context_from_bytes(keys.public_context)
    assert public.has_public_key() and not public.has_secret_key() and not public.is_private()
    assert not public.has_relin_keys() and not public.has_galois_keys()


def test_key_files(tmp_path: Path, keys: HeKeys) -> None:
    secret_path, public_path = tmp_path / "keys" / "he-secret.ctx", tmp_path / "he-public.ctx"
    write_keys(keys, secret_path=secret_path, public_path=public_path)
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    assert load_secret_context(secret_path).has_secret_key()
    assert not load_public_context(public_path).has_secret_key()

    with pytest.raises(KeyFileError, match=r"he-public\.ctx: this context holds no secret key"):
        load_secret_context(public_path)
    with pytest.raises(KeyFileError, match=r"he-secret\.ctx: this HE context holds the secret"):
        load_public_context(secret_path)
    garbage = tmp_path / "notes.txt"
    garbage.write_text("not a context\n")
    with pytest.raises(KeyFileError, match=r"notes\.txt: not a TenSEAL context"):
        load_secret_context(garbage)
    with pytest.raises(KeyFileError, match=r"notes\.txt: not a TenSEAL context"):
        load_public_context(garbage)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_secret_context(tmp_path / "missing.ctx")
    with pytest.raises(KeyFileError, match="cannot read"):
        load_public_context(tmp_path / "missing.ctx")


def test_a_bfv_context_is_refused() -> None:
    bfv = ts.context(ts.SCHEME_TYPE.BFV, 4096, plain_modulus=1032193)
    with pytest.raises(KeyFileError, match="BFV context"):
        secret_context_from_bytes(bfv.serialize(save_secret_key=True))


def test_secret_context_must_match_the_federation(secret: Any, keys: HeKeys) -> None:
    check_same_parameters(secret, keys.public_context)
    other = generate_keys(HeParams(scale_bits=29)).public_context
    with pytest.raises(
        UsageError, match="he-public.ctx: the HE secret context and the coordinator"
    ):
        check_same_parameters(secret, other, source="he-public.ctx")
    with pytest.raises(KeyFileError, match="not a TenSEAL context"):
        check_same_parameters(secret, b"junk")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"poly_modulus_degree": 3000}, "poly_modulus_degree 3000"),
        ({"coeff_mod_bit_sizes": (56,)}, "special prime"),
        ({"coeff_mod_bit_sizes": (61, 20)}, "17 to 60 bits"),
        ({"scale_bits": 40}, "short by 10 bits"),
        ({"max_total_weight": 2**24}, "overflow"),
        ({"max_abs": float("nan")}, "max_abs"),
        ({"max_total_weight": 0}, "at least 1"),
    ],
)
def test_params_are_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        HeParams(**kwargs)


def test_insecure_parameters_are_refused() -> None:
    with pytest.raises(UsageError, match="he parameters"):
        generate_keys(
            HeParams(poly_modulus_degree=2048, coeff_mod_bit_sizes=(50, 20), scale_bits=24)
        )


def test_client_and_coordinator_agree_on_the_wire_format() -> None:
    chunks = [b"abc", b"", b"de"]
    # One home (fedge/he_wire.py): both sides bind the same functions, not copies.
    for name in ("update_digest", "chunk_sizes", "context_slots"):
        assert vars(client_he)[name] is vars(he_wire)[name] is vars(server_he)[name], name
    assert he_wire.update_digest(chunks) == he_wire.update_digest(list(chunks))
    assert he_wire.update_digest([b"ab", b"c"]) != he_wire.update_digest([b"a", b"bc"])
    for n in (0, 2046, 2047, 2048, 5378):
        sizes = he_wire.chunk_sizes(n, 2048)
        assert sum(sizes) == n + 1
        assert all(size == 2048 for size in sizes[:-1]) and 0 < sizes[-1] <= 2048
    names = [he_wire.chunk_name(i) for i in (11, 2, 100, 0)]
    assert he_wire.in_chunk_order(names) == [he_wire.chunk_name(i) for i in (0, 2, 11, 100)]
    assert DEFAULT_PARAMS.max_total_weight == server_he.MAX_TOTAL_WEIGHT


# --------------------------------------------------------------------------------------------
# The aggregate equals plaintext FedAvg


def test_aggregate_equals_plaintext_fedavg(
    public: Any, secret: Any, encrypted: list[ClientUpdate], plain_updates: list[list[np.ndarray]]
) -> None:
    result = aggregate(public, encrypted, minimum=len(encrypted))
    assert result.total_weight == sum(COUNTS) and not result.rejected
    assert len(result.chunks) == 3
    got = decrypt_aggregate(secret, result.chunks, SHAPES, result.total_weight)
    want = fedavg(plain_updates, COUNTS)
    assert [g.shape for g in got] == SHAPES and all(g.dtype == np.float32 for g in got)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-3)
    # The precision the chosen parameters keep, well inside the 1e-3 the issue asks for.
    assert max_error(got, want) < 5e-6
    # Bytes on the wire per float32 slot, uplink and downlink (the last ciphertext is partly empty).
    slots = len(result.chunks) * DEFAULT_PARAMS.slots
    ratio_in = result.bytes_in["holder-0"] / (4 * slots)
    assert ratio_in == pytest.approx(result.bytes_out / (4 * slots), rel=0.01)
    assert ratio_in < 8.0
    assert (
        result.bytes_in["holder-0"]
        == EncryptedUpdate(tuple(encrypted[0].chunks), NUM_VALUES, encrypted[0].digest).nbytes
    )


def test_full_ciphertexts_cost_under_eight_times_float32(secret: Any) -> None:
    values = np.linspace(-1, 1, 4 * DEFAULT_PARAMS.slots - 1)
    enc = encrypt_update(secret, [values])
    assert len(enc.chunks) == 4 and enc.num_values == values.size
    assert enc.nbytes / (4 * values.size) < 8.0


def test_public_key_encryption_aggregates_too(plain_updates: list[list[np.ndarray]]) -> None:
    keys = generate_keys(HeParams(symmetric=False))
    secret = secret_context_from_bytes(keys.secret_context)
    public = public_context_from_bytes(keys.public_context)
    updates = [
        client_update(secret, f"h{i}", u, n)
        for i, (u, n) in enumerate(zip(plain_updates[:2], COUNTS[:2], strict=True))
    ]
    result = aggregate(public, updates)
    got = decrypt_aggregate(secret, result.chunks, SHAPES, result.total_weight)
    assert max_error(got, fedavg(plain_updates[:2], COUNTS[:2])) < 1e-4


def test_weights_beyond_the_budget_are_scaled_down(
    public: Any, secret: Any, encrypted: list[ClientUpdate], plain_updates: list[list[np.ndarray]]
) -> None:
    assert integer_weights([3000, 1000, 500], max_total=1000) == [666, 222, 111]
    assert integer_weights([3, 1], max_total=1000) == [3, 1]
    result = aggregate(public, encrypted, max_total_weight=1000)
    weights = list(result.weights.values())
    assert weights == integer_weights(COUNTS, max_total=1000) and result.total_weight == sum(
        weights
    )
    got = decrypt_aggregate(secret, result.chunks, SHAPES, result.total_weight)
    assert max_error(got, fedavg(plain_updates, weights)) < 5e-6
    assert max_error(got, fedavg(plain_updates, COUNTS)) < 1e-2  # FedAvg up to weight rounding


def test_weighted_sum_leaves_the_inputs_alone(public: Any, secret: Any) -> None:
    values = [np.full(4, v) for v in (1.0, 2.0, 3.0)]
    vectors = [
        [ts.ckks_vector_from(public, ts.ckks_vector(secret, v.tolist()).serialize())]
        for v in values
    ]
    for weights in ([1, 0, 0], [1, 2, 3], [5, 0, 1]):
        (total,) = weighted_sum(vectors, weights)
        total.link_context(secret)
        want = sum(w * v for w, v in zip(weights, values, strict=True))
        np.testing.assert_allclose(total.decrypt(), want, atol=1e-5)
    for (vector,), v in zip(vectors, values, strict=True):
        vector.link_context(secret)
        np.testing.assert_allclose(vector.decrypt(), v, atol=1e-6)
    with pytest.raises(ValueError, match="every weight is zero"):
        weighted_sum(vectors, [0, 0, 0])


# --------------------------------------------------------------------------------------------
# A bad update costs its holder the round, not the round itself


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda c: [c[0][:-100], *c[1:]], "do not match their digest"),
        (lambda c: [c[0][:5000] + bytes([c[0][5000] ^ 1]) + c[0][5001:], *c[1:]], "digest"),
        (lambda c: c[:-1], "2 ciphertexts, 3 expected"),
        (lambda c: [*c, c[-1]], "4 ciphertexts, 3 expected"),
    ],
    ids=["truncated", "bit-flip", "chunk-missing", "chunk-extra"],
)
def test_a_damaged_update_is_left_out(
    public: Any,
    secret: Any,
    encrypted: list[ClientUpdate],
    plain_updates: list[list[np.ndarray]],
    damage: Any,
    message: str,
) -> None:
    updates = list(encrypted)
    updates[1] = tampered(updates[1], damage(list(updates[1].chunks)))
    result = aggregate(public, updates, minimum=3)
    assert set(result.rejected) == {"holder-1"}
    error = result.rejected["holder-1"]
    assert isinstance(error, EncryptedUpdateError) and error.client == "holder-1"
    assert message in str(error) and str(error).startswith("encrypted update of holder-1: ")
    assert "holder-1" not in result.weights and result.total_weight == sum(COUNTS) - COUNTS[1]
    got = decrypt_aggregate(secret, result.chunks, SHAPES, result.total_weight)
    others = [0, 2, 3]
    want = fedavg([plain_updates[i] for i in others], [COUNTS[i] for i in others])
    assert max_error(got, want) < 5e-6


def foreign_chunk(params: HeParams, size: int) -> bytes:
    context = secret_context_from_bytes(generate_keys(params).secret_context)
    return bytes(ts.ckks_vector(context, [0.5] * size).serialize())


@pytest.mark.parametrize(
    ("make_chunk", "message"),
    [
        (lambda size: b"\x00garbage" * 100, "ciphertext 3 of 3 is not a CKKS ciphertext"),
        (lambda size: b"", "packs 0 values in 0 ciphertexts"),
        (
            lambda size: foreign_chunk(HeParams(poly_modulus_degree=8192), size),
            "is not a CKKS ciphertext for this federation's parameters",
        ),
        (
            lambda size: foreign_chunk(HeParams(coeff_mod_bit_sizes=(55, 20), scale_bits=29), size),
            "is not a CKKS ciphertext for this federation's parameters",
        ),
        (lambda size: foreign_chunk(HeParams(scale_bits=28), size), "has scale 2**28.00"),
        (lambda size: foreign_chunk(DEFAULT_PARAMS, size - 1), "packs 258 values"),
    ],
    ids=["garbage", "empty", "other-degree", "other-primes", "other-scale", "wrong-size"],
)
def test_a_ciphertext_that_does_not_fit_is_left_out(
    public: Any, encrypted: list[ClientUpdate], make_chunk: Any, message: str
) -> None:
    updates = list(encrypted)
    chunks = list(updates[2].chunks)
    last_size = NUM_VALUES + 1 - 2 * DEFAULT_PARAMS.slots
    chunks[-1] = make_chunk(last_size)
    # The digest is right: the sender itself made a bad ciphertext, so only parsing can tell.
    updates[2] = tampered(updates[2], chunks, fix_digest=True)
    result = aggregate(public, updates, minimum=3)
    assert list(result.rejected) == ["holder-2"]
    assert message in str(result.rejected["holder-2"])


def test_bad_sample_counts_are_left_out(public: Any, encrypted: list[ClientUpdate]) -> None:
    first, second, *rest = encrypted
    updates = [
        ClientUpdate(first.client, first.chunks, 0, first.digest),
        ClientUpdate(second.client, second.chunks, 2.5, second.digest),  # type: ignore[arg-type]
        *rest,
    ]
    result = aggregate(public, updates)
    assert set(result.rejected) == {"holder-0", "holder-1"}
    assert "at least 1" in str(result.rejected["holder-0"])
    assert "not an integer" in str(result.rejected["holder-1"])


def test_a_second_update_from_one_holder_is_left_out(
    public: Any, encrypted: list[ClientUpdate]
) -> None:
    result = aggregate(public, [*encrypted, encrypted[1]])
    assert list(result.rejected) == ["holder-1"] and "a second update" in str(
        result.rejected["holder-1"]
    )
    assert result.total_weight == sum(COUNTS)


def test_the_round_fails_below_the_minimum(public: Any, encrypted: list[ClientUpdate]) -> None:
    updates = list(encrypted)
    updates[0] = tampered(updates[0], [updates[0].chunks[0][:10], *updates[0].chunks[1:]])
    updates[3] = tampered(updates[3], list(updates[3].chunks[:1]))
    with pytest.raises(
        FederationError, match=r"only 2 of 4 encrypted updates are usable, the round needs 3"
    ) as info:
        aggregate(public, updates, minimum=3)
    assert "holder-0" in str(info.value) and "holder-3" in str(info.value)
    assert not isinstance(info.value, EncryptedUpdateError)


# --------------------------------------------------------------------------------------------
# The holder's side: what it refuses to encrypt or to believe


def test_encrypt_refuses_values_out_of_range(secret: Any) -> None:
    with pytest.raises(FederationError, match="exceeds the HE range max_abs 8"):
        encrypt_update(secret, [np.array([0.1, -9.0])])
    with pytest.raises(FederationError, match="NaN or infinite"):
        encrypt_update(secret, [np.array([0.1, np.nan])])
    assert encrypt_update(secret, [np.array([50.0])], max_abs=64).num_values == 1


def test_encrypting_needs_a_key(public: Any) -> None:
    with pytest.raises(FederationError, match="cannot encrypt"):
        encrypt_update(public, [np.zeros(3)])


def test_decrypt_checks_the_aggregate(
    public: Any, secret: Any, encrypted: list[ClientUpdate], plain_updates: list[list[np.ndarray]]
) -> None:
    result = aggregate(public, encrypted)
    with pytest.raises(FederationError, match="not the announced total weight 4163"):
        decrypt_aggregate(secret, result.chunks, SHAPES, result.total_weight - 1)
    with pytest.raises(FederationError, match="2 ciphertexts, 3 expected"):
        decrypt_aggregate(secret, result.chunks[:2], SHAPES, result.total_weight)
    with pytest.raises(FederationError, match="ciphertext 2 of 3 cannot be decrypted"):
        decrypt_aggregate(
            secret, [result.chunks[0], b"junk", result.chunks[2]], SHAPES, result.total_weight
        )
    with pytest.raises(FederationError, match="needs the secret context"):
        decrypt_aggregate(public, result.chunks, SHAPES, result.total_weight)
    # A holder who encrypted under another key spoils the sum; the check value tells.
    stranger = secret_context_from_bytes(generate_keys().secret_context)
    updates = [*encrypted[:2], client_update(stranger, "stranger", plain_updates[2], 10)]
    spoiled = aggregate(public, updates)
    with pytest.raises(FederationError, match="another key"):
        decrypt_aggregate(secret, spoiled.chunks, SHAPES, spoiled.total_weight)
