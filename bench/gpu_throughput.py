"""Part 1 of ``gpu_suite.py``: DP and non-DP ``train_round`` throughput, side by side.

One job: time fedge's ``train_round`` with and without DP on the same model and data (LoRA on
tokens, then the head on pooled features), interleaved round by round, and time the pooled-feature
extraction itself. Standard library only at the top, as every module of the suite.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from gpu_workload import Splits, build, encoded, log, sync, take

if TYPE_CHECKING:
    import torch
    from torch.utils.data import TensorDataset

    from client.training.loop import RoundPlan

THROUGHPUT_LEARNING_RATE = 5e-3
THROUGHPUT_NOISE = 1.0  # the step's cost does not depend on the noise's scale


@dataclass
class Round:
    """One timed train_round."""

    wall_s: float
    loop_s: float  # train_round's own seconds (the step loop)
    samples: int
    steps: int
    peak_mem_gib: float | None = None

    @property
    def rate(self) -> float:
        return self.samples / self.wall_s if self.wall_s > 0 else math.nan


def timed_round(
    model: torch.nn.Module,
    dataset: TensorDataset,
    plan: RoundPlan,
    *,
    private: bool,
    batch: int,
    device: torch.device,
    seed: int,
) -> Round:
    import torch

    from client.training.loop import train_round

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    started = time.perf_counter()
    result = train_round(
        model,
        dataset,
        plan,
        learning_rate=THROUGHPUT_LEARNING_RATE,
        max_physical_batch_size=batch,
        private=private,
        device=device,
        seed=seed,
    )
    sync(device)
    wall = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return Round(wall, result.seconds, result.samples_seen, result.steps, peak)


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def compare(
    path: str,
    model: torch.nn.Module,
    data: TensorDataset,
    args: argparse.Namespace,
    *,
    batch: int,
    device: torch.device,
) -> dict[str, Any]:
    """DP and non-DP train_round on the same model and data, interleaved round by round."""
    from client.training.loop import RoundPlan

    def plan(steps: int) -> RoundPlan:
        # steps * batch examples at rate 1/steps: Poisson batches of ``batch`` on average
        return RoundPlan(steps * batch, batch, 1, THROUGHPUT_NOISE, args.max_grad_norm)

    timed = take(data, args.steps * batch)
    warm = take(data, max(1, args.warmup) * batch)
    for private in (False, True):  # warm-up: kernels, allocator, Opacus hooks; not counted
        timed_round(
            model,
            warm,
            plan(max(1, args.warmup)),
            private=private,
            batch=batch,
            device=device,
            seed=args.seed,
        )
    runs: dict[str, list[Round]] = {"plain": [], "dp": []}
    for repeat in range(args.repeats):
        order = (False, True) if repeat % 2 == 0 else (True, False)
        for private in order:
            runs["dp" if private else "plain"].append(
                timed_round(
                    model,
                    timed,
                    plan(args.steps),
                    private=private,
                    batch=batch,
                    device=device,
                    seed=args.seed + 1 + repeat,
                )
            )
    ratios = [
        (dp.wall_s / max(1, dp.samples)) / (plain.wall_s / max(1, plain.samples))
        for plain, dp in zip(runs["plain"], runs["dp"], strict=True)
    ]
    p25, p75 = _quartiles(ratios)
    peaks = {k: max((r.peak_mem_gib or 0.0) for r in v) for k, v in runs.items()}
    row: dict[str, Any] = {
        "path": path,
        "batch": batch,
        "steps": args.steps,
        "repeats": args.repeats,
        "plain_samples_per_s": statistics.median(r.rate for r in runs["plain"]),
        "dp_samples_per_s": statistics.median(r.rate for r in runs["dp"]),
        "dp_over_plain_time": statistics.median(ratios),
        "ratio_p25": p25,
        "ratio_p75": p75,
        "plain_peak_mem_gib": peaks["plain"] if device.type == "cuda" else None,
        "dp_peak_mem_gib": peaks["dp"] if device.type == "cuda" else None,
        "raw": {k: [asdict(r) for r in v] for k, v in runs.items()},
    }
    log(
        f"{path} batch {batch}: non-DP {row['plain_samples_per_s']:.0f}/s, "
        f"DP {row['dp_samples_per_s']:.0f}/s, DP/non-DP time {row['dp_over_plain_time']:.2f}"
    )
    return row


def throughput(
    args: argparse.Namespace, splits: Splits, device: torch.device, save: Callable[[], None]
) -> dict[str, Any]:
    from torch.utils.data import TensorDataset

    from client.training.loop import pooled_features

    out: dict[str, Any] = {"seq_len": args.seq_len, "rows": []}
    need = args.steps * max(args.batch_list)
    texts = splits.train.subset(range(min(len(splits.train), need)))

    lora, info = build(args, lora=True)
    out["lora_model"] = info
    tokens = encoded(lora, texts, args.seq_len, device)
    for batch in args.batch_list:
        out["rows"].append(
            compare("lora r8 tokens", lora.model, tokens, args, batch=batch, device=device)
        )
        save()
    del lora

    head, info = build(args, lora=False)
    out["head_model"] = info
    tokens = take(encoded(head, texts, args.seq_len, device), need)
    pooled_features(head, take(tokens, args.feature_batch), device=device)  # warm-up
    sync(device)
    started = time.perf_counter()
    features = pooled_features(head, tokens, batch_size=args.feature_batch, device=device)
    sync(device)
    seconds = time.perf_counter() - started
    out["features"] = {
        "examples": need,
        "batch": args.feature_batch,
        "seconds": seconds,
        "samples_per_s": need / seconds if seconds > 0 else math.nan,
    }
    log(f"pooled features: {out['features']['samples_per_s']:.0f} examples/s")
    on_device = TensorDataset(*(t.to(device) for t in features.tensors))
    for batch in args.batch_list:
        out["rows"].append(
            compare("head features", head.head(), on_device, args, batch=batch, device=device)
        )
        save()
    return out
