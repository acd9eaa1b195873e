"""What DP-SGD (Opacus) costs per training step of one client: samples/s with and without DP.

Every figure is a ratio measured side by side in one run: the DP and non-DP arms of a path are
interleaved repetition by repetition (the order flips every repetition), and the DP/non-DP time
per sample is taken within each repetition before the median over repetitions, so a noisy shared
machine slows both arms of a ratio alike.

Paths (same model, batch size and sequence length in every arm):

- ``lora fixed``: the model fedge trains (LoRA adapters + classifier head trainable,
  ``load_trainable_model``); one step is forward + backward + optimizer step on one fixed batch.
  DP is raw Opacus: ``make_private`` with a fixed batch (no Poisson sampling), per-sample clipping
  and Gaussian noise. This is the cost of DP-SGD itself.
- ``lora poisson+bmm``: the DP step as Opacus's own loop drives it (Poisson sampling through
  Opacus's DPDataLoader, physical batches from BatchMemoryManager with the policy's
  ``maxPhysicalBatchSize``; fedge's ``train_round`` now samples Poisson batches itself on the
  tensors' device and drives Opacus's DPOptimizer the same way), each step still timed alone,
  data loading excluded. Its non-DP
  column is the fixed-batch non-DP step of the same repetition.
- ``lora train_round``: fedge's ``client.training.loop.train_round`` itself, private=True vs False,
  as a client runs it: samples seen / the round's own ``seconds`` (which include data loading).
- ``head fixed``: for context, the base model frozen and only the classifier trained.
- ``full fixed`` (``--full``): every encoder weight and the head trained, the embeddings frozen
  (as in Opacus's BERT tutorial: BERT's broadcast position/token-type ids break per-sample
  gradients of those tables, and a per-sample copy of the word embeddings is 1.5 GB at batch 32).
  Slow on a CPU.

A timed step excludes data loading and warm-up steps; on CUDA the device is synchronised before
and after every timed step. Data loading alone (shuffled DataLoader vs Poisson DPDataLoader) is
timed separately and shown below the table.

Layout: this file holds the options, the data-loading timing, the interleaved measuring, the
summary, the table and ``main``; its siblings in ``bench/`` (imported by bare name: a script's
folder is on ``sys.path``) hold the rest: ``dp_arms.py`` the timed arms, ``dp_paths.py`` the models,
data and paired arms of each path.

Run: ``.venv/bin/python bench/dp_overhead.py [--quick] [--json out.json]``. The defaults
(MiniLM, batch 32, 64 tokens, 5 steps x 5 repetitions) take about 3 to 4 minutes on an idle 2-core
CPU; ``--quick`` about a minute.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

# The arms and the paths, siblings of this file (its folder is on sys.path when run as a script)
from dp_arms import MAX_GRAD_NORM, NOISE_MULTIPLIER, Arm, Timing  # noqa: E402
from dp_paths import Pair, build_arms, model_source  # noqa: E402

# --------------------------------------------------------------------------------------------
# Options


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Samples/s of one client's training step with and without DP (Opacus), "
        "measured side by side. Defaults take about 3-4 min on an idle 2-core CPU (more under "
        "load); --quick about 1 min.",
    )
    parser.add_argument("--model", default=None, help="model source (default: MiniLM builtin)")
    parser.add_argument("--tiny", action="store_true", help="use a tiny random BERT instead")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument(
        "--max-physical-batch-size",
        type=int,
        default=None,
        help="physical batch of the poisson+bmm and train_round arms (default: the policy "
        "default, 32, or the batch size if larger)",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps per arm (5)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per arm (2)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument(
        "--full", action="store_true", help="also time full fine-tuning (embeddings frozen)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument("--no-head", action="store_true", help="skip the head-only path")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    parser.add_argument("--quick", action="store_true", help="2 steps x 3 repetitions (~1 min)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    quick = args.quick
    args.steps = args.steps or (2 if quick else 5)
    args.repeats = args.repeats or (3 if quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    if args.max_physical_batch_size is None:
        args.max_physical_batch_size = max(32, args.batch_size)
    for name in ("batch_size", "seq_len", "steps", "repeats", "max_physical_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def pick(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", message=".*Full backward hook.*")
    warnings.filterwarnings("ignore", message=".*Secure RNG.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    logging.getLogger("opacus").setLevel(logging.ERROR)


# --------------------------------------------------------------------------------------------
# Data loading


def time_loading(dataset: TensorDataset, batch_size: int, seed: int) -> dict[str, float]:
    """Seconds per sample to iterate a shuffled DataLoader vs Opacus's Poisson DPDataLoader."""
    from opacus.data_loader import DPDataLoader

    base = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    poisson = DPDataLoader.from_data_loader(base)
    out: dict[str, float] = {"shuffled": math.inf, "poisson": math.inf}
    for _ in range(5):  # alternate, keep the fastest epoch of each
        for name, loader in (("shuffled", base), ("poisson", poisson)):
            samples, started = 0, time.perf_counter()
            for ids, _mask, _labels in loader:
                samples += len(ids)
            out[name] = min(out[name], (time.perf_counter() - started) / max(1, samples))
    return out


