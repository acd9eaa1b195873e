"""The edge model: fp32 (torch) next to int8 (ONNX Runtime), size, latency and held-out accuracy.

MiniLM with LoRA is fine-tuned centrally (no DP: this measures quantization, not privacy) on part
of a labelled TSV (SST-2 by default), then exported by the real
``server.export.build.export_artifact`` with its default quantization, and measured side by side on
the same held-out examples (never trained on):

- size on disk: the fp32 weights (safetensors), the fp32 ONNX file and the int8 ``model.onnx``;
- latency at batch 1 and ``--max-length`` tokens (64), p50 and p95, the engines interleaved run
  by run so that a noisy neighbour slows them all alike; the same thread count for all;
- accuracy, and agreement with fp32 torch (how often int8 predicts the same class).

With ``--compare`` (the default without ``--quick``) other quantization settings are measured
too (per-tensor, full range, embeddings or the feed-forward output kept in fp32, static
calibration with MinMax, Entropy and Percentile, QDQ and QOperator), which is how the export's
defaults were chosen. Static settings calibrate on training texts, never on the held-out ones.

Run: ``.venv/bin/python bench/edge.py --quick`` (1,000 training examples, default quantization
only: about two minutes on a 2-core CPU); the defaults (8,000 examples, every setting) take
about ten.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from client.contract.labelled import LabelledData
    from server.export.merged import Feeds, MergedModel
    from server.export.quantize import Quantization

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sst2" / "train.tsv"
RUN_ID = "bench-edge"

for _key, _value in {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="fp32 torch vs int8 ONNX Runtime: size, p50/p95 latency (batch 1) and "
        "held-out accuracy of a LoRA-fine-tuned MiniLM. --quick: about two minutes on 2 cores.",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labelled TSV")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--model", default=None, help="model source (default: MiniLM builtin)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random BERT (smoke test)")
    parser.add_argument("--train-size", type=int, default=None, help="(8000; --quick 1000)")
    parser.add_argument("--heldout-size", type=int, default=872, help="(SST-2 dev size)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and ORT intra-op threads (1: stable on a shared machine, where a second "
        "thread waits for a busy core)",
    )
    parser.add_argument("--runs", type=int, default=None, help="latency runs (300; --quick 100)")
    parser.add_argument("--calibration-size", type=int, default=128)
    compare = parser.add_mutually_exclusive_group()
    compare.add_argument("--compare", dest="compare", action="store_true", default=None)
    compare.add_argument("--no-compare", dest="compare", action="store_false")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--agents",
        type=int,
        default=None,
        help="agents for the rollout part (100; --quick 20; 0 skips it)",
    )
    args = parser.parse_args(argv)
    if args.train_size is None:
        args.train_size = 1000 if args.quick else 8000
    if args.runs is None:
        args.runs = 100 if args.quick else 300
    if args.compare is None:
        args.compare = not args.quick
    for name in ("train_size", "heldout_size", "epochs", "batch_size", "threads", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def log(message: str) -> None:
    print(f"[edge] {message}", file=sys.stderr, flush=True)


def quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)


# --------------------------------------------------------------------------------------------
# Data and training


def split(args: argparse.Namespace, data: LabelledData) -> tuple[LabelledData, LabelledData]:
    """A held-out sample, and training examples whose text is not in it (SST-2 repeats some)."""
    order = list(range(len(data)))
    random.Random(args.seed).shuffle(order)
    heldout = data.subset(order[: args.heldout_size])
    seen = set(heldout.texts)
    train = [i for i in order[args.heldout_size :] if data.texts[i] not in seen]
    if len(train) < args.train_size:
        raise SystemExit(f"edge: {args.data} has too few examples for --train-size")
    return data.subset(train[: args.train_size]), heldout


def policy_text(args: argparse.Namespace, source: str, num_labels: int) -> str:
    return f"""apiVersion: fedge/v1
kind: FederationPolicy
metadata: {{name: bench-edge, labels: {{app: sentiment}}}}
spec:
  model: {{source: {json.dumps(source)}, numLabels: {num_labels}, maxLength: {args.max_length}}}
  lora: {{rank: {args.lora_rank}, alpha: {2 * args.lora_rank}, dropout: 0.0}}
