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

Layout: this file holds the options, the plain arm, the interleaved measuring, the tables and
``main``; its siblings in ``bench/`` (imported by bare name: a script's folder is on ``sys.path``)
hold the rest: ``aggregation_workload.py`` the updates and the cost record every arm shares,
``secagg_round.py`` the SecAgg+ arm, ``he_round.py`` the CKKS arm, ``he_sweep.py`` the parameter
sweep.

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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

# The arms and the sweep, siblings of this file (its folder is on sys.path when run as a script)
from aggregation_workload import RoundCost, Workload, make_workload, timed
from he_round import HeSetup, he_setup, run_he
from he_sweep import SweepRow, sweep
from secagg_round import SecAggConfig, run_secagg

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
