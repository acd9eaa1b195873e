"""Accuracy of fedge's federated DP model next to centralized fine-tuning of the same model.

A labelled TSV (SST-2 by default) is subsampled, split among N simulated clients (Dirichlet label
skew, ``client.partition``) with a stratified held-out test part that no client sees. Then:

(a) ``federated DP``: the real fedge federation (``server.simulation.simulate`` with a
    FederationPolicy, Flower's simulation engine, every client spending at most ``--epsilon``
    through its own ledger); the final global adapter is read from the run's checkpoint store and
    evaluated on the held-out part with a freshly loaded model;
(b) ``central non-DP``: the same LoRA model trained by ``train_round(private=False)`` on the
    pooled training examples the clients train on (each client keeps 20 % for its own
    evaluation, as the ClientApp does), for ``rounds x localEpochs`` epochs: about the same number
    of optimizer steps as all clients together take, same batch size and learning rate;
(c) ``central DP`` (unless ``--skip-central-dp``): (b) with DP-SGD at the same epsilon and delta.

The untrained model (initial adapter and head) is evaluated too, as the floor.

Run: ``.venv/bin/python bench/federated_accuracy.py --quick`` (600 training and 200 test examples,
32 tokens, 2 rounds: a few minutes on a 2-core CPU). The defaults (3000 training and 1000 test
examples, 64 tokens, 3 rounds) take roughly half an hour on such a CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "PYTHONWARNINGS": "ignore::FutureWarning",  # transformers' deprecations, in the Ray workers
}.items():
    os.environ.setdefault(_key, _value)

if TYPE_CHECKING:
    import torch
    from torch.utils.data import TensorDataset

    from client.data import LabelledData
    from client.model import TrainableModel
    from policies import FederationPolicy

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sst2" / "train.tsv"
RUN_ID = "bench-federated-accuracy"
MAX_GRAD_NORM = 1.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Held-out accuracy of fedge's federated DP model (real simulation) next to "
        "centralized non-DP and DP fine-tuning of the same LoRA model. --quick: a few minutes "
        "on a 2-core CPU; the defaults: roughly 30 minutes.",
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"labelled TSV (default {DEFAULT_DATA})"
    )
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--num-labels", type=int, default=2)
    parser.add_argument("--model", default=None, help="model source (default: MiniLM builtin)")
    parser.add_argument("--tiny", action="store_true", help="use a tiny random BERT instead")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=1.0, help="Dirichlet label skew")
    parser.add_argument("--train-size", type=int, default=None, help="training examples (3000)")
    parser.add_argument("--test-size", type=int, default=None, help="held-out examples (1000)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per example (64)")
    parser.add_argument("--rounds", type=int, default=None, help="federated rounds (3)")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=2e-3,
        help="every arm (default 2e-3: at the policy default 5e-4 even central non-DP stays at "
        "the majority class within --quick's 62 steps)",
    )
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--skip-central-dp", action="store_true", help="leave out (c)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the run here (else tmp)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    parser.add_argument(
        "--quick", action="store_true", help="600 train / 200 test examples, 32 tokens, 2 rounds"
    )
    args = parser.parse_args(argv)
    defaults = (600, 200, 32, 2) if args.quick else (3000, 1000, 64, 3)
    for name, default in zip(
        ("train_size", "test_size", "max_length", "rounds"), defaults, strict=True
    ):
        if getattr(args, name) is None:
            setattr(args, name, default)
    for name in ("clients", "train_size", "test_size", "rounds", "local_epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", message=".*Full backward hook.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    logging.getLogger("opacus").setLevel(logging.ERROR)


def log(message: str) -> None:
    print(f"[federated_accuracy] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class Split:
    """The subsample, each client's file, the held-out part, and what the clients train on."""

    clients: list[LabelledData]
    heldout: LabelledData
    pooled_train: LabelledData  # the union of the clients' training parts
    client_train_sizes: list[int]