"""


def fine_tune(
    args: argparse.Namespace, policy: Any, train: LabelledData
) -> tuple[dict[str, Any], float]:
    from client.contract.model import get_trainable, load_trainable_model
    from client.training.loop import RoundPlan, encode, train_round

    spec = policy.spec
    model = load_trainable_model(
        spec.model.source, num_labels=spec.model.num_labels, lora=spec.lora, seed=args.seed
    )
    dataset = encode(model.tokenizer, train.texts, train.labels, max_length=args.max_length)
    plan = RoundPlan(len(dataset), args.batch_size, args.epochs, 1.0, 1.0)
    result = train_round(
        model.model,
        dataset,
        plan,
        learning_rate=args.learning_rate,
        max_physical_batch_size=args.batch_size,
        private=False,
        seed=args.seed,
    )
    log(f"fine-tuned on {len(dataset)} examples, {result.steps} steps, {result.seconds:.0f} s")
    return get_trainable(model.model), result.seconds


# --------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Row:
    setting: str
    engine: str
    size_bytes: int
    accuracy: float
    agreement: float
    max_logit_diff: float
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    note: str = ""


def variants(layers: int) -> list[tuple[str, Quantization, str]]:
    from server.export.quantize import Quantization

    chosen = Quantization()
    dyn = replace(chosen, mode="dynamic")
    static = replace(chosen, mode="static")
    ffn = tuple(f"layer.{i}/output/dense" for i in range(layers)) + chosen.exclude
    return [
        ("dynamic, ORT defaults", Quantization(per_channel=False, reduce_range=False,
                                               op_types=(), exclude=()), "per-tensor, all ops"),
        ("dynamic per-channel + reduce_range", replace(dyn, reduce_range=True),
         "7-bit weights (x86 without VNNI)"),
        ("dynamic per-tensor + reduce_range",
         replace(dyn, per_channel=False, reduce_range=True), ""),
        ("dynamic, embeddings fp32", replace(dyn, exclude=(*chosen.exclude, "word_embeddings")),
         "Gather of word embeddings kept fp32"),
        ("dynamic, FFN output fp32", replace(dyn, exclude=ffn), "FFN down-projection fp32"),
        ("static QDQ MinMax", static, "MatMul+Gather"),
        ("static QDQ MinMax reduce_range", replace(static, reduce_range=True), "MatMul+Gather"),
        ("static QDQ Entropy", replace(static, calibration="entropy"), "MatMul+Gather"),
        ("static QDQ Percentile", replace(static, calibration="percentile"), "MatMul+Gather"),
        ("static QOperator MinMax", replace(static, qdq=False), "MatMul+Gather"),
        ("static QDQ MinMax, all ops", replace(static, op_types=(), exclude=()),
         "activations of every op int8"),
    ]  # fmt: skip


def latencies(
    engines: dict[str, Callable[[int], object]], count: int, runs: int
) -> dict[str, tuple[float, float]]:
    """p50/p95 in ms; every run times each engine once, on the same example, in turn."""
    times: dict[str, list[float]] = {name: [] for name in engines}
    for call in engines.values():
        for index in range(5):
            call(index % count)  # warm-up: first runs allocate and pick kernels
    for run in range(runs):
        for name, call in engines.items():
            started = time.perf_counter()
            call(run % count)
            times[name].append(time.perf_counter() - started)
    return {
        name: (float(np.percentile(v, 50)) * 1e3, float(np.percentile(v, 95)) * 1e3)
        for name, v in times.items()
    }


def ort_engine(path: Path, feeds: Feeds, threads: int) -> Callable[[int], object]:
    import onnxruntime as ort  # type: ignore[import-untyped]

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle ORT threads spin by default: with several sessions timed in turn, the spinning of
    # one would slow the next engine (torch included), so idle threads sleep here.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]

    def call(index: int) -> object:
        return session.run(["logits"], {k: feeds[k][index : index + 1] for k in names})

    return call


def torch_engine(merged: MergedModel, feeds: Feeds) -> Callable[[int], object]:
    import torch

    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}

    def call(index: int) -> object:
        with torch.inference_mode():
            return merged.model(**{k: v[index : index + 1] for k, v in tensors.items()}).logits

    return call


def dir_size(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file())


def run_all(args: argparse.Namespace, data: LabelledData, work: Path) -> dict[str, Any]:  # noqa: PLR0915
    import torch

    from client.contract.model import BUILTIN_MINILM
    from client.contract.tiny import build_tiny_model
    from fedge.signing import generate_keypair
    from policies import FederationPolicy, check_text
    from server.export.build import export_artifact
    from server.export.heldout import HeldOut
    from server.export.merged import heldout_feeds, load_merged_model, torch_logits
    from server.export.onnx_export import export_onnx, onnx_logits
    from server.export.quantize import quantize_onnx
    from server.federation.checkpoint import Checkpoint

    started = time.perf_counter()
    train, held = split(args, data)
    source = (
        str(build_tiny_model(work / "tiny", seed=args.seed))
        if args.tiny
        else (args.model or BUILTIN_MINILM)
    )
    report = check_text(policy_text(args, source, data.num_labels), name="bench policy")
    report.raise_for_problems()
    policy = report.documents[0].document
    assert isinstance(policy, FederationPolicy)
    arrays, train_seconds = fine_tune(args, policy, train)
    checkpoint = Checkpoint(run_id=RUN_ID, round=1, arrays=arrays)
    heldout = HeldOut(held.texts, held.labels, data.label_names, str(args.data))

    export_started = time.perf_counter()
    result = export_artifact(
        policy=policy,
        checkpoint=checkpoint,
        heldout=heldout,
        keypair=generate_keypair(),
        out=work / "artifact",
        max_length=args.max_length,
        force=True,
    )
    export_seconds = time.perf_counter() - export_started
    log(f"exported in {export_seconds:.0f} s: {result.metrics}")

    torch.set_num_threads(args.threads)  # training and export used every core; timing uses these
    merged = load_merged_model(policy, arrays)
    merged.model.save_pretrained(work / "fp32-torch")
    feeds = heldout_feeds(merged, held.texts, max_length=args.max_length)
    calibration = heldout_feeds(
        merged, train.texts[: args.calibration_size], max_length=args.max_length
    )
    fp32 = export_onnx(merged, work / "fp32.onnx", max_length=args.max_length)
    reference = torch_logits(merged, feeds)
    labels = np.asarray(held.labels)

    def row(setting: str, engine: str, size: int, logits: Any, note: str = "") -> Row:
        return Row(
            setting=setting,
            engine=engine,
            size_bytes=size,
            accuracy=float(np.mean(logits.argmax(-1) == labels)),
            agreement=float(np.mean(logits.argmax(-1) == reference.argmax(-1))),
            max_logit_diff=float(np.abs(logits - reference).max()),
            note=note,
        )

    chosen = result.path / "model.onnx"
    rows = [
        row("fp32", "torch", dir_size(work / "fp32-torch", "*.safetensors"), reference,
            "safetensors weights"),
        row("fp32", "ONNX Runtime", fp32.stat().st_size, onnx_logits(fp32, feeds)),
        row("int8, export default", "ONNX Runtime", chosen.stat().st_size,
            onnx_logits(chosen, feeds), f"artifact: {result.quantization.describe()}"),
    ]  # fmt: skip
    engines = {
        "fp32/torch": torch_engine(merged, feeds),
        "fp32/ONNX Runtime": ort_engine(fp32, feeds, args.threads),
        "int8/ONNX Runtime": ort_engine(chosen, feeds, args.threads),
    }
    keys = list(engines)
    if args.compare:
        layers = int(getattr(merged.model.config, "num_hidden_layers", 6))
        for index, (name, settings, note) in enumerate(variants(layers)):
            path = work / f"variant-{index:02d}.onnx"
            try:
                quantize_onnx(fp32, path, settings, calibration=calibration)
            except Exception as exc:  # noqa: BLE001 - a failed setting is a result, not a crash
                log(f"{name}: failed ({exc})")
                continue
            rows.append(
                row(name, "ONNX Runtime", path.stat().st_size, onnx_logits(path, feeds), note)
            )
            engines[name] = ort_engine(path, feeds, args.threads)
            keys.append(name)
            log(f"{name}: accuracy {rows[-1].accuracy:.4f}, agreement {rows[-1].agreement:.4f}")
    log(f"latency: {args.runs} interleaved runs of {len(engines)} engines at batch 1")
    timed = latencies(engines, len(held.texts), args.runs)
    for item, key in zip(rows, keys, strict=True):
        item.p50_ms, item.p95_ms = timed[key]
    return {
        "rows": [asdict(r) for r in rows],
        "metrics": result.metrics,
        "meta": {
            "model": "tiny random BERT" if args.tiny else (args.model or BUILTIN_MINILM),
            "data": str(args.data),
            "train_size": len(train),
            "heldout_size": len(held),
            "heldout_majority_accuracy": max(held.label_counts()) / len(held),
            "max_length": args.max_length,
            "epochs": args.epochs,
            "learning_rate": args.learning_rate,
            "lora_rank": args.lora_rank,
            "threads": args.threads,
            "runs": args.runs,
            "train_seconds": train_seconds,
            "export_seconds": export_seconds,
            "artifact_bytes": sum(e.size for e in result.manifest.files),
            "cpu": _cpu(),
            "seconds": time.perf_counter() - started,
        },
    }


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def print_table(figures: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    meta = figures["meta"]
    rows = figures["rows"]
    base = rows[0]
    table = Table(
        title=(
            f"Edge model: {meta['model']}, LoRA r{meta['lora_rank']} fine-tuned on "
            f"{meta['train_size']} examples; {meta['heldout_size']} held out; batch 1, "
            f"{meta['max_length']} tokens, {meta['threads']} threads, {meta['runs']} runs; "
            "ratios against fp32 torch"
        )
    )
    columns = ("setting", "engine", "MB", "smaller", "p50 ms", "p95 ms", "faster (p50)",
               "accuracy", "Δ points", "agrees", "max |Δlogit|", "note")  # fmt: skip
    for name in columns:
        table.add_column(name, justify="left" if name in ("setting", "engine", "note") else "right")
    for r in rows:
        table.add_row(
            r["setting"],
            r["engine"],
            f"{r['size_bytes'] / 1e6:.1f}",
            f"{base['size_bytes'] / r['size_bytes']:.2f}x",
            f"{r['p50_ms']:.2f}",
            f"{r['p95_ms']:.2f}",
            f"{base['p50_ms'] / r['p50_ms']:.2f}x",
            f"{r['accuracy']:.4f}",
            f"{100 * (r['accuracy'] - base['accuracy']):+.2f}",
            f"{r['agreement']:.1%}",
            f"{r['max_logit_diff']:.3f}",
            r["note"],
        )
    Console(width=max(170, Console().width)).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_file():
        print(f"edge: {args.data}: no such file (pass --data PATH)", file=sys.stderr)
        return 2
    quiet()
    from client.contract.labelled import load_labelled
    from fedge.errors import FedgeError

    try:
        data = load_labelled(
            args.data, text_column=args.text_column, label_column=args.label_column
        )
    except FedgeError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fedge-edge-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        figures = run_all(args, data, work)
    print_table(figures)
    print(
        f"held-out majority class {figures['meta']['heldout_majority_accuracy']:.4f}; "
        f"artifact {figures['meta']['artifact_bytes'] / 1e6:.1f} MB in all; "
        f"manifest metrics {figures['metrics']}"
    )
    agents = args.agents if args.agents is not None else (20 if args.quick else 100)
    if agents > 0:  # the second half: a rollout reaching N agents through one mosquitto
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import edge_rollout

        log(f"rollout to {agents} agents through one mosquitto ...")
        figures["rollout"] = edge_rollout.rollout_benchmark(agents, quick=args.quick)
        edge_rollout.print_table(figures["rollout"])
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        log(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
