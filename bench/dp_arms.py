"""The arms of ``dp_overhead.py``: what one timed arm is and what ``run(steps)`` measures.

One job: time training steps. ``FixedArm`` steps on one fixed batch (DP or not by what wraps the
model and optimizer), ``PoissonArm`` drives Opacus's DP loop (Poisson sampling and
BatchMemoryManager) with each pass timed alone, ``TrainRoundArm`` runs fedge's own
``train_round``; each returns a ``Timing``. On CUDA the device is synchronised around every timed
step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, TensorDataset

if TYPE_CHECKING:
    from client.training.loop import RoundPlan

NOISE_MULTIPLIER = 1.0  # the step's cost does not depend on the noise's scale
MAX_GRAD_NORM = 1.0
LEARNING_RATE = 5e-4
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class Timing:
    """One arm's measurement in one repetition."""

    seconds: float = 0.0
    samples: int = 0
    steps: int = 0  # optimizer steps taken (logical batches)
    passes: int = 0  # forward/backward passes (physical batches)

    @property
    def rate(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else math.nan


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_step(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch
) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    input_ids, attention_mask, labels = batch
    loss: torch.Tensor = module(
        input_ids=input_ids, attention_mask=attention_mask, labels=labels
    ).loss
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    return loss


def timed_step(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, device: torch.device
) -> float:
    sync(device)
    started = time.perf_counter()
    one_step(module, optimizer, batch)
    sync(device)
    return time.perf_counter() - started


class Arm:
    """Something timed: ``run(steps)`` returns what ``steps`` steps cost.

    ``per_step`` arms are interleaved step by step; the others (a whole train_round) round by
    round.
    """

    name: str
    per_step = True

    def run(self, steps: int) -> Timing:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the arm holds open."""


class FixedArm(Arm):
    """The same batch every step; DP or not is decided by what wraps module and optimizer."""

    def __init__(
        self,
        name: str,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        batch: Batch,
        device: torch.device,
    ) -> None:
        self.name, self.module, self.optimizer = name, module, optimizer
        self.batch, self.device = batch, device

    def run(self, steps: int) -> Timing:
        self.module.train()
        timing = Timing()
        for _ in range(steps):
            timing.seconds += timed_step(self.module, self.optimizer, self.batch, self.device)
            timing.samples += len(self.batch[0])
            timing.steps += 1
            timing.passes += 1
        return timing


class PoissonArm(Arm):
    """train_round's DP loop (Poisson sampling + BatchMemoryManager), each pass timed alone."""

    def __init__(
        self,
        name: str,
        module: torch.nn.Module,
        optimizer: Any,  # opacus DPOptimizer
        *,
        loader: DataLoader[tuple[torch.Tensor, ...]],
        max_physical: int,
        device: torch.device,
    ) -> None:
        self.name, self.module, self.optimizer, self.loader = name, module, optimizer, loader
        self.max_physical, self.device = max_physical, device

        self._stream: Generator[Batch, None, None] | None = None

    def _batches(self) -> Generator[Batch, None, None]:
        from opacus.utils.batch_memory_manager import BatchMemoryManager

        while True:  # epoch after epoch; the batch manager signals skipped steps to the optimizer
            with BatchMemoryManager(
                data_loader=self.loader,
                max_physical_batch_size=self.max_physical,
                optimizer=self.optimizer,
            ) as physical:
                for ids, mask, labels in physical:
                    yield ids.to(self.device), mask.to(self.device), labels.to(self.device)

    def run(self, steps: int) -> Timing:
        self.module.train()
        if self._stream is None:
            self._stream = self._batches()
        timing = Timing()
        while timing.steps < steps:
            batch = next(self._stream)  # data loading: not timed
            timing.seconds += timed_step(self.module, self.optimizer, batch, self.device)
            timing.samples += len(batch[0])
            timing.passes += 1
            if not self.optimizer._is_last_step_skipped:
                timing.steps += 1  # a logical batch is complete: the noisy step was taken
        return timing

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


class TrainRoundArm(Arm):
    """fedge's own ``train_round``: one round of ``steps`` logical batches, as a client runs it."""

    per_step = False

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        dataset: TensorDataset,
        *,
        private: bool,
        batch_size: int,
        max_physical: int,
        device: torch.device,
        seed: int,
    ) -> None:
        self.name, self.model, self.private = name, model, private
        self.dataset, self.batch_size, self.max_physical = dataset, batch_size, max_physical
        self.device, self.seed, self.calls = device, seed, 0

    def plan(self, steps: int) -> RoundPlan:
        from client.training.loop import RoundPlan

        return RoundPlan(
            num_examples=min(len(self.dataset), steps * self.batch_size),
            batch_size=self.batch_size,
            epochs=1,
            noise_multiplier=NOISE_MULTIPLIER,
            max_grad_norm=MAX_GRAD_NORM,
        )

    def run(self, steps: int) -> Timing:
        from client.training.loop import train_round

        plan = self.plan(steps)
        dataset = TensorDataset(*(t[: plan.num_examples] for t in self.dataset.tensors))
        self.calls += 1
        result = train_round(
            self.model,
            dataset,
            plan,
            learning_rate=LEARNING_RATE,
            max_physical_batch_size=self.max_physical,
            private=self.private,
            device=self.device,
            seed=self.seed + self.calls,
        )
        # passes: train_round does not report its physical batches
        return Timing(result.seconds, result.samples_seen, result.steps, 0)
