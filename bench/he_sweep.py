"""The CKKS parameter sweep of ``protected_aggregation.py``: bytes per value and precision kept.

One job: on a 16,383-value update (full ciphertexts at every degree), encrypt, sum and decrypt
with the textbook layout (TenSEAL's tutorial parameters, fractional weights by plaintext
multiplication and rescaling) and with fedge's (integer weights, one data prime) at several
parameter sets, and record each one's bytes per float32 value and errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from aggregation_workload import Workload, make_workload
from he_round import he_setup


@dataclass
class SweepRow:
    layout: str
    degree: int
    primes: list[int]
    scale_bits: int
    encryption: str
    up_x_f32: float
    down_x_f32: float
    raw_x_f32: float  # the same ciphertext without SEAL's compression
    max_err: float
    rel_err_max: float  # max error over the largest |FedAvg| value
    rel_err_small: float  # worst relative error among values with |FedAvg| >= 1e-3
    chosen: bool = False


def _errors(
    got: npt.NDArray[np.float64], ref: npt.NDArray[np.float64]
) -> tuple[float, float, float]:
    err = np.abs(got - ref)
    big = np.abs(ref) >= 1e-3
    return (
        float(err.max()),
        float(err.max() / np.abs(ref).max()),
        float(np.max(err[big] / np.abs(ref[big]))),
    )


def sweep_textbook(work: Workload, degree: int, primes: list[int], scale_bits: int) -> SweepRow:
    """The usual CKKS weighted sum: multiply by n_i / sum(n) in plaintext, rescale, add."""
    import tenseal as ts

    context = ts.context(ts.SCHEME_TYPE.CKKS, degree, coeff_mod_bit_sizes=primes)
    context.global_scale = float(2**scale_bits)
    slots = degree // 2
    total = sum(work.counts)
    ups, acc = 0, None
    for update, count in zip(work.updates, work.counts, strict=True):
        blobs = [
            ts.ckks_vector(context, update[i : i + slots].tolist()).serialize()
            for i in range(0, update.size, slots)
        ]
        ups = sum(len(b) for b in blobs)
        vectors = [ts.ckks_vector_from(context, b) * (count / total) for b in blobs]
        acc = vectors if acc is None else [a + v for a, v in zip(acc, vectors, strict=True)]
    assert acc is not None
    downs = [v.serialize() for v in acc]
    got = np.concatenate([np.asarray(ts.ckks_vector_from(context, d).decrypt()) for d in downs])
    size = 4 * work.reference.size
    err = _errors(got, work.reference)
    return SweepRow(
        "textbook",
        degree,
        primes,
        scale_bits,
        "public-key",
        ups / size,
        sum(len(d) for d in downs) / size,
        8 * (len(primes) - 1),
        *err,
    )


def sweep_fedge(work: Workload, params: Any, chosen: bool) -> SweepRow:
    from client.federation.he import decrypt_aggregate, encrypt_update
    from server.federation.he_aggregate import ClientUpdate, aggregate_encrypted

    he = he_setup(params)
    sent = []
    for index, (update, count) in enumerate(zip(work.updates, work.counts, strict=True)):
        enc = encrypt_update(he.secret, [update], max_abs=params.max_abs)
        sent.append(ClientUpdate(f"h{index}", enc.chunks, count, enc.digest))
    # Full ciphertexts: the update plus the check value fill every slot at every degree.
    size = work.reference.size
    result = aggregate_encrypted(he.public, sent, num_values=size, minimum=len(sent))
    (got,) = decrypt_aggregate(
        he.secret, result.chunks, [(size,)], result.total_weight, dtype=np.float64
    )
    values = 4 * (size + 1)
    return SweepRow(
        "fedge",
        params.poly_modulus_degree,
        list(params.coeff_mod_bit_sizes),
        params.scale_bits,
        "symmetric" if params.symmetric else "public-key",
        sum(len(c) for c in sent[0].chunks) / values,
        result.bytes_out / values,
        8 * (len(params.coeff_mod_bit_sizes) - 1),
        *_errors(got, work.reference),
        chosen=chosen,
    )


def sweep(clients: int, seed: int, log: Callable[[str], None]) -> list[SweepRow]:
    from client.federation.he import DEFAULT_PARAMS, HeParams

    work = make_workload(16_383, clients, seed)
    rows = []
    for degree, primes, scale in [
        (8192, [60, 40, 40, 60], 40),  # TenSEAL's tutorial parameters
        (8192, [60, 40, 60], 40),
        (4096, [40, 21, 40], 21),
        (4096, [30, 25, 30], 25),
    ]:
        rows.append(sweep_textbook(work, degree, primes, scale))
        log(f"sweep: textbook {degree} {primes}")
    variants: list[dict[str, Any]] = [
        {},
        {"symmetric": False},
        {"coeff_mod_bit_sizes": (60, 20), "scale_bits": 34},
        {"coeff_mod_bit_sizes": (52, 20), "scale_bits": 26},
        {"coeff_mod_bit_sizes": (48, 20), "scale_bits": 22},
        {"poly_modulus_degree": 8192},
    ]
    for kwargs in variants:
        params = HeParams(**kwargs)
        rows.append(sweep_fedge(work, params, chosen=params == DEFAULT_PARAMS))
        log(f"sweep: fedge {params}")
    return rows
