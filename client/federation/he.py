"""Homomorphic encryption of a data holder's update (TenSEAL CKKS), the ``protection: he`` mode.

Who holds which key
-------------------
* **The data holders** of a federation share one CKKS secret key. One of them, the *key
  custodian*, runs :func:`generate_keys` and :func:`write_keys`: the *secret context* (parameters
  and secret key, file mode 0600 from the first byte) goes to every other data holder out of band,
  like any shared secret; it never goes to the coordinator. Each holder encrypts its own update
  with it and decrypts the new global update with it.
* **The coordinator** gets only the *public context*: the encryption parameters and the scale, no
  secret key, and none of the relinearization or Galois keys (a weighted sum needs neither). It
  hands the public context to enrolling holders, who can check with
  :func:`check_same_parameters` that their secret context belongs to this federation. With the
  default symmetric encryption the public context holds no public key either, so the coordinator
  cannot even encrypt a value of its own; it can only add the holders' ciphertexts
  (``server/federation/he_aggregate.py``).

What it protects, and what it does not: the coordinator sees ciphertexts, sample counts and
sizes, never an update or the aggregate. Any data holder can decrypt any ciphertext made under the
shared key, so a coordinator colluding with one holder learns every individual update; the
per-client DP noise each holder adds before encrypting bounds what leaks then, exactly as it
bounds what the global model reveals. HE adds confidentiality, not integrity: a coordinator can
still drop or scale contributions, a holder can spoil the sum with wild values as it can spoil
plain FedAvg, and the check value described below only catches a wrong key or a wrong total
weight.

It composes with the per-client DP unchanged: each holder clips and noises its update (Opacus,
its own ledger) before encrypting, and the decrypted aggregate equals plaintext FedAvg of the
noised updates to within the CKKS precision below, so the privacy accounting is the same.

CKKS decryptions carry the encryption noise, which reveals information about the secret key (Li
and Micciancio, 2021): hand a decrypted aggregate to a party without the key only after rounding
it well above the noise (about 1e-6 with the defaults).

The arithmetic, and why these parameters
----------------------------------------
FedAvg weights are sample counts, so the coordinator multiplies each ciphertext by an *integer*
weight (by doubling and adding: exact, and it consumes no modulus level) and the holders divide by
the total weight after decrypting. No rescaling happens, so the ciphertexts need one data prime,
and SEAL's second ("special") prime never travels with a ciphertext. Each serialized ciphertext
then costs about ``data bits / 8`` times the float32 bytes of the values it carries: 7.6x with
the default 56-bit prime, against about 20x for TenSEAL's tutorial parameters (four primes), whose
rescaling budget a weighted sum does not need. The prime must hold ``max_total_weight * max_abs *
scale`` with room for the sign and the noise (:meth:`HeParams.headroom_bits`), which fixes the
scale at 2**30 and so the precision: the aggregate is within about 3e-7 of plaintext FedAvg
(absolute, for values up to 1; ``bench/protected_aggregation.py`` measures it).
Symmetric (secret-key) encryption adds about ten times less noise than public-key encryption at
the same size, and every encrypting party holds the secret key anyway.

Packing and the check value
---------------------------
All arrays of an update are flattened into one float vector, a check value ``1.0`` is appended,
and the vector is cut into ``poly_modulus_degree / 2`` slot chunks, one ciphertext each, so only
the last ciphertext is partly empty. After aggregation the check value decrypts to the total
weight; :func:`decrypt_aggregate` compares it with the total the coordinator announced and refuses
an aggregate that does not match (a holder that encrypted under another key, a wrong total).

The plaintext metadata travelling next to the ciphertexts is the number of values and a SHA-256
digest of the chunks (:attr:`EncryptedUpdate.digest`). The digest lets the coordinator refuse a
truncated or altered update clearly instead of summing garbage; it is no signature (whoever can
alter the ciphertext in transit can recompute it; TLS and SuperNode authentication cover that).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import tenseal as ts

from fedge.atomic import atomic_write_bytes
from fedge.errors import FederationError, KeyFileError, UsageError
from fedge.he_wire import (
    check_ckks_context,
    chunk_sizes,
    context_slots,
    read_context_file,
    update_digest,
)

__all__ = [
    "CHECK_TOLERANCE",
    "DEFAULT_PARAMS",
    "EncryptedUpdate",
    "HeKeys",
    "HeParams",
    "check_same_parameters",
    "decrypt_aggregate",
    "encrypt_update",
    "generate_keys",
    "load_secret_context",
    "secret_context_from_bytes",
    "write_keys",
]

logger = logging.getLogger(__name__)

# Relative tolerance of the check value (it decrypts to the total weight, with noise ~1e-7).
CHECK_TOLERANCE = 1e-4
_MAX_PRIME_BITS = 60  # SEAL's limit for one prime
_SLOT_ALIGNED_DEGREES = (2048, 4096, 8192, 16384, 32768)


@dataclass(frozen=True, slots=True)
class HeParams:
    """CKKS parameters of a federation, and the value range they are sized for.

    ``coeff_mod_bit_sizes`` lists the data primes then SEAL's special prime; a ciphertext carries
    only the data primes. ``max_abs`` bounds every value of an update (a holder refuses to encrypt
    a larger one: it would wrap around in the sum) and ``max_total_weight`` the sum of the integer
    weights; beyond it the coordinator scales the weights down
    (``server/federation/he_aggregate.py``).
    """

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (56, 20)
    scale_bits: int = 30
    max_abs: float = 8.0
    max_total_weight: int = 2**20
    symmetric: bool = True

    def __post_init__(self) -> None:
        if self.poly_modulus_degree not in _SLOT_ALIGNED_DEGREES:
            raise UsageError(
                f"he poly_modulus_degree {self.poly_modulus_degree} must be one of "
                f"{', '.join(map(str, _SLOT_ALIGNED_DEGREES))}"
            )
        bits = self.coeff_mod_bit_sizes
        if len(bits) < 2 or any(not 17 <= b <= _MAX_PRIME_BITS for b in bits):
            raise UsageError(
                f"he coeff_mod_bit_sizes {list(bits)}: need a data prime and a special prime, "
                f"each of 17 to {_MAX_PRIME_BITS} bits"
            )
        if not 10 <= self.scale_bits < self.data_bits:
            raise UsageError(f"he scale_bits {self.scale_bits} must be in 10..{self.data_bits - 1}")
        if not (math.isfinite(self.max_abs) and self.max_abs > 0):
            raise UsageError(f"he max_abs {self.max_abs} must be a positive number")
        if self.max_total_weight < 1:
            raise UsageError(f"he max_total_weight {self.max_total_weight} must be at least 1")
        if self.headroom_bits() < 0:
            raise UsageError(
                f"he parameters overflow: {self.data_bits} data bits cannot hold "
                f"max_total_weight {self.max_total_weight} x max_abs {self.max_abs} at scale "
                f"2**{self.scale_bits} (short by {-self.headroom_bits()} bits); lower scale_bits"
            )

    @property
    def data_bits(self) -> int:
        """Bits of the modulus a ciphertext is kept at (every prime but the special one)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    def headroom_bits(self) -> int:
        """Spare bits once the largest possible weighted sum is encoded.

        A ``b``-bit prime ``q`` is at least ``2**(b-1)`` and CKKS values live in ``(-q/2, q/2)``,
        so a sum needs ``log2(max_total_weight * max_abs) + scale_bits`` bits plus two; one more
        keeps the encryption noise and the weights' rounding clear of the edge.
        """
        value_bits = math.ceil(math.log2(self.max_total_weight * self.max_abs))
        return self.data_bits - (value_bits + self.scale_bits + 3)


