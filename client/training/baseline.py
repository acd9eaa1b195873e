"""What a data set reaches without the federation and without DP: the floor and the ceiling.

A private model's accuracy means little alone. Next to the untrained model (the floor: what
the federation starts from) and to the same model trained centrally without DP on the same
data (the ceiling: what privacy and federation together may cost at most), it says how much
was learned and what was paid for privacy. A data holder runs this on its own data to see the
price of its budget before it joins; the demo runs it on all holders' data pooled, which only a
demo (whose operator made the data) can do.

Training follows the federation's own plan (client/training/plan.py) as one central run of all its
epochs; with ``private`` it is DP-SGD at the policy's budget, priced by Opacus's accountant.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass

from client.contract.labelled import LabelledData
from client.contract.model import build_for_policy, get_trainable, set_trainable
from client.privacy.accounting import noise_for_budget
from client.training.loop import (
    RoundPlan,
    evaluate,
    pick_device,
    train_round,
    training_data,
)
from client.training.plan import choose_training
from policies import FederationPolicy

__all__ = ["Baseline", "run_baseline"]


@dataclass(frozen=True, slots=True)
class Baseline:
    """Accuracies on the held-out set; ``central_dp`` is None unless asked for."""

    train_examples: int
    heldout_examples: int
    majority: float
    floor: float
    ceiling: float
    central_dp: float | None
    epochs: int
    batch_size: int
    learning_rate: float

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def run_baseline(
    policy: FederationPolicy,
    train: LabelledData,
    heldout: LabelledData,
    *,
    private: bool = False,
    seed: int = 0,
) -> Baseline:
    """Floor (untrained), ceiling (central, non-private) and optionally central DP."""
    spec = policy.spec
    choice = choose_training(
        max(1, len(train)),
        rounds=spec.rounds,
        lora=spec.lora is not None,
        batch_size=spec.training.batch_size,
        local_epochs=spec.training.local_epochs,
        learning_rate=spec.training.learning_rate,
    )
    epochs = choice.local_epochs * spec.rounds  # the federation's epochs, as one central run
    batch, rate = choice.batch_size, choice.learning_rate
    device = pick_device()

    model = build_for_policy(spec, seed=seed)
    initial = get_trainable(model.model)
    length = spec.model.max_length
    # computed once for every run below (a frozen encoder runs once per example)
    train_set = training_data(model, train.texts, train.labels, max_length=length, device=device)
    held_set = training_data(model, heldout.texts, heldout.labels, max_length=length, device=device)
    trainee = model.trainee
    floor = evaluate(trainee, held_set, device=device).accuracy
    runs = {"ceiling": RoundPlan(len(train), batch, epochs, 1.0, spec.privacy.max_grad_norm)}
    if private:
        privacy = spec.privacy
        sigma = noise_for_budget(
            target_epsilon=privacy.target_epsilon,
            delta=privacy.delta,
            sample_rate=runs["ceiling"].sample_rate,
            steps_per_round=runs["ceiling"].steps,
            rounds=1,
            accountant=privacy.accountant,
        )
        runs["central_dp"] = RoundPlan(len(train), batch, epochs, sigma, privacy.max_grad_norm)
    scores: dict[str, float] = {}
    for name, plan in runs.items():
        set_trainable(model.model, initial)
        train_round(
            trainee,
            train_set,
            plan,
            learning_rate=rate,
            max_physical_batch_size=spec.training.max_physical_batch_size,
            private=name == "central_dp",
            device=device,
            seed=seed,
        )
        scores[name] = evaluate(trainee, held_set, device=device).accuracy
    counts = Counter(heldout.labels)
    return Baseline(
        train_examples=len(train),
        heldout_examples=len(heldout),
        majority=max(counts.values()) / len(heldout) if len(heldout) else math.nan,
        floor=floor,
        ceiling=scores["ceiling"],
        central_dp=scores.get("central_dp"),
        epochs=epochs,
        batch_size=batch,
        learning_rate=rate,
    )