def split_data(args: argparse.Namespace, data: LabelledData, data_dir: Path) -> Split:
    from client.flower_app import ClientSettings, _split
    from client.partition import partition_indices, write_partition

    wanted = args.train_size + args.test_size
    if wanted > len(data):
        raise SystemExit(
            f"federated_accuracy: {args.data} has {len(data)} examples, fewer than the "
            f"{wanted} asked for (--train-size + --test-size)"
        )
    chosen = sorted(random.Random(args.seed).sample(range(len(data)), wanted))
    sample = data.subset(chosen)
    partition = partition_indices(
        sample.labels,
        args.clients,
        alpha=args.alpha,
        seed=args.seed,
        heldout_fraction=args.test_size / wanted,
    )
    write_partition(sample, partition, data_dir, format="tsv")
    clients = [sample.subset(indices) for indices in partition.clients]
    # What each simulated ClientApp trains on: its file minus its own evaluation share.
    defaults = ClientSettings(name="bench", data_path=Path(), state_dir=Path())
    trains = [
        _split(client, fraction=defaults.eval_fraction, seed=defaults.seed)[0] for client in clients
    ]
    texts = [text for train in trains for text in train.texts]
    labels = [label for train in trains for label in train.labels]
    pooled = type(sample)(
        texts=tuple(texts),
        labels=tuple(labels),
        label_names=sample.label_names,
        path=sample.path,
        named_labels=sample.named_labels,
    )
    return Split(clients, sample.subset(partition.heldout), pooled, [len(t) for t in trains])


# --------------------------------------------------------------------------------------------
# Runs


@dataclass
class Row:
    setting: str
    private: bool
    epsilon: float | None
    steps: int
    train_examples: int
    accuracy: float
    loss: float
    seconds: float
    note: str = ""


def policy_text(args: argparse.Namespace, source: str) -> str:
    return f"""apiVersion: fedge/v1
kind: FederationPolicy
metadata: {{name: bench-federated-accuracy}}
spec:
  model:
    source: {json.dumps(source)}
    numLabels: {args.num_labels}
    maxLength: {args.max_length}
  rounds: {args.rounds}
  clients: {{perRound: {args.clients}, minimum: {args.clients}, fractionEvaluate: 1.0}}
  roundTimeout: 86400
  aggregation: {{strategy: fedavg}}
  training:
    localEpochs: {args.local_epochs}
    batchSize: {args.batch_size}
    learningRate: {args.learning_rate}
    maxPhysicalBatchSize: {max(32, 2 * args.batch_size)}
  privacy:
    targetEpsilon: {args.epsilon}
    delta: {args.delta}
    maxGradNorm: {MAX_GRAD_NORM}
    accountant: rdp
  lora: {{rank: {args.lora_rank}, alpha: {2 * args.lora_rank}}}
"""


def fresh_model(policy: FederationPolicy, seed: int) -> TrainableModel:
    from client.model import load_trainable_model

    spec = policy.spec
    return load_trainable_model(
        spec.model.source, num_labels=spec.model.num_labels, lora=spec.lora, seed=seed
    )


def encoded(model: TrainableModel, data: LabelledData, max_length: int) -> TensorDataset:
    from client.training import encode

    return encode(model.tokenizer, data.texts, data.labels, max_length=max_length)