DEFAULT_PARAMS = HeParams()


@dataclass(frozen=True, slots=True)
class HeKeys:
    """What the key custodian makes: the secret context (for data holders) and the public one."""

    secret_context: bytes
    public_context: bytes


@dataclass(frozen=True, slots=True)
class EncryptedUpdate:
    """One holder's encrypted update: ciphertext chunks plus the plaintext metadata that goes along.

    ``num_values`` counts the update's values (without the check value), ``digest`` is
    ``fedge.he_wire.update_digest`` of ``chunks``; ``nbytes`` is what the chunks put on the wire.
    """

    chunks: tuple[bytes, ...]
    num_values: int
    digest: str

    @property
    def nbytes(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)


# --------------------------------------------------------------------------------------------
# Keys


def _new_context(params: HeParams) -> Any:
    encryption = ts.ENCRYPTION_TYPE.SYMMETRIC if params.symmetric else ts.ENCRYPTION_TYPE.ASYMMETRIC
    try:
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
            encryption_type=encryption,
        )
    except ValueError as exc:  # SEAL refuses parameters below 128-bit security
        raise UsageError(f"he parameters {params}: {exc}") from exc
    context.global_scale = float(2**params.scale_bits)
    return context


def generate_keys(params: HeParams = DEFAULT_PARAMS) -> HeKeys:
    """A fresh key for a federation: the secret context and the coordinator's public context."""
    context = _new_context(params)
    secret = context.serialize(
        save_public_key=not params.symmetric,
        save_secret_key=True,
        save_galois_keys=False,
        save_relin_keys=False,
    )
    if not params.symmetric:
        context.make_context_public(generate_galois_keys=False, generate_relin_keys=False)
    public = context.serialize(
        save_public_key=not params.symmetric,
        save_secret_key=False,
        save_galois_keys=False,
        save_relin_keys=False,
    )
    logger.info(
        "generated a CKKS key: degree %d, primes %s, scale 2**%d, %s encryption",
        params.poly_modulus_degree,
        list(params.coeff_mod_bit_sizes),
        params.scale_bits,
        "symmetric" if params.symmetric else "public-key",
    )
    return HeKeys(secret_context=bytes(secret), public_context=bytes(public))


