"""Which head and which trainable part learn best under DP: the measurement behind the default.

all-MiniLM-L6-v2 was trained as a sentence encoder with mean pooling; transformers'
``AutoModelForSequenceClassification`` reads its untrained ``[CLS]`` pooler instead. Under DP
with a few thousand examples, every extra trainable weight adds noise, so the choice of head
and of what trains decides whether the private model learns at all. Arms, each trained
centrally at the same (epsilon, delta) with the plan fedge would choose (client/training/plan.py)
and scored on the same held-out sentences:

- ``cls pooler + LoRA``: the old default (LoRA r8 on query/value, head on the pooler).
- ``cls pooler, head only``: a linear probe on the pooler output.
- ``mean, head only``: fedge's default, a linear probe on mean-pooled features (cached).
- ``mean + LoRA``: LoRA r8 on query/value with the mean-pooled head.
- ``mean, LP then LoRA``: DP-LP-FT (Kumar et al. 2022 for LP-FT; its DP use, e.g. Tang et al.
  2024): the head is probed first on half the budget, then LoRA and the head train from it on
  the rest (the two phases composed by the RDP accountant, total at most epsilon).

A non-private ``mean, head only`` and the untrained model are printed as ceiling and floor.

Run: ``.venv/bin/python bench/heads.py [--quick] [--json PATH]``. The defaults (2,000 SST-2
training sentences, 872 held out, 64 tokens, epsilon 8) take about 15 minutes on a 2-core CPU,
most of it in the LoRA arms; ``--quick`` (600 / 300, 32 tokens) a few minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

for _key, _value in {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)

import torch  # noqa: E402 - HF_HUB_OFFLINE first
from torch.utils.data import TensorDataset  # noqa: E402 - HF_HUB_OFFLINE first

from client.contract.labelled import LabelledData, load_labelled  # noqa: E402 - HF_HUB_OFFLINE first
from client.contract.model import TrainableModel, build_classifier, quiet_libraries  # noqa: E402 - HF_HUB_OFFLINE first
from client.privacy.accounting import Mechanism, noise_for_budget  # noqa: E402 - HF_HUB_OFFLINE first
from client.training.loop import (  # noqa: E402 - HF_HUB_OFFLINE first
    RoundPlan,
    encode,
    evaluate,
    pick_device,
    pooled_features,
    train_round,
)
from client.training.plan import choose_training  # noqa: E402 - HF_HUB_OFFLINE first
from policies.federation import LoraSpec  # noqa: E402 - HF_HUB_OFFLINE first

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sst2" / "train.tsv"
DELTA = 1e-5
CLIP = 1.0
LORA = LoraSpec(rank=8, alpha=16, target_modules=["query", "value"])


@dataclass
class Row:
    arm: str
    private: bool
    trainable: int
    epochs: int
    batch: int
    learning_rate: float
    noise: float | None
    accuracy: float
    seconds: float


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", default="builtin:all-MiniLM-L6-v2")
    parser.add_argument("--train-size", type=int, default=None, help="default 2000 (600 quick)")
    parser.add_argument("--test-size", type=int, default=None, help="default 872 (300 quick)")
    parser.add_argument("--max-length", type=int, default=None, help="default 64 (32 quick)")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    for name, full, quick in (
        ("train_size", 2000, 600),
        ("test_size", 872, 300),
        ("max_length", 64, 32),
    ):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def subsample(args: argparse.Namespace) -> tuple[LabelledData, LabelledData]:
    data = load_labelled(args.data, num_labels=2)
    order = list(range(len(data)))
    random.Random(args.seed).shuffle(order)
    train = data.subset(order[: args.train_size])
    test = data.subset(order[args.train_size : args.train_size + args.test_size])
    return train, test


def noise(plan: RoundPlan, epsilon: float, history: Sequence[Mechanism] = ()) -> float:
    return noise_for_budget(
        target_epsilon=epsilon,
        delta=DELTA,
        sample_rate=plan.sample_rate,
        steps_per_round=plan.steps,
        rounds=1,
        history=history,
    )


def trainable_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class Bench:
    def __init__(self, args: argparse.Namespace, train: LabelledData, test: LabelledData) -> None:
        self.args, self.train, self.test = args, train, test
        self.device = pick_device()
        self.rows: list[Row] = []

    def model(self, pooling: str, lora: LoraSpec | None) -> TrainableModel:
        return build_classifier(
            self.args.model,
            num_labels=2,
            pooling=pooling,  # type: ignore[arg-type]
            lora=lora,
            seed=self.args.seed,
        )

    def tokens(self, model: TrainableModel, data: LabelledData) -> TensorDataset:
        return encode(model.tokenizer, data.texts, data.labels, max_length=self.args.max_length)

    def run(
        self,
        arm: str,
        module: torch.nn.Module,
        train: TensorDataset,
        test: TensorDataset,
        *,
        lora: bool,
        private: bool,
        epsilon: float | None = None,
        history: Sequence[Mechanism] = (),
        count: int | None = None,
    ) -> RoundPlan:
        choice = choose_training(len(self.train), rounds=1, lora=lora)
        plan = RoundPlan(len(self.train), choice.batch_size, choice.local_epochs, 1.0, CLIP)
        if private:
            sigma = noise(plan, epsilon or self.args.epsilon, history)
            plan = RoundPlan(plan.num_examples, plan.batch_size, plan.epochs, sigma, CLIP)
        started = time.perf_counter()
        train_round(
            module,
            train,
            plan,
            learning_rate=choice.learning_rate,
            max_physical_batch_size=64,
            private=private,
            device=self.device,
            seed=self.args.seed,
        )
        accuracy = evaluate(module, test, device=self.device).accuracy
        self.rows.append(
            Row(
                arm,
                private,
                count if count is not None else trainable_count(module),
                plan.epochs,
                plan.batch_size,
                choice.learning_rate,
                plan.noise_multiplier if private else None,
                accuracy,
                time.perf_counter() - started,
            )
        )
        log(f"{arm}: {accuracy:.4f} ({time.perf_counter() - started:.0f} s)")
        return plan

    def mean_head(self) -> None:
        model = self.model("mean", None)
        train = pooled_features(model, self.tokens(model, self.train), device=self.device)
        test = pooled_features(model, self.tokens(model, self.test), device=self.device)
        floor = evaluate(model.head(), test, device=self.device).accuracy
        self.rows.append(Row("untrained (floor)", False, 0, 0, 0, 0.0, None, floor, 0.0))
        initial = {k: v.clone() for k, v in model.head().state_dict().items()}
        self.run("mean, head only", model.head(), train, test, lora=False, private=False)
        model.head().load_state_dict(initial)
        self.run("mean, head only", model.head(), train, test, lora=False, private=True)

    def cls_head(self) -> None:
        model = self.model("cls", None)

        @torch.no_grad()
        def pooler(data: LabelledData) -> TensorDataset:
            tokens = self.tokens(model, data)
            inner = model.model.get_submodule("bert").to(self.device).eval()
            out = [
                inner(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
                .pooler_output.float()
                .cpu()
                for ids, mask in zip(
                    torch.split(tokens.tensors[0], 128),
                    torch.split(tokens.tensors[1], 128),
                    strict=True,
                )
            ]
            return TensorDataset(torch.cat(out), tokens.tensors[2])

        head = model.model.get_submodule("classifier")
        self.run(
            "cls pooler, head only",
            head,
            pooler(self.train),
            pooler(self.test),
            lora=False,
            private=True,
        )

    def lora(self, pooling: str) -> None:
        model = self.model(pooling, LORA)
        name = f"{'cls pooler' if pooling == 'cls' else 'mean'} + LoRA"
        self.run(
            name,
            model.model,
            self.tokens(model, self.train),
            self.tokens(model, self.test),
            lora=True,
            private=True,
        )

    def lp_then_lora(self) -> None:
        """Half the budget probes the head on cached features; LoRA then starts from it."""
        model = self.model("mean", LORA)
        head = model.model.get_submodule("base_model.model.classifier.modules_to_save.default")
        probe = self.model("mean", None)
        features = pooled_features(probe, self.tokens(probe, self.train), device=self.device)
        test_features = pooled_features(probe, self.tokens(probe, self.test), device=self.device)
        started = time.perf_counter()
        lp = self.run(
            "  LP phase (head, half the budget)",
            probe.head(),
            features,
            test_features,
            lora=False,
            private=True,
            epsilon=self.args.epsilon / 2,
        )
        head.load_state_dict(probe.head().state_dict())
        self.run(
            "mean, LP then LoRA",
            model.model,
            self.tokens(model, self.train),
            self.tokens(model, self.test),
            lora=True,
            private=True,
            history=[(lp.noise_multiplier, lp.sample_rate, lp.steps)],
        )
        self.rows[-1].seconds = time.perf_counter() - started


def log(message: str) -> None:
    print(f"[heads] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_file():
        print(f"heads: --data {args.data}: no such file", file=sys.stderr)
        return 2
    quiet_libraries()
    torch.manual_seed(args.seed)
    train, test = subsample(args)
    bench = Bench(args, train, test)
    bench.mean_head()
    bench.cls_head()
    bench.lora("cls")
    bench.lora("mean")
    bench.lp_then_lora()
    print(
        f"Held-out accuracy, {args.train_size} training / {args.test_size} held-out sentences "
        f"of {args.data.name}, {args.max_length} tokens, central DP-SGD at epsilon "
        f"{args.epsilon:g} (delta {DELTA:g}) unless marked non-private, "
        "plan from client/training/plan.py"
    )
    header = f"{'arm':36} {'DP':>3} {'trainable':>10} {'epochs':>6} {'batch':>5} {'lr':>7}"
    print(header + f" {'noise':>6} {'accuracy':>8} {'s':>6}")
    for row in bench.rows:
        sigma = "-" if row.noise is None else f"{row.noise:.2f}"
        print(
            f"{row.arm:36} {'yes' if row.private else 'no':>3} {row.trainable:>10,} "
            f"{row.epochs:>6} {row.batch:>5} {row.learning_rate:>7g} {sigma:>6} "
            f"{row.accuracy:>8.4f} {row.seconds:>6.0f}"
        )
    if args.json is not None:
        document: dict[str, Any] = {
            "meta": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "rows": [asdict(row) for row in bench.rows],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    best = max((r for r in bench.rows if r.private), key=lambda r: r.accuracy)
    print(f"best under DP: {best.arm.strip()} ({best.accuracy:.4f})")
    return 0 if all(math.isfinite(r.accuracy) for r in bench.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
