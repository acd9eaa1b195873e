"""Accuracy of fedge's federated DP model next to the same model trained centrally.

A private, federated model's accuracy says little alone: next to the untrained model (the floor)
and to the same model trained centrally without DP on the same examples (the ceiling), it says
how much was learned and what privacy and federation together cost. Central DP at the same
budget separates the two costs: ceiling minus central DP is the price of privacy, central DP
minus federated DP the price of splitting the data among holders (label skew, smaller batches).

The comparison is only fair when every arm is the same model trained by the same plan, so the
bench runs fedge's own code for each: the federation is
``server.federation.simulation_engine.simulate`` (the real ClientApps, each holder's ledger spending
at most ``--epsilon``), and the central arms are ``client.training.baseline.run_baseline``, the
federation's total epochs as one central run with the plan ``client.training.plan.choose_training``
picks. The defaults are fedge's: a mean-pooled linear head on the frozen encoder, batch size, epochs
and learning rate chosen from each holder's data. Flags such as ``--lora-rank`` or ``--batch-size``
write those settings into the policy instead, to measure a policy that sets them.

A labelled TSV (SST-2 by default) is subsampled and split among the clients (Dirichlet label
skew, ``client.data.partition``) with a stratified held-out part no client sees; the central arms
train on the union of what the clients train on (each keeps 20 % for its own evaluation).

Layout: this file holds the options, the policy, the federated run and its scoring, and ``main``;
its siblings in ``bench/`` (imported by bare name: a script's folder is on ``sys.path``) hold the
rest: ``federated_split.py`` the split among holders and the held-out part,
``federated_table.py`` the rows (the central ones from ``run_baseline``) and their printing.

Run: ``.venv/bin/python bench/federated_accuracy.py --quick`` (600 training and 200 test
examples, 32 tokens, 2 rounds: a minute or two on a 2-core CPU). The defaults (3000 training and
1000 test examples, 64 tokens, 3 rounds) take a few minutes there with the head-only default;
LoRA (``--lora-rank 8``) trains the encoder and takes far longer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
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

# The data split and the table, siblings of this file (on sys.path when run as a script)
from federated_split import Split, split_data  # noqa: E402
from federated_table import Row, central_rows, comparison_line, print_table  # noqa: E402

if TYPE_CHECKING:
    from client.contract.labelled import LabelledData
    from policies import FederationPolicy

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sst2" / "train.tsv"
RUN_ID = "bench-federated-accuracy"
MAX_GRAD_NORM = 1.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Held-out accuracy of fedge's federated DP model (real simulation) next to "
        "the untrained model and central non-DP and DP training of the same model by the same "
        "plan (client.training.baseline). Defaults measure fedge's defaults: a mean-pooled "
        "linear head, training settings chosen per holder. --quick: a minute or two on a 2-core "
        "CPU; the defaults: a few minutes.",
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"labelled TSV (default {DEFAULT_DATA})"
    )
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--num-labels", type=int, default=2)
    parser.add_argument("--model", default=None, help="model source (default: MiniLM builtin)")
    parser.add_argument("--tiny", action="store_true", help="use a tiny random BERT instead")
    parser.add_argument(
        "--pooling",
        choices=("mean", "cls"),
        default="mean",
        help="model.pooling: mean (fedge's default, a linear head on the mean token state) or "
        "cls (transformers' [CLS] pooler classifier)",
    )
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=1.0, help="Dirichlet label skew")
    parser.add_argument("--train-size", type=int, default=None, help="training examples (3000)")
    parser.add_argument("--test-size", type=int, default=None, help="held-out examples (1000)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per example (64)")
    parser.add_argument("--rounds", type=int, default=None, help="federated rounds (3)")
    parser.add_argument(
        "--local-epochs",
        type=int,
        default=None,
        help="training.localEpochs (default: left out, fedge's plan spreads its epochs over "
        "the rounds)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="training.batchSize (default: left out, fedge's plan picks it per holder)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="training.learningRate (default: left out, fedge's plan picks it)",
    )
    parser.add_argument(
        "--lora-rank",
        type=int,
        default=0,
        help="0 (default): no lora section, only the head trains on frozen features; N > 0: "
        "LoRA adapters of rank N (alpha 2N) train with the head (much slower on a CPU)",
    )
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--skip-central-dp", action="store_true", help="leave out central DP")
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
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.lora_rank < 0:
        parser.error("--lora-rank must be 0 (no LoRA) or more")
    return args


def log(message: str) -> None:
    print(f"[federated_accuracy] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Runs


def policy_text(args: argparse.Namespace, source: str) -> str:
    """The bench's policy: what a flag leaves at its default is left out, as a user would."""
    training = {
        "localEpochs": args.local_epochs,
        "batchSize": args.batch_size,
        "learningRate": args.learning_rate,
    }
    given = ", ".join(f"{key}: {value}" for key, value in training.items() if value is not None)
    lines = [
        "apiVersion: fedge/v1",
        "kind: FederationPolicy",
        "metadata: {name: bench-federated-accuracy}",
        "spec:",
        "  model:",
        f"    source: {json.dumps(source)}",
        f"    numLabels: {args.num_labels}",
        f"    maxLength: {args.max_length}",
        f"    pooling: {args.pooling}",
        f"  rounds: {args.rounds}",
        f"  clients: {{perRound: {args.clients}, minimum: {args.clients}, fractionEvaluate: 1.0}}",
        "  roundTimeout: 86400",
        "  aggregation: {strategy: fedavg}",
    ]
    if given:
        lines.append(f"  training: {{{given}}}")
    lines += [
        "  privacy:",
        f"    targetEpsilon: {args.epsilon}",
        f"    delta: {args.delta}",
        f"    maxGradNorm: {MAX_GRAD_NORM}",
        "    accountant: rdp",
    ]
    if args.lora_rank > 0:
        lines.append(f"  lora: {{rank: {args.lora_rank}, alpha: {2 * args.lora_rank}}}")
    return "\n".join(lines) + "\n"