def write_keys(
    keys: HeKeys, *, secret_path: str | os.PathLike[str], public_path: str | os.PathLike[str]
) -> None:
    """Write both contexts atomically; the secret one is mode 0600 from its first byte."""
    atomic_write_bytes(secret_path, keys.secret_context, mode=0o600)
    atomic_write_bytes(public_path, keys.public_context, mode=0o644)


def _parse_context(data: bytes, source: str) -> Any:
    try:
        context = ts.context_from(data)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise KeyFileError(f"not a TenSEAL context ({exc})", path=source) from exc
    return check_ckks_context(context, source=source)


def secret_context_from_bytes(data: bytes, *, source: str = "<secret context>") -> Any:
    """The data holder's context; :class:`KeyFileError` unless it holds the secret key."""
    context = _parse_context(data, source)
    if not context.has_secret_key():
        raise KeyFileError(
            "this context holds no secret key (it is the public context); data holders need "
            "the secret context from the federation's key custodian",
            path=source,
        )
    return context


def load_secret_context(path: str | os.PathLike[str]) -> Any:
    """Read the secret context file; errors name the file."""
    data = read_context_file(path, what="secret")
    return secret_context_from_bytes(data, source=str(path))


def _fingerprint(context: Any) -> tuple[tuple[int, ...], float]:
    seal = context.seal_context().data
    return tuple(seal.first_parms_id()), float(context.global_scale)


def check_same_parameters(
    secret_context: Any, public_context: bytes, *, source: str = "<public context>"
) -> None:
    """Refuse a secret context made for another federation than the coordinator's public one.

    ``public_context`` is the file the coordinator handed out at enrollment (its bytes). SEAL's
    parameter id hashes the degree and every prime; the scale must match too, or the
    coordinator's sums would not decode. Two keys made with the same parameters pass: only the
    check value of the first aggregate tells them apart.
    """
    public = _parse_context(public_context, source)
    if _fingerprint(secret_context) != _fingerprint(public):
        raise UsageError(
            f"{source}: the HE secret context and the coordinator's public context have "
            "different parameters: they belong to different federations or key generations"
        )


# --------------------------------------------------------------------------------------------
# Encryption


