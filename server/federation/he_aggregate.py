"""The coordinator's side of ``protection: he``: weighted sums of CKKS ciphertexts, without a key.

The coordinator holds only the federation's *public* TenSEAL context (parameters and scale; with
public-key parameters also the public key), never the secret key, which the data holders share
among themselves (``client/federation/he.py`` says who holds what).
:func:`public_context_from_bytes` refuses a context that carries a secret key, so a misconfigured
deployment fails loudly instead of quietly letting the coordinator read updates.

Aggregation is FedAvg on ciphertexts. Each holder's ciphertexts are multiplied by its integer
sample count by doubling and adding (exact, and no rescaling, so the parameters need no level for
it) and summed; the holders decrypt and divide by the total weight the coordinator announces.
When the counts add up to more than ``max_total_weight`` (what the parameters are sized for), the
weights are scaled down to fit, each rounded down, and the announced total is the sum actually
used, so the result is FedAvg with weights exact to one part in ``max_total_weight / n_clients``.

Each holder's update is checked before anything is summed: its digest, the number of chunks,
that every chunk parses as one CKKS ciphertext of this context's parameters, level and scale, and
the number of values it holds. A holder whose update fails is left out with its error recorded,
and the round goes on while at least ``minimum`` holders remain. Everything here takes values and
returns values; reading the context file is the one I/O function.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import tenseal as ts

from fedge.errors import FederationError, KeyFileError
from fedge.he_wire import (
    check_ckks_context,
    chunk_sizes,
    context_slots,
    read_context_file,
    update_digest,
)

__all__ = [
    "MAX_TOTAL_WEIGHT",
    "AggregateResult",
    "ClientUpdate",
    "EncryptedUpdateError",
    "aggregate_encrypted",
    "integer_weights",
    "load_public_context",
    "public_context_from_bytes",
    "weighted_sum",
]

logger = logging.getLogger(__name__)

# The sum of integer weights the default parameters are sized for (client.federation.he.HeParams); a
# federation with other parameters passes its own value.
MAX_TOTAL_WEIGHT = 2**20


class EncryptedUpdateError(FederationError):
    """One holder's encrypted update is unusable; ``client`` names the holder."""

    def __init__(self, message: str, *, client: str) -> None:
        self.client = client
        self.reason = message
        super().__init__(f"encrypted update of {client}: {message}")


@dataclass(frozen=True, slots=True)
class ClientUpdate:
    """What one holder sent: its ciphertext chunks and the plaintext metadata next to them."""

    client: str
    chunks: Sequence[bytes]
    num_examples: int
    digest: str


@dataclass(frozen=True, slots=True)
class AggregateResult:
    """The encrypted weighted sum, what to announce with it, and what the round cost on the wire.

    ``total_weight`` is what the holders divide by; ``weights`` the integer weight each included
    holder got; ``rejected`` maps each left-out holder to its error (for a holder that sent two
    updates, the second; its first still counts); ``bytes_in`` counts each
    included holder's upload and ``bytes_out`` the aggregate sent back to each holder.
    """

    chunks: list[bytes]
    total_weight: int
    weights: dict[str, int]
    rejected: dict[str, EncryptedUpdateError] = field(default_factory=dict)
    bytes_in: dict[str, int] = field(default_factory=dict)
    bytes_out: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# The public context


def public_context_from_bytes(data: bytes, *, source: str = "<public context>") -> Any:
    """The coordinator's context; :class:`KeyFileError` if it is not one or holds a secret key."""
    try:
        context = ts.context_from(data)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise KeyFileError(f"not a TenSEAL context ({exc})", path=source) from exc
    if context.has_secret_key() or context.is_private():
        raise KeyFileError(
            "this HE context holds the secret key; the coordinator must get only the public "
            "context (the secret one stays with the data holders)",
            path=source,
        )
    return check_ckks_context(context, source=source)


def load_public_context(path: str | os.PathLike[str]) -> Any:
    """Read the federation's public HE context file; errors name the file."""
    data = read_context_file(path, what="public")
    return public_context_from_bytes(data, source=str(path))


# --------------------------------------------------------------------------------------------
# Pure pieces


