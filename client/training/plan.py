"""DP-aware training settings: batch size, epochs and learning rate chosen from the data.

A data holder states what it cares about (epsilon, delta, rounds); how to train so that DP-SGD
still learns is fedge's job. With a few hundred examples and the small batches of non-private
fine-tuning, the Gaussian noise (``sigma * C`` on a sum of ``B`` clipped gradients) swamps the
signal: the averaged gradient's noise is ``sigma * C / B``. The rule below follows what the DP
fine-tuning literature found:

- **Large logical batches relative to the data** (Li et al. 2022, "Large language models can be
  strong differentially private learners"; De et al. 2022, "Unlocking high-accuracy
  differentially private image classification through scale"): a sampling rate ``q = B / n`` of
  about 0.2 for a linear head and ``B ~ 4 sqrt(n)`` for LoRA, capped at 1,024, keeps the noise
  on the averaged gradient small while privacy amplification by sampling still applies.
- **Few epochs for the encoder, more for a linear head**: every extra step costs noise. LoRA
  gets 3 epochs in all (Yu et al. 2022, "Differentially private fine-tuning of language models",
  train adapters for a few epochs); a linear head on frozen features, a convex problem whose
  steps are cheap, 30.
- **A learning rate suited to the noise**: Adam's step is normalized, so a fixed rate works over
  a wide range of noise (1e-2 for the head, 5e-3 for LoRA at batch 1,024, as measured).
- **Better features beat end-to-end DP training on little data** (Tramer and Boneh 2021,
  "Differentially private learning needs better features (or much more data)"): hence the head
  alone is fedge's default for the few thousand examples a holder typically has.

Measured with a sweep of DP-SGD over cached features (issue 11's closing note): on SST-2
features of all-MiniLM-L6-v2, 1,280 examples, epsilon 8, the head reached 0.81 to 0.83 for
sampling rates 0.1 to 0.5 and 20 to 60 epochs at learning rate 1e-2, against 0.80 without
DP; at 160 examples 0.71 to 0.74.

Whatever is chosen here, the round is priced by the holder's ledger before it runs, and the
noise multiplier is solved from the budget (client/training/loop.py ``plan_round``): the choice
changes how well the model learns, never how much privacy it spends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

__all__ = ["HEAD_EPOCHS", "LORA_EPOCHS", "TrainingChoice", "choose_training"]

HEAD_EPOCHS: Final = 30
LORA_EPOCHS: Final = 3
HEAD_SAMPLE_RATE: Final = 0.2
HEAD_LEARNING_RATE: Final = 1e-2
LORA_LEARNING_RATE: Final = 5e-3
MAX_BATCH: Final = 1024
MIN_BATCH: Final = 8


@dataclass(frozen=True, slots=True)
class TrainingChoice:
    """Settings for one round, and where each came from (``policy`` or ``auto``)."""

    batch_size: int
    local_epochs: int
    learning_rate: float
    source: dict[str, str]

    def describe(self) -> str:
        return (
            f"batch {self.batch_size} ({self.source['batch_size']}), "
            f"{self.local_epochs} local epoch(s) ({self.source['local_epochs']}), "
            f"learning rate {self.learning_rate:g} ({self.source['learning_rate']})"
        )


def _auto_batch(num_examples: int, *, lora: bool) -> int:
    wanted = 4 * math.sqrt(num_examples) if lora else HEAD_SAMPLE_RATE * num_examples
    batch = min(MAX_BATCH, max(MIN_BATCH, round(wanted)))
    # Keep at least two batches per epoch when there is data for it: a sampling rate of 1
    # forgoes amplification by sampling, which costs far more noise than a smaller batch.
    return max(1, min(batch, num_examples // 2)) if num_examples >= 2 else 1


def choose_training(
    num_examples: int,
    *,
    rounds: int,
    lora: bool,
    batch_size: int | None = None,
    local_epochs: int | None = None,
    learning_rate: float | None = None,
) -> TrainingChoice:
    """Fill what the policy left out; a value the policy gives is always kept.

    ``rounds`` is the whole federation's, so a holder trains about the same number of epochs
    in all whether the run has 1 round or 30.
    """
    if num_examples < 1:
        raise ValueError("num_examples must be at least 1")
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    source = {
        "batch_size": "policy" if batch_size is not None else "auto",
        "local_epochs": "policy" if local_epochs is not None else "auto",
        "learning_rate": "policy" if learning_rate is not None else "auto",
    }
    total_epochs = LORA_EPOCHS if lora else HEAD_EPOCHS
    return TrainingChoice(
        batch_size=batch_size if batch_size is not None else _auto_batch(num_examples, lora=lora),
        local_epochs=local_epochs
        if local_epochs is not None
        else max(1, math.ceil(total_epochs / rounds)),
        learning_rate=learning_rate
        if learning_rate is not None
        else (LORA_LEARNING_RATE if lora else HEAD_LEARNING_RATE),
        source=source,
    )
