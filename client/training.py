"""Local fine-tuning, with DP-SGD (Opacus) or without (for comparison), and evaluation.

DP-SGD here is Opacus's: Poisson sampling of each batch, per-sample gradient clipping to
``max_grad_norm``, Gaussian noise of ``noise_multiplier * max_grad_norm``. What one round costs in
privacy depends only on (noise multiplier, sample rate, steps), which :class:`RoundPlan` carries so
that the ledger can price a round before any example is touched.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.grad_sample import GradSampleModule
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch.utils.data import DataLoader, TensorDataset
from transformers import PreTrainedTokenizerBase

from client.ledger import Accountant, Mechanism, noise_for_budget
from fedge.errors import UsageError

__all__ = [
    "EvalResult",
    "RoundPlan",
    "TrainResult",
    "encode",
    "evaluate",
    "pick_device",
    "plan_round",
    "train_round",
]


def pick_device() -> torch.device:
    """CUDA when present, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def encode(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    max_length: int,
) -> TensorDataset:
    """Tokenize once, pad to ``max_length``: fixed shapes keep per-sample gradients cheap."""
    batch = tokenizer(
        list(texts),
        max_length=max_length,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    )
    return TensorDataset(
        batch["input_ids"], batch["attention_mask"], torch.tensor(list(labels), dtype=torch.long)
    )


@dataclass(frozen=True, slots=True)
class RoundPlan:
    """What a round will do, known before it runs: enough to price it in epsilon."""

    num_examples: int
    batch_size: int
    epochs: int
    noise_multiplier: float
    max_grad_norm: float

    @property
    def sample_rate(self) -> float:
        # What Opacus's make_private uses (1 / batches per epoch), so the ledger's price equals
        # the engine's own accounting even when the examples do not divide into whole batches.
        return 1.0 / math.ceil(self.num_examples / self.batch_size)

    @property
    def steps(self) -> int:
        return self.epochs * math.ceil(self.num_examples / self.batch_size)


def plan_round(
    *,
    num_examples: int,
    batch_size: int,
    epochs: int,
    max_grad_norm: float,
    rounds: int,
    target_epsilon: float,
    delta: float,
    accountant: Accountant,
    noise_multiplier: float | None = None,
    history: Sequence[Mechanism] = (),
) -> RoundPlan:
    """The round's plan; without a fixed noise multiplier, the one that spreads the budget evenly.

    The noise is chosen so that ``history`` (what the ledger already holds) plus ``rounds``
    rounds of this plan spend ``target_epsilon``: each round then costs about the same, and the
    ledger can admit exactly the rounds still planned.
    """
    if num_examples < 1:
        raise UsageError("the data holder has no training examples")
    plan = RoundPlan(num_examples, batch_size, epochs, noise_multiplier or 1.0, max_grad_norm)
    if noise_multiplier is None:
        sigma = noise_for_budget(
            target_epsilon=target_epsilon,
            delta=delta,
            sample_rate=plan.sample_rate,
            steps_per_round=plan.steps,
            rounds=rounds,
            accountant=accountant,
            history=history,
        )
        plan = RoundPlan(num_examples, batch_size, epochs, sigma, max_grad_norm)
    return plan


@dataclass(frozen=True, slots=True)
class TrainResult:
    num_examples: int
    steps: int
    loss: float
    seconds: float
    samples_seen: int


def _forward_loss(
    model: torch.nn.Module, batch: Sequence[torch.Tensor], device: torch.device
) -> torch.Tensor:
    input_ids, attention_mask, labels = (t.to(device) for t in batch)
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    loss: torch.Tensor = output.loss
    return loss


def _batches(
    loader: DataLoader[tuple[torch.Tensor, ...]],
    optimizer: torch.optim.Optimizer,
    private: bool,
    max_physical_batch_size: int,
) -> Iterator[Sequence[torch.Tensor]]:
    if not private:
        yield from loader
        return
    with BatchMemoryManager(
        data_loader=loader, max_physical_batch_size=max_physical_batch_size, optimizer=optimizer
    ) as physical:
        yield from physical


def _empty_step(
    params: Sequence[torch.nn.Parameter], optimizer: torch.optim.Optimizer, private: bool
) -> None:
    if not private:
        return
    for param in params:
        # Opacus clips and sums per-sample gradients; zero samples sum to zero, plus the noise.
        param.grad_sample = torch.zeros((0, *param.shape), dtype=param.dtype, device=param.device)  # type: ignore[attr-defined]
    optimizer.step()


def train_round(
    model: torch.nn.Module,
    dataset: TensorDataset,
    plan: RoundPlan,
    *,
    learning_rate: float,
    max_physical_batch_size: int,
    private: bool = True,
    device: torch.device | None = None,
    seed: int | None = None,
) -> TrainResult:
    """Train ``model`` in place for one round; with ``private`` the step is DP-SGD.

    Opacus wraps the model for the round and the wrapping is removed afterwards, so the same
    warm model object serves every round of a long-lived ClientApp.
    """
    device = device or pick_device()
    model.to(device)
    model.train()
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    loader = DataLoader(dataset, batch_size=plan.batch_size, shuffle=True, generator=generator)
    engine_module: torch.nn.Module = model
    if private:
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        with warnings.catch_warnings():
            # Opacus warns about its non-cryptographic RNG (secure_mode is for final training)
            warnings.simplefilter("ignore")
            engine_module, optimizer, loader = engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=plan.noise_multiplier,
                max_grad_norm=plan.max_grad_norm,
                poisson_sampling=True,
            )
    steps, seen, total_loss = 0, 0, 0.0
    started = time.perf_counter()
    try:
        for _epoch in range(plan.epochs):
            for batch in _batches(loader, optimizer, private, max_physical_batch_size):
                optimizer.zero_grad(set_to_none=True)
                if len(batch[0]) == 0:
                    # Poisson sampling can draw an empty batch. The model cannot run on it, but
                    # the DP step must still happen (noise only): skipping it would make the
                    # step count, and so the privacy, depend on the data.
                    _empty_step(params, optimizer, private)
                    steps += 1
                    continue
                loss = _forward_loss(engine_module, batch, device)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                # With physical batches smaller than the logical one, Opacus skips the step
                # until the logical batch is complete; only real steps count.
                if not getattr(optimizer, "_is_last_step_skipped", False):
                    steps += 1
                seen += len(batch[0])
                total_loss += float(loss.detach()) * len(batch[0])
    finally:
        if isinstance(engine_module, GradSampleModule):
            engine_module.to_standard_module()  # drop Opacus hooks: the model stays reusable
    return TrainResult(
        num_examples=len(dataset),
        steps=steps,
        loss=total_loss / max(1, seen),
        seconds=time.perf_counter() - started,
        samples_seen=seen,
    )


@dataclass(frozen=True, slots=True)
class EvalResult:
    num_examples: int
    loss: float
    accuracy: float


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: TensorDataset,
    *,
    batch_size: int = 64,
    device: torch.device | None = None,
) -> EvalResult:
    device = device or pick_device()
    model.to(device)
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    for input_ids, attention_mask, labels in DataLoader(dataset, batch_size=batch_size):
        output = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            labels=labels.to(device),
        )
        loss_sum += float(output.loss) * len(labels)
        correct += int((output.logits.argmax(dim=-1).cpu() == labels).sum())
        total += len(labels)
    if total == 0:
        return EvalResult(0, math.nan, math.nan)
    return EvalResult(total, loss_sum / total, correct / total)
