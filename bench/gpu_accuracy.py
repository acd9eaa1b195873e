"""Part 2 of ``gpu_suite.py``: SST-2 accuracy of one arm, from the floor to federated DP.

One job: for the head-only or the LoRA arm, score the untrained model, train the non-private
central ceiling and central DP, and run FedAvg over IID holders in-process (each DP with its own
plan for all the rounds). Standard library only at the top, as every module of the suite.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from gpu_workload import NUM_LABELS, Splits, build, encoded, log, subset, sync

if TYPE_CHECKING:
    import torch
    from torch.utils.data import TensorDataset

    from client.training.loop import RoundPlan
    from client.training.plan import TrainingChoice


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
