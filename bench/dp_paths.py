"""The paths ``dp_overhead.py`` compares: their models, data and paired arms, built.

One job: from the options, build the synthetic data set, the models (LoRA as fedge trains it,
head-only, full fine-tuning with the embeddings frozen), Opacus's ``make_private`` wrapping, and
the ``Pair`` of non-DP and DP arms each path is measured by (fixed batch, Poisson + BMM, fedge's
``train_round``).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from dp_arms import (
    LEARNING_RATE,
    MAX_GRAD_NORM,
    NOISE_MULTIPLIER,
    Arm,
    Batch,
    FixedArm,
    PoissonArm,
    TrainRoundArm,
)
from torch.utils.data import DataLoader, TensorDataset

NUM_LABELS = 2


def model_source(args: argparse.Namespace, workdir: Path) -> str:
    from client.contract.model import BUILTIN_MINILM
    from client.contract.tiny import build_tiny_model

    if args.tiny:
        return str(build_tiny_model(workdir / "tiny-model", seed=args.seed))
    return str(args.model or BUILTIN_MINILM)


def make_dataset(source: str, size: int, seq_len: int, seed: int) -> TensorDataset:
    """Synthetic sentences, tokenized by fedge's ``encode`` and padded to ``seq_len``."""
    from transformers import AutoTokenizer

    from client.contract.model import resolve_model_source
    from client.data.synthetic import generate
    from client.training.loop import encode

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(source), local_files_only=True)
    data = generate(num_clients=1, examples_per_client=size, seed=seed, heldout=0).clients[0]
    return encode(tokenizer, data.texts, data.labels, max_length=seq_len)


def lora_model(source: str, seed: int, device: torch.device) -> torch.nn.Module:
    from client.contract.model import load_trainable_model
    from policies.federation import LoraSpec

    model = load_trainable_model(source, num_labels=NUM_LABELS, lora=LoraSpec(), seed=seed).model
    return model.to(device)


def plain_model(
    source: str, seed: int, device: torch.device, *, head_only: bool
) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    from client.contract.model import resolve_model_source

    torch.manual_seed(seed)
    model: torch.nn.Module = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_source(source), num_labels=NUM_LABELS, local_files_only=True
    )
    for name, param in model.named_parameters():
        if head_only:
            param.requires_grad_(name.startswith("classifier."))
        else:
            param.requires_grad_(".embeddings." not in f".{name}")
    return model.to(device)


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0)


def make_private(
    model: torch.nn.Module, dataset: TensorDataset, batch_size: int, *, poisson: bool, seed: int
) -> tuple[torch.nn.Module, Any, DataLoader[tuple[torch.Tensor, ...]]]:
    from opacus import PrivacyEngine

    engine = PrivacyEngine(accountant="rdp", secure_mode=False)
    model.train()  # Opacus refuses a model in eval mode (from_pretrained returns one)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=poisson,
        generator=torch.Generator().manual_seed(seed),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module, optimizer, dp_loader = engine.make_private(
            module=model,
            optimizer=adamw(model),
            data_loader=loader,
            noise_multiplier=NOISE_MULTIPLIER,
            max_grad_norm=MAX_GRAD_NORM,
            poisson_sampling=poisson,
        )
    return module, optimizer, dp_loader


@dataclass
class Pair:
    """A path's non-DP and DP arms, compared within each repetition."""

    path: str
    how: str
    plain: str  # arm names
    private: str


def fixed_pair(
    path: str, make: Callable[[], torch.nn.Module], batch: Batch, device: torch.device, seed: int
) -> tuple[Pair, list[Arm]]:
    plain_model_ = make()
    plain = FixedArm(f"{path}/fixed/plain", plain_model_, adamw(plain_model_), batch, device)
    one = TensorDataset(*(t.cpu() for t in batch))
    module, optimizer, _ = make_private(make(), one, len(batch[0]), poisson=False, seed=seed)
    private = FixedArm(f"{path}/fixed/dp", module, optimizer, batch, device)
    how = "fixed batch (raw Opacus)"
    return Pair(path, how, plain.name, private.name), [plain, private]


def build_arms(
    args: argparse.Namespace, source: str, device: torch.device
) -> tuple[list[Pair], list[Arm], TensorDataset]:
    size = max(args.steps, args.warmup, 1) * args.batch_size
    dataset = make_dataset(source, size, args.seq_len, args.seed)
    batch: Batch = tuple(t[: args.batch_size].to(device) for t in dataset.tensors)  # type: ignore[assignment]
    pairs: list[Pair] = []
    arms: list[Arm] = []

    def lora() -> torch.nn.Module:
        return lora_model(source, args.seed, device)

    pair, new = fixed_pair("lora", lora, batch, device, args.seed)
    pairs.append(pair)
    arms += new
    # Poisson + BatchMemoryManager over steps * batch_size examples: len(loader) == steps.
    module, optimizer, loader = make_private(
        lora(), dataset, args.batch_size, poisson=True, seed=args.seed
    )
    poisson = PoissonArm(
        "lora/poisson/dp",
        module,
        optimizer,
        loader=loader,
        max_physical=args.max_physical_batch_size,
        device=device,
    )
    arms.append(poisson)
    pairs.append(
        Pair(
            "lora",
            f"Poisson + BMM, physical <= {args.max_physical_batch_size}",
            pair.plain,
            poisson.name,
        )
    )
    shared = lora()  # train_round unwraps Opacus after each round: one model serves both arms
    for private in (False, True):
        arms.append(
            TrainRoundArm(
                f"lora/train_round/{'dp' if private else 'plain'}",
                shared,
                dataset,
                private=private,
                batch_size=args.batch_size,
                max_physical=args.max_physical_batch_size,
                device=device,
                seed=args.seed,
            )
        )
    pairs.append(
        Pair(
            "lora",
            "fedge train_round",
            "lora/train_round/plain",
            "lora/train_round/dp",
        )
    )
    if not args.no_head:
        pair, new = fixed_pair(
            "head",
            lambda: plain_model(source, args.seed, device, head_only=True),
            batch,
            device,
            args.seed,
        )
        pairs.append(pair)
        arms += new
    if args.full:
        pair, new = fixed_pair(
            "full",
            lambda: plain_model(source, args.seed, device, head_only=False),
            batch,
            device,
            args.seed,
        )
        pairs.append(pair)
        arms += new
    return pairs, arms, dataset