def run_federated(
    args: argparse.Namespace, work: Path, text: str, split: Split
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the federation; returns the final checkpoint's arrays and the metrics lines."""
    from server.federation.app_dir import write_app_dir
    from server.federation.checkpoint import CheckpointStore
    from server.federation.flower_app import settings_from_text
    from server.federation.rounds import RoundReport
    from server.federation.simulation_engine import simulate

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


def evaluate_checkpoints(
    policy: FederationPolicy, arrays: Sequence[dict[str, Any] | None], test: LabelledData, seed: int
) -> list[tuple[float, float]]:
    """(accuracy, loss) on ``test`` of each set of trainable arrays (None: the initial model).

    The model is the one the federation trains (``build_for_policy``); a head-only model is
    scored on pooled features computed once, as the clients and ``run_baseline`` do.
    """
    from client.contract.model import build_for_policy, get_trainable, set_trainable
    from client.training.loop import evaluate, pick_device, training_data

    spec = policy.spec
    device = pick_device()
    model = build_for_policy(spec, seed=seed)
    initial = get_trainable(model.model)
    data = training_data(
        model, test.texts, test.labels, max_length=spec.model.max_length, device=device
    )
    scorer = model.trainee
    scores = []
    for weights in arrays:
        set_trainable(model.model, initial if weights is None else weights)
        result = evaluate(scorer, data, device=device)
        scores.append((result.accuracy, result.loss))
    return scores


def client_plans(args: argparse.Namespace, split: Split) -> list[str]:
    """What each holder's ClientApp trains with: client.training.plan, as the ClientApp calls it."""
    from client.training.plan import choose_training

    return [
        choose_training(
            max(1, size),
            rounds=args.rounds,
            lora=args.lora_rank > 0,
            batch_size=args.batch_size,
            local_epochs=args.local_epochs,
            learning_rate=args.learning_rate,
        ).describe()
        for size in split.client_train_sizes
    ]


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
    from client.contract.model import BUILTIN_MINILM
    from client.contract.tiny import build_tiny_model
    from client.training.baseline import run_baseline
    from client.training.loop import pick_device
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
        plans = client_plans(args, split)
        for index, plan in enumerate(plans):
            log(f"client {index}: {len(split.clients[index])} examples; {plan}")

        fed_started = time.perf_counter()
        arrays, rounds = run_federated(args, work, text, split)
        fed_seconds = time.perf_counter() - fed_started
        alive = leftover_children()
        if alive:
            log(f"warning: processes still running after the simulation: {alive}")
        (floor_acc, floor_loss), (accuracy, loss) = evaluate_checkpoints(
            policy, [None, arrays], split.heldout, args.seed
        )
        spent = [max(r["epsilon"].values(), default=math.nan) for r in rounds]
        steps = sum(sum(r.get("steps", {}).values()) for r in rounds)
        federated = Row(
            "federated DP",
            True,
            spent[-1] if spent else None,
            steps or None,
            sum(split.client_train_sizes),
            accuracy,
            loss,
            fed_seconds,
            f"{args.clients} clients; epsilon: max over clients; seconds incl. start-up",
        )
        log(f"federated DP: accuracy {accuracy:.4f}")

        central_started = time.perf_counter()
        baseline = run_baseline(
            policy,
            split.pooled_train,
            split.heldout,
            private=not args.skip_central_dp,
            seed=args.seed,
        )
        central_seconds = time.perf_counter() - central_started
        if abs(baseline.floor - floor_acc) > 1e-9:
            log(f"warning: run_baseline's floor {baseline.floor:.4f} != {floor_acc:.4f}")
        floor = Row(
            "initial model", False, None, 0, 0, floor_acc, floor_loss, 0.0, "untrained (floor)"
        )
        rows = [floor, federated, *central_rows(args, policy, baseline, central_seconds)]
        for row in rows[2:]:
            log(f"{row.setting}: accuracy {row.accuracy:.4f}")
    meta = {
        "data": str(args.data),
        "data_name": args.data.parent.name or args.data.name,
        "model": "tiny random BERT" if args.tiny else (args.model or BUILTIN_MINILM),
        "pooling": args.pooling,
        "device": str(pick_device()),
        "clients": args.clients,
        "alpha": args.alpha,
        "train_size": args.train_size,
        "test_size": args.test_size,
        "client_train_sizes": split.client_train_sizes,
        "client_label_counts": [c.label_counts() for c in split.clients],
        "client_plans": plans,
        "heldout_majority_accuracy": baseline.majority,
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "lora_rank": args.lora_rank,
        "max_length": args.max_length,
        "epsilon": args.epsilon,
        "delta": args.delta,
        "seed": args.seed,
        "baseline": baseline.to_dict(),
        "policy": text,
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
    from client.contract.labelled import load_labelled
    from client.contract.model import quiet_libraries
    from fedge.errors import FedgeError

    quiet_libraries()
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
    print(f"client plans: {meta['client_plans']}")
    line = comparison_line(rows)
    if line is not None:
        print(line)
    if args.json is not None:
        rows_out = [
            {
                k: None if isinstance(v, float) and math.isnan(v) else v
                for k, v in row.__dict__.items()
            }
            for row in rows
        ]  # NaN (not known) as null: strict JSON
        payload = {"meta": meta, "rows": rows_out, "rounds": rounds}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        log(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