def run_federated(
    args: argparse.Namespace, work: Path, text: str, split: Split
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the federation; returns the final checkpoint's arrays and the metrics lines."""
    from server.app_dir import write_app_dir
    from server.checkpoint import CheckpointStore
    from server.federation import RoundReport
    from server.flower_app import settings_from_text
    from server.simulation import simulate

    run_dir = work / "run"
    settings = settings_from_text(text, workdir=run_dir, run_id=RUN_ID, name="bench policy")
    app = write_app_dir(
        work / "app",
        {
            "policy": text,
            "workdir": str(run_dir),
            "run-id": RUN_ID,
            "data-dir": str(work / "data"),
            "state-dir": str(work / "state"),
        },
    )

    def progress(report: RoundReport) -> None:
        spent = max(report.epsilon.values(), default=math.nan)
        log(
            f"round {report.round}: {report.status}, clients {len(report.clients)}, train loss "
            f"{report.train_loss}, client-eval accuracy {report.eval_accuracy}, max epsilon "
            f"{spent:.2f}, {report.seconds:.0f} s"
        )

    sizes = split.client_train_sizes
    log(f"federation: {args.clients} clients, {args.rounds} rounds, training examples {sizes}")
    simulate(settings, num_clients=args.clients, app_dir=app, progress=progress)
    checkpoint = CheckpointStore(run_dir / "checkpoints").latest()
    if checkpoint is None:
        raise SystemExit("federated_accuracy: the federation wrote no checkpoint")
    if checkpoint.round != args.rounds:
        log(f"warning: the last checkpoint is round {checkpoint.round} of {args.rounds}")
    metrics_path = run_dir / "metrics.jsonl"
    lines = metrics_path.read_text(encoding="utf-8").splitlines() if metrics_path.exists() else []
    return dict(checkpoint.arrays), [json.loads(line) for line in lines if line.strip()]


def evaluate_arrays(
    policy: FederationPolicy, arrays: dict[str, Any] | None, test: LabelledData, seed: int
) -> tuple[float, float]:
    from client.model import set_trainable
    from client.training import evaluate

    model = fresh_model(policy, seed)
    if arrays is not None:
        set_trainable(model.model, arrays)
    scores = evaluate(model.model, encoded(model, test, policy.spec.model.max_length))
    return scores.accuracy, scores.loss


def run_central(
    args: argparse.Namespace,
    policy: FederationPolicy,
    split: Split,
    *,
    private: bool,
    device: torch.device,
) -> Row:
    from client.training import RoundPlan, evaluate, plan_round, train_round

    spec = policy.spec
    model = fresh_model(policy, args.seed)
    train = encoded(model, split.pooled_train, spec.model.max_length)
    epochs = args.rounds * args.local_epochs
    if private:
        plan = plan_round(
            num_examples=len(train),
            batch_size=args.batch_size,
            epochs=epochs,
            max_grad_norm=MAX_GRAD_NORM,
            rounds=1,
            target_epsilon=args.epsilon,
            delta=args.delta,
            accountant="rdp",
        )
    else:
        plan = RoundPlan(len(train), args.batch_size, epochs, 1.0, MAX_GRAD_NORM)
    result = train_round(
        model.model,
        train,
        plan,
        learning_rate=args.learning_rate,
        max_physical_batch_size=spec.training.max_physical_batch_size,
        private=private,
        device=device,
        seed=args.seed,
    )
    scores = evaluate(model.model, encoded(model, split.heldout, spec.model.max_length))
    epsilon = central_epsilon(plan, args.delta) if private else None
    return Row(
        setting="central DP" if private else "central non-DP",
        private=private,
        epsilon=epsilon,
        steps=result.steps,
        train_examples=len(train),
        accuracy=scores.accuracy,
        loss=scores.loss,
        seconds=result.seconds,
        note=f"noise multiplier {plan.noise_multiplier:.3f}" if private else "",
    )


def central_epsilon(plan: Any, delta: float) -> float:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(plan.noise_multiplier, plan.sample_rate, plan.steps)]
    return float(accountant.get_epsilon(delta=delta))


def federated_steps(args: argparse.Namespace, split: Split) -> int:
    """Optimizer steps all clients take together: each runs ceil(n / batch) per epoch."""
    per_round: int = sum(
        int(args.local_epochs) * math.ceil(size / args.batch_size)
        for size in split.client_train_sizes
    )
    return int(args.rounds) * per_round


# --------------------------------------------------------------------------------------------
# Output


