"""What both parts of ``gpu_suite.py`` work on: the SST-2 split, fedge's classifier, tensors.

One job: turn the options into data and models on the device - the held-out split drawn from the
training file (or ``--validation``), fedge's classifier built and checked to be float32, texts
encoded to tensors on the device - plus the two helpers every part of the suite uses, its log line
and device synchronisation. Like every module of the suite it imports only the standard library
at its top (torch and fedge's packages inside the functions), so ``gpu_suite.missing_package``
can still name a missing package in one line before anything needs it.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch.utils.data import TensorDataset

    from client.contract.labelled import LabelledData
    from client.contract.model import TrainableModel

REPO = Path(__file__).resolve().parents[1]
DATA_CANDIDATES = (
    REPO.parent / "shared" / "data" / "sst2" / "train.tsv",
    REPO / ".gpu" / "data" / "sst2-train.tsv",
    REPO / "shared" / "data" / "sst2" / "train.tsv",
)
NUM_LABELS = 2


def data_path(args: argparse.Namespace) -> Path:
    if args.data is not None:
        return Path(args.data)
    for candidate in DATA_CANDIDATES:
        if candidate.is_file():
            return candidate
    return DATA_CANDIDATES[0]


def log(message: str) -> None:
    print(f"[gpu_suite {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Splits:
    train: LabelledData
    heldout: LabelledData
    heldout_source: str


def load_splits(args: argparse.Namespace) -> Splits:
    from client.contract.labelled import load_labelled

    path = data_path(args)
    data = load_labelled(path, num_labels=NUM_LABELS)
    order = list(range(len(data)))
    random.Random(args.seed).shuffle(order)
    if args.validation is not None:
        heldout = load_labelled(args.validation, num_labels=NUM_LABELS)
        train_idx, source = order, str(args.validation)
    else:
        size = min(args.heldout_size, len(data) - 1)
        heldout = data.subset(order[:size])
        train_idx, source = order[size:], f"{size} drawn from {path}"
    if args.train_size is not None:
        train_idx = train_idx[: args.train_size]
    return Splits(data.subset(train_idx), heldout, source)


def build(args: argparse.Namespace, *, lora: bool) -> tuple[TrainableModel, dict[str, Any]]:
    """fedge's classifier (mean pooling), float32 checked; LoRA r8 on query/value if asked."""
    import torch

    from client.contract.model import BUILTIN_MINILM, build_classifier
    from policies.federation import LoraSpec

    spec = LoraSpec(rank=args.lora_rank) if lora else None
    trainable = build_classifier(
        args.model or BUILTIN_MINILM, num_labels=NUM_LABELS, lora=spec, seed=args.seed
    )
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in trainable.model.parameters()})
    info: dict[str, Any] = {"source": trainable.source, "param_dtypes": dtypes}
    if dtypes != ["float32"]:
        # transformers 5 loads the checkpoint's dtype when config.json names one: fp16 weights
        # under a float16 config would break the float32 head. gpu-pack's config says float32.
        log(f"model parameters are {dtypes}: cast to float32 (fix the config's torch_dtype)")
        trainable.model.to(torch.float32)
        info["cast_to_float32"] = True
    return trainable, info


def encoded(
    trainable: TrainableModel, data: LabelledData, seq_len: int, device: torch.device
) -> TensorDataset:
    from torch.utils.data import TensorDataset

    from client.training.loop import encode

    tokens = encode(trainable.tokenizer, data.texts, data.labels, max_length=seq_len)
    return TensorDataset(*(t.to(device) for t in tokens.tensors))


def take(dataset: TensorDataset, count: int) -> TensorDataset:
    """The first ``count`` examples, cycling through the data set when it holds fewer."""
    import torch
    from torch.utils.data import TensorDataset

    size = len(dataset.tensors[0])
    index = torch.arange(count, device=dataset.tensors[0].device) % size
    return TensorDataset(*(t[index] for t in dataset.tensors))


def subset(dataset: TensorDataset, indices: Sequence[int]) -> TensorDataset:
    import torch
    from torch.utils.data import TensorDataset

    index = torch.as_tensor(list(indices), dtype=torch.long, device=dataset.tensors[0].device)
    return TensorDataset(*(t[index] for t in dataset.tensors))