# --------------------------------------------------------------------------------------------
# Run, summarise, print


def measure(
    arms: list[Arm], steps: int, repeats: int, warmup: int, log: Callable[[str], None]
) -> dict[str, list[Timing]]:
    """Per-step arms alternate step by step (order flipped every step); round arms round by round.

    The i-th entries of two arms were therefore measured next to each other, seconds apart.
    """
    if warmup:
        for arm in arms:
            arm.run(warmup)
        log(f"warm-up done ({warmup} step(s) per arm)")
    results: dict[str, list[Timing]] = {arm.name: [] for arm in arms}
    stepped = [arm for arm in arms if arm.per_step]
    rounds = [arm for arm in arms if not arm.per_step]
    flip = 0
    for repeat in range(repeats):
        for _ in range(steps):
            for arm in stepped if flip % 2 == 0 else stepped[::-1]:
                results[arm.name].append(arm.run(1))
            flip += 1
        for arm in rounds if repeat % 2 == 0 else rounds[::-1]:
            results[arm.name].append(arm.run(steps))
        rates = ", ".join(
            f"{a.name} {_rate(results[a.name][-steps if a.per_step else -1 :]):.1f}" for a in arms
        )
        log(f"repetition {repeat + 1}/{repeats}: samples/s {rates}")
    return results


def _rate(timings: list[Timing]) -> float:
    seconds = sum(t.seconds for t in timings)
    return sum(t.samples for t in timings) / seconds if seconds > 0 else math.nan


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(pairs: list[Pair], results: dict[str, list[Timing]]) -> list[dict[str, Any]]:
    """Ratios of time per sample, DP over non-DP, from entries measured next to each other.

    ``dp_over_plain_time`` is the median of the paired ratios; ``dp_over_plain_best`` compares
    each arm's fastest entry (per sample), the figure least disturbed by other load on the
    machine.
    """
    rows = []
    for pair in pairs:
        plain, private = results[pair.plain], results[pair.private]
        ratios = [p.rate / d.rate for p, d in zip(plain, private, strict=True)]
        best_plain = max(t.rate for t in plain)
        best_dp = max(t.rate for t in private)
        steps = sum(d.steps for d in private)
        passes = sum(d.passes for d in private)
        rows.append(
            {
                "path": pair.path,
                "how": pair.how,
                "plain_samples_per_s": statistics.median(t.rate for t in plain),
                "dp_samples_per_s": statistics.median(t.rate for t in private),
                "plain_samples_per_s_overall": _rate(plain),
                "dp_samples_per_s_overall": _rate(private),
                "plain_samples_per_s_best": best_plain,
                "dp_samples_per_s_best": best_dp,
                "dp_over_plain_time": statistics.median(ratios),
                "dp_over_plain_best": best_plain / best_dp,
                "ratio_p25": _quantile(ratios, 0.25),
                "ratio_p75": _quantile(ratios, 0.75),
                "pairs": len(ratios),
                "dp_passes_per_step": passes / steps if passes and steps else None,
                "dp_mean_physical_batch": sum(d.samples for d in private) / passes
                if passes
                else None,
                "ratios": ratios,
            }
        )
    return rows