def integer_weights(counts: Sequence[int], *, max_total: int = MAX_TOTAL_WEIGHT) -> list[int]:
    """FedAvg's weights as integers whose sum fits ``max_total``: the counts, or scaled down."""
    total = sum(counts)
    if total <= max_total:
        return list(counts)
    return [count * max_total // total for count in counts]


def _load_update(context: Any, update: ClientUpdate, sizes: Sequence[int]) -> list[Any]:
    """The holder's chunks as CKKS vectors linked to ``context``, or why they are unusable."""
    client = update.client
    if len(update.chunks) != len(sizes):
        raise EncryptedUpdateError(
            f"{len(update.chunks)} ciphertexts, {len(sizes)} expected for the model's "
            f"{sum(sizes) - 1} values",
            client=client,
        )
    if update_digest(update.chunks) != update.digest:
        raise EncryptedUpdateError(
            "the ciphertexts do not match their digest: truncated or altered on the way",
            client=client,
        )
    data_level = list(context.seal_context().data.first_parms_id())
    scale = float(context.global_scale)
    vectors: list[Any] = []
    for index, (chunk, size) in enumerate(zip(update.chunks, sizes, strict=True)):
        where = f"ciphertext {index + 1} of {len(sizes)}"
        try:
            vector = ts.ckks_vector_from(context, bytes(chunk))
            ciphertexts = vector.ciphertext()
        except (ValueError, RuntimeError, TypeError) as exc:
            raise EncryptedUpdateError(
                f"{where} is not a CKKS ciphertext for this federation's parameters ({exc})",
                client=client,
            ) from exc
        if len(ciphertexts) != 1 or vector.size() != size:
            raise EncryptedUpdateError(
                f"{where} packs {vector.size()} values in {len(ciphertexts)} ciphertexts, "
                f"{size} in one expected",
                client=client,
            )
        ciphertext = ciphertexts[0]
        if list(ciphertext.parms_id()) != data_level or ciphertext.size() != 2:
            raise EncryptedUpdateError(
                f"{where} is not a fresh ciphertext at this federation's modulus level",
                client=client,
            )
        if not math.isclose(ciphertext.scale, scale, rel_tol=1e-12):
            raise EncryptedUpdateError(
                f"{where} has scale 2**{math.log2(ciphertext.scale):.2f}, the federation's is "
                f"2**{math.log2(scale):.2f}",
                client=client,
            )
        vectors.append(vector)
    return vectors


def weighted_sum(updates: Sequence[Sequence[Any]], weights: Sequence[int]) -> list[Any]:
    """``sum(w_i * update_i)`` chunk by chunk, with integer weights, by doubling and adding.

    Horner's rule over the bits of all weights at once: per chunk, one doubling per bit of the
    largest weight plus one addition per set bit. Multiplying by an integer this way is exact and
    keeps the ciphertext's scale and level, which a plaintext multiplication in CKKS would not.
    """
    if not updates or len(updates) != len(weights) or any(w < 0 for w in weights):
        raise ValueError("weighted_sum needs one non-negative integer weight per update")
    top = max(weights).bit_length()
    sums: list[Any] = []
    for chunk_index in range(len(updates[0])):
        # ``acc`` starts as a holder's own ciphertext (TenSEAL cannot copy one without the
        # secret key); the first operation on it makes a new vector, and later ones work in place.
        acc: Any = None
        owned = False
        for bit in range(top - 1, -1, -1):
            if acc is not None:
                acc = acc.add_(acc) if owned else acc + acc
                owned = True
            for vectors, weight in zip(updates, weights, strict=True):
                if weight >> bit & 1:
                    term = vectors[chunk_index]
                    if acc is None:
                        acc = term
                    elif owned:
                        acc.add_(term)
                    else:
                        acc, owned = acc + term, True
        if acc is None:
            raise ValueError("every weight is zero")
        sums.append(acc)
    return sums


def aggregate_encrypted(
    context: Any,
    updates: Sequence[ClientUpdate],
    *,
    num_values: int,
    minimum: int,
    max_total_weight: int = MAX_TOTAL_WEIGHT,
) -> AggregateResult:
    """FedAvg of the holders' encrypted updates, leaving out those that fail their checks.

    ``context`` is the public context, ``num_values`` the number of values in the model's update
    (the same for every holder). Raises :class:`FederationError` when fewer than ``minimum``
    usable updates remain, naming every holder left out and why.
    """
    if context.has_secret_key():
        raise FederationError("refusing to aggregate with a context that holds the secret key")
    started = time.perf_counter()
    sizes = chunk_sizes(num_values, context_slots(context))
    rejected: dict[str, EncryptedUpdateError] = {}
    loaded: list[tuple[ClientUpdate, list[Any]]] = []
    for update in updates:
        try:
            if update.client in rejected or any(u.client == update.client for u, _ in loaded):
                raise EncryptedUpdateError(
                    "a second update in the same round", client=update.client
                )
            if isinstance(update.num_examples, bool) or not isinstance(update.num_examples, int):
                raise EncryptedUpdateError(
                    f"num_examples {update.num_examples!r} is not an integer", client=update.client
                )
            if update.num_examples < 1:
                raise EncryptedUpdateError(
                    f"num_examples {update.num_examples} must be at least 1", client=update.client
                )
            loaded.append((update, _load_update(context, update, sizes)))
        except EncryptedUpdateError as exc:
            logger.warning("%s", exc)
            rejected.setdefault(update.client, exc)
    if len(loaded) < max(minimum, 1):
        reasons = "; ".join(str(exc) for exc in rejected.values())
        raise FederationError(
            f"only {len(loaded)} of {len(updates)} encrypted updates are usable, the round "
            f"needs {minimum}" + (f": {reasons}" if reasons else "")
        )
    weights = integer_weights([u.num_examples for u, _ in loaded], max_total=max_total_weight)
    if sum(weights) < 1:
        raise FederationError("every holder's weight rounds to zero")
    sums = weighted_sum([vectors for _, vectors in loaded], weights)
    chunks = [bytes(vector.serialize()) for vector in sums]
    result = AggregateResult(
        chunks=chunks,
        total_weight=sum(weights),
        weights={u.client: w for (u, _), w in zip(loaded, weights, strict=True)},
        rejected=rejected,
        bytes_in={u.client: sum(len(c) for c in u.chunks) for u, _ in loaded},
        bytes_out=sum(len(c) for c in chunks),
        seconds=time.perf_counter() - started,
    )
    logger.info(
        "aggregated %d encrypted updates (%d left out): %d ciphertexts, %d bytes in, %d out",
        len(loaded),
        len(rejected),
        len(chunks),
        sum(result.bytes_in.values()),
        result.bytes_out,
    )
    return result