def _flatten(arrays: Sequence[npt.ArrayLike], max_abs: float) -> npt.NDArray[np.float64]:
    parts = [np.asarray(a, dtype=np.float64).ravel() for a in arrays]
    flat = np.concatenate([*parts, np.ones(1)]) if parts else np.ones(1)
    values = flat[:-1]
    if values.size and not np.all(np.isfinite(values)):
        raise FederationError("the update holds NaN or infinite values; nothing was encrypted")
    largest = float(np.max(np.abs(values))) if values.size else 0.0
    if largest > max_abs:
        raise FederationError(
            f"an update value of magnitude {largest:.4g} exceeds the HE range max_abs "
            f"{max_abs:g}; it would wrap around in the encrypted sum (raise max_abs in the "
            "federation's HE parameters, or send deltas instead of weights)"
        )
    return flat


def encrypt_update(
    context: Any, arrays: Sequence[npt.ArrayLike], *, max_abs: float = DEFAULT_PARAMS.max_abs
) -> EncryptedUpdate:
    """Encrypt ``arrays`` (the adapter and head update) into as few CKKS ciphertexts as fit.

    ``context`` is the secret context (or, with public-key parameters, any context holding the
    public key). Values beyond ``max_abs`` are refused rather than clipped: clipping belongs to
    DP, whose accounting must know about it.
    """
    flat = _flatten(arrays, max_abs)
    slots = context_slots(context)
    chunks: list[bytes] = []
    start = 0
    try:
        for size in chunk_sizes(flat.size - 1, slots):
            vector = ts.ckks_vector(context, flat[start : start + size].tolist())
            chunks.append(bytes(vector.serialize()))
            start += size
    except ValueError as exc:  # e.g. a public context without a public key
        raise FederationError(f"cannot encrypt the update with this HE context: {exc}") from exc
    logger.debug("encrypted %d values into %d ciphertexts", flat.size - 1, len(chunks))
    return EncryptedUpdate(tuple(chunks), flat.size - 1, update_digest(chunks))


def decrypt_aggregate(
    context: Any,
    chunks: Sequence[bytes],
    shapes: Sequence[Sequence[int]],
    total_weight: int,
    *,
    dtype: npt.DTypeLike = np.float32,
) -> list[npt.NDArray[Any]]:
    """Decrypt the coordinator's weighted sum and divide by ``total_weight``: the new FedAvg update.

    ``shapes`` are the update's array shapes (the model's, known to every holder) and
    ``total_weight`` the sum of the integer weights the coordinator announces. The check value
    must decrypt to that total, or :class:`FederationError` says the aggregate cannot be trusted.
    """
    if total_weight < 1:
        raise FederationError(f"the coordinator announced a total weight of {total_weight}")
    if not context.has_secret_key():
        raise FederationError("decrypting needs the secret context; this one is public")
    num_values = sum(math.prod(shape) for shape in shapes)
    expected = chunk_sizes(num_values, context_slots(context))
    if len(chunks) != len(expected):
        raise FederationError(
            f"the encrypted aggregate has {len(chunks)} ciphertexts, {len(expected)} expected for "
            f"{num_values} values"
        )
    parts: list[list[float]] = []
    for index, (chunk, size) in enumerate(zip(chunks, expected, strict=True)):
        try:
            vector = ts.ckks_vector_from(context, chunk)
            if vector.size() != size:
                raise ValueError(f"it holds {vector.size()} values, {size} expected")
            parts.append(vector.decrypt())
        except (ValueError, RuntimeError) as exc:
            raise FederationError(
                f"aggregate ciphertext {index + 1} of {len(chunks)} cannot be decrypted: {exc}"
            ) from exc
    flat = np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])
    check = float(flat[-1])
    if not abs(check - total_weight) <= CHECK_TOLERANCE * total_weight:
        raise FederationError(
            f"the encrypted aggregate's check value decrypts to {check:.6g}, not the announced "
            f"total weight {total_weight}: it was made under another key, with other weights, "
            "or altered"
        )
    mean = flat[:-1] / total_weight
    arrays: list[npt.NDArray[Any]] = []
    start = 0
    for shape in shapes:
        count = math.prod(shape)
        arrays.append(mean[start : start + count].reshape(tuple(shape)).astype(dtype))
        start += count
    return arrays