def print_table(rows: list[Row], meta: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=(
            f"Held-out accuracy: {meta['model']}, {meta['data_name']} ({meta['train_size']} "
            f"train / {meta['test_size']} held out), {meta['clients']} clients (Dirichlet "
            f"alpha {meta['alpha']}), {meta['rounds']} rounds, batch {meta['batch_size']}, "
            f"lr {meta['learning_rate']}, {meta['max_length']} tokens, epsilon {meta['epsilon']}"
        )
    )
    for name, justify in (
        ("setting", "left"),
        ("DP", "left"),
        ("epsilon spent", "right"),
        ("optimizer steps", "right"),
        ("train examples", "right"),
        ("accuracy", "right"),
        ("loss", "right"),
        ("train s", "right"),
        ("note", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(
            row.setting,
            "yes" if row.private else "no",
            "-" if row.epsilon is None else f"{row.epsilon:.2f}",
            str(row.steps),
            str(row.train_examples),
            f"{row.accuracy:.4f}",
            f"{row.loss:.4f}",
            f"{row.seconds:.0f}",
            row.note,
        )
    console = Console(width=max(150, Console().width))
    console.print(table)


def leftover_children(wait: float = 15.0) -> list[str]:
    """Processes this script started that are still alive after ``wait`` seconds (Ray's, say)."""
    import psutil  # type: ignore[import-untyped]

    me = psutil.Process()
    deadline = time.monotonic() + wait
    while True:
        alive = []
        for child in me.children(recursive=True):
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{child.pid} {' '.join(child.cmdline())[:100]}")
            except psutil.Error:
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


def run_all(
    args: argparse.Namespace, data: LabelledData
) -> tuple[list[Row], dict[str, Any], list[dict[str, Any]]]:
    from client.model import BUILTIN_MINILM, build_tiny_model
    from client.training import pick_device
    from policies import FederationPolicy, check_text

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedge-acc-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        source = (
            str(build_tiny_model(work / "tiny-model", seed=args.seed))
            if args.tiny
            else (args.model or BUILTIN_MINILM)
        )
        split = split_data(args, data, work / "data")
        text = policy_text(args, source)
        report = check_text(text, name="bench policy")
        report.raise_for_problems()
        policy = report.documents[0].document
        assert isinstance(policy, FederationPolicy)
        device = pick_device()
        accuracy, loss = evaluate_arrays(policy, None, split.heldout, args.seed)
        rows = [Row("initial model", False, None, 0, 0, accuracy, loss, 0.0, "untrained")]

        fed_started = time.perf_counter()
        arrays, rounds = run_federated(args, work, text, split)
        fed_seconds = time.perf_counter() - fed_started
        alive = leftover_children()
        if alive:
            log(f"warning: processes still running after the simulation: {alive}")
        accuracy, loss = evaluate_arrays(policy, arrays, split.heldout, args.seed)
        spent = [max(r["epsilon"].values(), default=math.nan) for r in rounds]
        rows.append(
            Row(
                "federated DP",
                True,
                spent[-1] if spent else None,
                federated_steps(args, split),
                sum(split.client_train_sizes),
                accuracy,
                loss,
                fed_seconds,
                f"{args.clients} clients; epsilon: max over clients; time includes start-up",
            )
        )
        log(f"federated DP: accuracy {accuracy:.4f}")
        for private in (False, True):
            if private and args.skip_central_dp:
                continue
            row = run_central(args, policy, split, private=private, device=device)
            log(f"{row.setting}: accuracy {row.accuracy:.4f} in {row.seconds:.0f} s")
            rows.append(row)
    meta = {
        "data": str(args.data),
        "data_name": args.data.parent.name or args.data.name,
        "model": "tiny random BERT" if args.tiny else (args.model or BUILTIN_MINILM),
        "device": str(device),
        "clients": args.clients,
        "alpha": args.alpha,
        "train_size": args.train_size,
        "test_size": args.test_size,
        "client_train_sizes": split.client_train_sizes,
        "client_label_counts": [c.label_counts() for c in split.clients],
        "heldout_majority_accuracy": max(split.heldout.label_counts()) / len(split.heldout),
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "lora_rank": args.lora_rank,
        "max_length": args.max_length,
        "epsilon": args.epsilon,
        "delta": args.delta,
        "seed": args.seed,
        "seconds": time.perf_counter() - started,
    }
    return rows, meta, rounds


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_file():
        print(
            f"federated_accuracy: {args.data}: no such file (pass --data PATH to a labelled TSV)",
            file=sys.stderr,
        )
        return 2
    quiet()
    from client.data import load_labelled
    from fedge.errors import FedgeError

    try:
        data = load_labelled(
            args.data,
            text_column=args.text_column,
            label_column=args.label_column,
            num_labels=args.num_labels,
        )
    except FedgeError as exc:
        print(f"federated_accuracy: {exc}", file=sys.stderr)
        return 2
    rows, meta, rounds = run_all(args, data)
    print_table(rows, meta)
    print(
        f"held-out majority class: {meta['heldout_majority_accuracy']:.4f}; client label counts "
        f"{meta['client_label_counts']}; client-eval accuracy by round "
        f"{[r.get('eval_accuracy') for r in rounds]}"
    )
    if args.json is not None:
        payload = {"meta": meta, "rows": [row.__dict__ for row in rows], "rounds": rounds}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        log(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