def print_table(
    rows: list[dict[str, Any]], meta: dict[str, Any], loading: dict[str, float]
) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (
        f"DP overhead per training step: {meta['model']} on {meta['device']}, batch "
        f"{meta['batch_size']}, {meta['seq_len']} tokens, {meta['steps']} steps x "
        f"{meta['repeats']} repetitions, DP and non-DP interleaved"
    )
    table = Table(title=title)
    for name, justify in (
        ("path", "left"),
        ("how", "left"),
        ("non-DP samples/s", "right"),
        ("DP samples/s", "right"),
        ("best non-DP", "right"),
        ("best DP", "right"),
        ("DP/non-DP time", "right"),
        ("p25-p75", "right"),
        ("best vs best", "right"),
        ("DP passes/step", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(
            row["path"],
            row["how"],
            f"{row['plain_samples_per_s']:.1f}",
            f"{row['dp_samples_per_s']:.1f}",
            f"{row['plain_samples_per_s_best']:.1f}",
            f"{row['dp_samples_per_s_best']:.1f}",
            f"{row['dp_over_plain_time']:.3f}",
            f"{row['ratio_p25']:.2f}-{row['ratio_p75']:.2f}",
            f"{row['dp_over_plain_best']:.3f}",
            "-" if row["dp_passes_per_step"] is None else f"{row['dp_passes_per_step']:.2f}",
        )
    console = Console(width=max(160, Console().width))
    console.print(table)
    console.print(
        "fixed batch: one batch, timed step by step; DP is Opacus make_private without Poisson "
        "sampling.\n"
        "Poisson + BMM: the DP step as Opacus's loop drives it (Poisson batches split by "
        "BatchMemoryManager), timed step by step, loading excluded; non-DP: the fixed-batch "
        "step.\n"
        "fedge train_round: private=True vs False, whole rounds, samples seen / the round's "
        "seconds (data loading included).\n"
        "samples/s: median over the arm's entries (a step, or a round); best: its fastest "
        "entry, the least disturbed by other load on the machine.\n"
        "DP/non-DP time: median (and quartiles) of the ratios of entries measured next to each "
        "other; best vs best: fastest non-DP entry / fastest DP entry."
    )
    shuffled, poisson = loading["shuffled"] * 1e6, loading["poisson"] * 1e6
    console.print(
        f"data loading alone: shuffled DataLoader {shuffled:.1f} us/sample, "
        f"Poisson DPDataLoader {poisson:.1f} us/sample "
        "(train_round's seconds include it; the other rows exclude it)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    quiet()
    torch.manual_seed(args.seed)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        print(f"[dp_overhead] {message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedge-dp-bench-") as tmp:
        source = model_source(args, Path(tmp))
        pairs, arms, dataset = build_arms(args, source, device)
        log(f"{len(arms)} arms built on {device} in {time.perf_counter() - started:.1f} s")
        try:
            results = measure(arms, args.steps, args.repeats, args.warmup, log)
        finally:
            for arm in arms:
                arm.close()
        loading = time_loading(dataset, args.batch_size, args.seed)
    import opacus

    meta = {
        "model": "tiny random BERT" if args.tiny else (args.model or "builtin:all-MiniLM-L6-v2"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "max_physical_batch_size": args.max_physical_batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "noise_multiplier": NOISE_MULTIPLIER,
        "max_grad_norm": MAX_GRAD_NORM,
        "torch": torch.__version__,
        "opacus": opacus.__version__,
        "python": platform.python_version(),
        "seconds": time.perf_counter() - started,
    }
    rows = summarise(pairs, results)
    print_table(rows, meta, loading)
    if args.json is not None:
        raw = {name: [t.__dict__ for t in timings] for name, timings in results.items()}
        payload = {"meta": meta, "rows": rows, "loading_s_per_sample": loading, "raw": raw}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        log(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
