"""What protecting the aggregate costs: plain FedAvg, SecAgg+ and CKKS side by side, in one run.

For ``--clients`` holders (10) and updates of 10k, 100k and 1M float32 values, each arm runs a
whole round and reports, per arm:

- ``client ms``: one holder's work per round, median over the holders: serializing its update
  (``plain``); Flower's SecAgg+ client stages (two key pairs, Shamir shares of its mask seed and
  key sent encrypted to every neighbour, quantization with its weight, private and pairwise
  masks, its unmask shares: Flower's own primitives from ``flwr.common.secure_aggregation`` with
  the workflow's defaults, all holders neighbours of all); or
  ``client.federation.he.encrypt_update``.
- ``server ms``: the coordinator's aggregation: weighted mean of the arrays; the masked sum,
  Shamir reconstruction of every seed, mask removal and dequantization; or
  ``server.federation.he_aggregate.aggregate_encrypted`` (parse and check every ciphertext,
  integer-weighted sum, serialize).
- ``decode ms``: one holder reading the new global update (for ``he``: ``decrypt_aggregate``).
- ``up x`` / ``down x``: bytes one holder sends / receives, over the update's float32 bytes
  (SecAgg+ counts its key material and shares too; its masked vector travels as Flower's int64
  ``ndarray_to_bytes``).
- ``max err``: largest absolute deviation from FedAvg computed in float64 on the same updates.

The arms are interleaved within each repetition (their order rotates) and the ``/plain`` columns
are ratios taken within a repetition, then the median over repetitions, because these machines
are shared and noisy.

A second table sweeps CKKS parameters on a 16,383-value update (full ciphertexts at every
degree): bytes per float32 value and the precision each keeps, for the textbook layout (TenSEAL's
tutorial parameters, fractional weights by plaintext multiplication and rescaling) and for
fedge's (integer weights by doubling and adding, one data prime, see ``client/federation/he.py``).

Run: ``.venv/bin/python bench/protected_aggregation.py [--quick] [--json out.json]``. ``--quick``
(one repetition) takes about 15 s on an idle 2-core CPU, mostly the 1M-value CKKS arm; the
default (three repetitions) under a minute. Peak memory is about 1 GB (ten 1M-value updates held
as ciphertexts by the coordinator).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

Floats = npt.NDArray[np.float32]
ARMS = ("plain", "secagg", "he")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Plain FedAvg vs SecAgg+ vs CKKS: per-holder and coordinator time, bytes on "
        "the wire and precision, side by side. --quick about 15 s on an idle 2-core CPU.",
    )
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(v) for v in text.split(",")],
        default=[10_000, 100_000, 1_000_000],
        help="comma-separated update sizes in values (10000,100000,1000000)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="repetitions (3; --quick 1)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the CKKS parameter sweep")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    parser.add_argument("--quick", action="store_true", help="one repetition (~15 s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.clients < 3:
        parser.error("--clients must be at least 3 (SecAgg+ needs neighbours)")
    if args.repeats < 1 or any(size < 1 for size in args.sizes):
        parser.error("--repeats and --sizes must be positive")
    return args


# --------------------------------------------------------------------------------------------
# Workload


@dataclass
class Workload:
    updates: list[Floats]
    counts: list[int]
    reference: npt.NDArray[np.float64]  # FedAvg in float64


def make_workload(size: int, clients: int, seed: int) -> Workload:
    """Values of the scale of LoRA deltas (|x| from 1e-3 to 1, both signs), counts 100..1000."""
    rng = np.random.default_rng(seed)
    updates = [
        (rng.uniform(-1, 1, size) * 10 ** rng.uniform(-3, 0, size)).astype(np.float32)
        for _ in range(clients)
    ]
    counts = [int(c) for c in rng.integers(100, 1001, clients)]
    acc = np.zeros(size)
    for update, count in zip(updates, counts, strict=True):
        acc += count * update.astype(np.float64)
    return Workload(updates, counts, acc / sum(counts))


@dataclass
class RoundCost:
    """One arm's round: per-holder seconds, coordinator seconds, bytes, and the result's error."""

    client_s: list[float] = field(default_factory=list)
    server_s: float = 0.0
    decode_s: float = 0.0
    bytes_up: int = 0  # one holder's upload (the median holder for SecAgg+, all equal otherwise)
    bytes_down: int = 0
    max_err: float = 0.0


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# plain


def run_plain(work: Workload) -> RoundCost:
    from flwr.common import bytes_to_ndarray, ndarray_to_bytes

    cost = RoundCost()
    sent: list[bytes] = []
    for update in work.updates:
        blob, seconds = timed(functools.partial(ndarray_to_bytes, update))
        sent.append(blob)
        cost.client_s.append(seconds)

    def aggregate() -> bytes:
        acc = np.zeros(work.reference.size)
        for blob, count in zip(sent, work.counts, strict=True):
            acc += count * bytes_to_ndarray(blob).astype(np.float64)
        return ndarray_to_bytes((acc / sum(work.counts)).astype(np.float32))

    result, cost.server_s = timed(aggregate)
    decoded, cost.decode_s = timed(lambda: bytes_to_ndarray(result))
    cost.bytes_up, cost.bytes_down = len(sent[0]), len(result)
    cost.max_err = float(np.max(np.abs(decoded.astype(np.float64) - work.reference)))
    return cost


# --------------------------------------------------------------------------------------------
# SecAgg+ with Flower's primitives (the steps of flwr's secaggplus_mod and SecAggPlusWorkflow)


@dataclass(frozen=True)
class SecAggConfig:
    """The SecAggPlusWorkflow defaults fedge uses (server/federation/secagg.py)."""

    clipping_range: float = 8.0
    quantization_range: int = 2**22
    modulus_range: int = 2**32
    max_weight: float = 1000.0
    threshold_fraction: float = 0.5


class SecAggRound:
    """One SecAgg+ round among all holders, stage by stage as Flower runs it, timed per holder.

    The stages follow ``flwr.client.mod.secure_aggregation.secaggplus_mod`` (setup, share keys,
    collect masked vectors, unmask) and the unmasking of ``SecAggPlusWorkflow``, with Flower's own
    primitives; the transport is left out, its bytes are counted.
    """

    def __init__(self, work: Workload, config: SecAggConfig) -> None:
        self.work, self.config = work, config
        self.nids = list(range(1, len(work.updates) + 1))
        self.threshold = max(2, math.ceil(config.threshold_fraction * len(self.nids)))
        self.client_s = dict.fromkeys(self.nids, 0.0)
        self.up = dict.fromkeys(self.nids, 0)
        self.keys: dict[int, tuple[bytes, bytes, bytes, bytes]] = {}  # sk1, pk1, sk2, pk2
        self.seeds: dict[int, bytes] = {}
        self.own_shares: dict[int, bytes] = {}
        self.inbox: dict[int, list[tuple[int, bytes]]] = {nid: [] for nid in self.nids}
        self.held: dict[int, dict[int, bytes]] = {}  # holder -> owner -> seed share
        self.masked: dict[int, list[bytes]] = {}

    def charge(self, nid: int, fn: Callable[[], Any]) -> Any:
        value, seconds = timed(fn)
        self.client_s[nid] += seconds
        return value

    def setup(self, nid: int) -> None:
        from flwr.supercore.primitives.asymmetric import (
            generate_key_pairs,
            private_key_to_bytes,
            public_key_to_bytes,
        )

        def make() -> tuple[bytes, bytes, bytes, bytes]:
            sk1, pk1 = generate_key_pairs()
            sk2, pk2 = generate_key_pairs()
            return (
                private_key_to_bytes(sk1),
                public_key_to_bytes(pk1),
                private_key_to_bytes(sk2),
                public_key_to_bytes(pk2),
            )

        self.keys[nid] = self.charge(nid, make)
        self.up[nid] += len(self.keys[nid][1]) + len(self.keys[nid][3])

    def _shared(self, nid: int, peer: int, pair: int) -> bytes:
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
            generate_shared_key,
        )
        from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

        secret, public = (0, 1) if pair == 1 else (2, 3)
        key: bytes = generate_shared_key(
            bytes_to_private_key(self.keys[nid][secret]),
            bytes_to_public_key(self.keys[peer][public]),
        )
        return key

    def share_keys(self, nid: int) -> None:
        from flwr.common.secure_aggregation.crypto.shamir import create_shares
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import encrypt
        from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_concat

        def make() -> list[tuple[int, bytes]]:
            self.seeds[nid] = os.urandom(32)
            b_shares = create_shares(self.seeds[nid], self.threshold, len(self.nids))
            sk1_shares = create_shares(self.keys[nid][0], self.threshold, len(self.nids))
            out = []
            for idx, peer in enumerate(self.nids):
                if peer == nid:
                    self.own_shares[nid] = b_shares[idx]
                    continue
                plaintext = share_keys_plaintext_concat(nid, peer, b_shares[idx], sk1_shares[idx])
                out.append((peer, encrypt(self._shared(nid, peer, 2), plaintext)))
            return out

        for peer, ciphertext in self.charge(nid, make):
            self.inbox[peer].append((nid, ciphertext))
            self.up[nid] += len(ciphertext)

    def collect_masked(self, nid: int, update: Floats, count: int) -> None:
        from flwr.common import ndarray_to_bytes
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt
        from flwr.common.secure_aggregation.ndarrays_arithmetic import (
            factor_combine,
            parameters_addition,
            parameters_mod,
            parameters_multiply,
            parameters_subtraction,
        )
        from flwr.common.secure_aggregation.quantization import quantize
        from flwr.common.secure_aggregation.secaggplus_utils import (
            pseudo_rand_gen,
            share_keys_plaintext_separate,
        )

        config, mod = self.config, self.config.modulus_range

        def make() -> list[bytes]:
            self.held[nid] = {nid: self.own_shares[nid]}
            for src, ciphertext in self.inbox[nid]:
                plaintext = decrypt(self._shared(nid, src, 2), ciphertext)
                self.held[nid][src] = share_keys_plaintext_separate(plaintext)[2]
            q_ratio = round(count / config.max_weight * config.quantization_range)
            params = parameters_multiply([update], q_ratio / config.quantization_range)
            quantized = quantize(params, config.clipping_range, config.quantization_range)
            quantized = factor_combine(q_ratio, quantized)
            dims = [a.shape for a in quantized]
            quantized = parameters_addition(quantized, pseudo_rand_gen(self.seeds[nid], mod, dims))
            for peer in self.nids:
                if peer != nid:
                    pairwise = pseudo_rand_gen(self._shared(nid, peer, 1), mod, dims)
                    combine = parameters_addition if nid > peer else parameters_subtraction
                    quantized = combine(quantized, pairwise)
            return [ndarray_to_bytes(a) for a in parameters_mod(quantized, mod)]

        self.masked[nid] = self.charge(nid, make)
        self.up[nid] += sum(len(b) for b in self.masked[nid])

    def unmask(self) -> bytes:
        """The coordinator: sum, reconstruct every seed from shares, remove masks, dequantize."""
        from flwr.common import bytes_to_ndarray, ndarray_to_bytes
        from flwr.common.secure_aggregation.crypto.shamir import combine_shares
        from flwr.common.secure_aggregation.ndarrays_arithmetic import (
            factor_extract,
            parameters_addition,
            parameters_mod,
            parameters_subtraction,
        )
        from flwr.common.secure_aggregation.quantization import dequantize
        from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

        config, mod = self.config, self.config.modulus_range
        total: list[Any] | None = None
        for blobs in self.masked.values():
            vec = [bytes_to_ndarray(b) for b in blobs]
            total = vec if total is None else parameters_addition(total, vec)
        assert total is not None
        total = parameters_mod(total, mod)
        shapes = [a.shape for a in total]
        for nid in self.nids:
            shares = [self.held[peer][nid] for peer in self.nids[: self.threshold]]
            private = pseudo_rand_gen(combine_shares(shares), mod, shapes)
            total = parameters_subtraction(total, private)
        q_total, recon = factor_extract(parameters_mod(total, mod))
        (mean,) = dequantize(recon, config.clipping_range, config.quantization_range)
        mean += -(len(self.nids) - 1) * config.clipping_range
        mean *= config.quantization_range / q_total
        return bytes(ndarray_to_bytes(mean.astype(np.float32)))


def run_secagg(work: Workload, config: SecAggConfig) -> RoundCost:
    from flwr.common import bytes_to_ndarray

    secagg = SecAggRound(work, config)
    for nid in secagg.nids:
        secagg.setup(nid)
    for nid in secagg.nids:
        secagg.share_keys(nid)
    for nid, update, count in zip(secagg.nids, work.updates, work.counts, strict=True):
        secagg.collect_masked(nid, update, count)
    for nid in secagg.nids:  # stage 3: each holder sends the seed shares it holds
        secagg.up[nid] += sum(len(share) for share in secagg.held[nid].values())
    result, server_s = timed(secagg.unmask)
    decoded, decode_s = timed(lambda: bytes_to_ndarray(result))
    return RoundCost(
        client_s=list(secagg.client_s.values()),
        server_s=server_s,
        decode_s=decode_s,
        bytes_up=int(statistics.median(secagg.up.values())),
        bytes_down=len(result),
        max_err=float(np.max(np.abs(decoded.astype(np.float64) - work.reference))),
    )


# --------------------------------------------------------------------------------------------
# CKKS (fedge's client/federation/he.py and server/federation/he_aggregate.py)


@dataclass
class HeSetup:
    secret: Any
    public: Any
    keygen_s: float
    max_total_weight: int


def he_setup(params: Any) -> HeSetup:
    from client.federation.he import generate_keys, secret_context_from_bytes
    from server.federation.he_aggregate import public_context_from_bytes

    keys, seconds = timed(lambda: generate_keys(params))
    return HeSetup(
        secret_context_from_bytes(keys.secret_context),
        public_context_from_bytes(keys.public_context),
        seconds,
        params.max_total_weight,
    )


def run_he(work: Workload, he: HeSetup) -> RoundCost:
    from client.federation.he import decrypt_aggregate, encrypt_update
    from server.federation.he_aggregate import ClientUpdate, aggregate_encrypted

    cost = RoundCost()
    sent = []
    for index, (update, count) in enumerate(zip(work.updates, work.counts, strict=True)):
        encrypted, seconds = timed(functools.partial(encrypt_update, he.secret, [update]))
        cost.client_s.append(seconds)
        sent.append(ClientUpdate(f"h{index}", encrypted.chunks, count, encrypted.digest))
    size = work.reference.size
    result, cost.server_s = timed(
        lambda: aggregate_encrypted(
            he.public,
            sent,
            num_values=size,
            minimum=len(sent),
            max_total_weight=he.max_total_weight,
        )
    )
    (decoded,), cost.decode_s = timed(
        lambda: decrypt_aggregate(he.secret, result.chunks, [(size,)], result.total_weight)
    )
    cost.bytes_up = sum(len(c) for c in sent[0].chunks)
    cost.bytes_down = result.bytes_out
    cost.max_err = float(np.max(np.abs(decoded.astype(np.float64) - work.reference)))
    return cost


# --------------------------------------------------------------------------------------------
# Measuring


def measure(
    args: argparse.Namespace, he: HeSetup, log: Callable[[str], None]
) -> dict[int, dict[str, list[RoundCost]]]:
    np.random.seed(args.seed)  # SecAgg+'s stochastic rounding draws from numpy's global RNG
    results: dict[int, dict[str, list[RoundCost]]] = {}
    runners: dict[str, Callable[[Workload], RoundCost]] = {
        "plain": run_plain,
        "secagg": lambda w: run_secagg(w, SecAggConfig()),
        "he": lambda w: run_he(w, he),
    }
    for size in args.sizes:
        work = make_workload(size, args.clients, args.seed + size)
        results[size] = {arm: [] for arm in ARMS}
        for rep in range(args.repeats):
            order = ARMS[rep % len(ARMS) :] + ARMS[: rep % len(ARMS)]
            for arm in order:
                cost = runners[arm](work)
                results[size][arm].append(cost)
                log(
                    f"{size:>9,} values  rep {rep + 1}/{args.repeats}  {arm:<6} "
                    f"client {statistics.median(cost.client_s) * 1e3:8.1f} ms  "
                    f"server {cost.server_s * 1e3:8.1f} ms"
                )
    return results


def summarise(results: dict[int, dict[str, list[RoundCost]]]) -> list[dict[str, Any]]:
    rows = []
    for size, arms in results.items():
        plain = arms["plain"]
        for arm in ARMS:
            costs = arms[arm]

            def ratio(
                get: Callable[[RoundCost], float],
                costs: list[RoundCost] = costs,
                plain: list[RoundCost] = plain,
            ) -> float:
                return statistics.median(
                    get(c) / get(p) if get(p) > 0 else math.nan
                    for c, p in zip(costs, plain, strict=True)
                )

            def client(c: RoundCost) -> float:
                return statistics.median(c.client_s)

            rows.append(
                {
                    "values": size,
                    "arm": arm,
                    "client_ms": statistics.median(client(c) for c in costs) * 1e3,
                    "server_ms": statistics.median(c.server_s for c in costs) * 1e3,
                    "decode_ms": statistics.median(c.decode_s for c in costs) * 1e3,
                    "bytes_up": costs[0].bytes_up,
                    "bytes_down": costs[0].bytes_down,
                    "up_x_f32": costs[0].bytes_up / (4 * size),
                    "down_x_f32": costs[0].bytes_down / (4 * size),
                    "max_err": max(c.max_err for c in costs),
                    "client_vs_plain": ratio(client),
                    "server_vs_plain": ratio(lambda c: c.server_s),
                }
            )
    return rows


# --------------------------------------------------------------------------------------------
# Parameter sweep


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


# --------------------------------------------------------------------------------------------
# Output


def print_tables(
    rows: list[dict[str, Any]], sweep_rows: list[SweepRow], meta: dict[str, Any]
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=150)
    table = Table(
        title=f"Protected aggregation, {meta['clients']} holders, {meta['repeats']} repetition(s)"
    )
    for name in (
        "values",
        "arm",
        "client ms",
        "server ms",
        "decode ms",
        "up x f32",
        "down x f32",
        "max err",
        "client /plain",
        "server /plain",
    ):
        table.add_column(name, justify="left" if name == "arm" else "right")
    for row in rows:
        table.add_row(
            f"{row['values']:,}",
            row["arm"],
            f"{row['client_ms']:.2f}",
            f"{row['server_ms']:.2f}",
            f"{row['decode_ms']:.2f}",
            f"{row['up_x_f32']:.2f}",
            f"{row['down_x_f32']:.2f}",
            f"{row['max_err']:.1e}",
            f"{row['client_vs_plain']:.0f}x",
            f"{row['server_vs_plain']:.0f}x",
            end_section=row["arm"] == ARMS[-1],
        )
    console.print(table)
    console.print(
        "CKKS: N={poly_modulus_degree}, primes {primes}, scale 2^{scale_bits}, {encryption}, "
        "|x| <= {max_abs:g}, weights exact up to a total of {max_total_weight:,}; key generation "
        "{keygen:.0f} ms, once per federation. SecAgg+: Flower's primitives with fedge's workflow "
        "settings (clipping {clipping_range:g}, quantization 2^{q:.0f}, modulus 2^{m:.0f}, max "
        "weight {max_weight:g}, threshold {threshold_fraction:g}), every holder a neighbour of "
        "every other, no drop-outs.".format(
            **meta["he_params"],
            **meta["secagg"],
            primes=list(meta["he_params"]["coeff_mod_bit_sizes"]),
            encryption="symmetric" if meta["he_params"]["symmetric"] else "public-key",
            keygen=meta["he_keygen_ms"],
            q=math.log2(meta["secagg"]["quantization_range"]),
            m=math.log2(meta["secagg"]["modulus_range"]),
        )
    )
    if not sweep_rows:
        return
    sweep_table = Table(title="CKKS parameters: bytes per float32 value and precision kept")
    for name in (
        "layout",
        "N",
        "primes",
        "scale",
        "encryption",
        "up x f32",
        "down x f32",
        "raw x f32",
        "max err",
        "err/max|x|",
        "rel err |x|>=1e-3",
    ):
        sweep_table.add_column(
            name, justify="left" if name in ("layout", "encryption") else "right"
        )
    for s in sweep_rows:
        sweep_table.add_row(
            ("* " if s.chosen else "") + s.layout,
            str(s.degree),
            str(s.primes),
            f"2^{s.scale_bits}",
            s.encryption,
            f"{s.up_x_f32:.2f}",
            f"{s.down_x_f32:.2f}",
            f"{s.raw_x_f32:.0f}",
            f"{s.max_err:.1e}",
            f"{s.rel_err_max:.1e}",
            f"{s.rel_err_small:.1e}",
        )
    console.print(sweep_table)
    console.print(
        "textbook: weights n_i/N by plaintext multiplication and rescaling (TenSEAL's tutorial "
        "parameters first); fedge: integer weights n_i by doubling and adding, no rescaling, one "
        "data prime. * fedge's default (client.federation.he.DEFAULT_PARAMS). "
        "'raw' is the uncompressed "
        "ciphertext "
        "(2 polynomials x N x 8 bytes per data prime); 'up' and 'down' are what TenSEAL "
        "serializes, with SEAL's zstd compression on. fedge rows keep max_abs 8 and total weight "
        "2^20 exact; a smaller prime buys bytes with scale, so precision."
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(message: str) -> None:
        print(f"[protected_aggregation] {message}", file=sys.stderr, flush=True)

    import flwr
    import tenseal

    from client.federation.he import DEFAULT_PARAMS

    started = time.perf_counter()
    he = he_setup(DEFAULT_PARAMS)
    results = measure(args, he, log)
    rows = summarise(results)
    sweep_rows = [] if args.no_sweep else sweep(args.clients, args.seed, log)
    meta = {
        "clients": args.clients,
        "sizes": args.sizes,
        "repeats": args.repeats,
        "he_params": asdict(DEFAULT_PARAMS),
        "he_keygen_ms": he.keygen_s * 1e3,
        "secagg": asdict(SecAggConfig()),
        "flwr": flwr.__version__,
        "tenseal": tenseal.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "seconds": 0.0,
    }
    meta["seconds"] = time.perf_counter() - started
    print_tables(rows, sweep_rows, meta)
    if args.json is not None:
        raw = {
            str(size): {arm: [asdict(c) for c in costs] for arm, costs in arms.items()}
            for size, arms in results.items()
        }
        payload = {
            "meta": meta,
            "rows": rows,
            "sweep": [asdict(s) for s in sweep_rows],
            "raw": raw,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        log(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
