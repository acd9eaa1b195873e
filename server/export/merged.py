"""The model export starts from: the clients' model rebuilt from the policy, the checkpoint's
arrays loaded into it and the LoRA adapters merged, plus the token arrays it takes.

The checkpoint holds only what travels in a federation (LoRA matrices and the classification
head), so the base model is loaded again through ``client.contract.model``, the one construction
that reproduces the trainable parameters' names. torch and transformers are imported only when a
model is built, so this module imports without them.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedge.errors import FedgeError, UsageError
from fedge.payload import INPUT_NAMES
from policies import FederationPolicy

__all__ = [
    "Feeds",
    "MergedModel",
    "heldout_feeds",
    "load_merged_model",
    "resolve_source",
    "torch_logits",
]

Feeds = dict[str, npt.NDArray[np.int64]]


@dataclass
class MergedModel:
    """A plain transformers classifier with the adapters merged in, and its tokenizer."""

    model: Any  # transformers.PreTrainedModel; kept loose so this module imports without torch
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    source: Path
    input_names: tuple[str, ...]


def resolve_source(source: str, *, base_dir: str | os.PathLike[str] | None = None) -> Path:
    """``builtin:all-MiniLM-L6-v2`` (the offline package) or a local Hugging Face folder."""
    from client.contract.model import resolve_model_source

    return resolve_model_source(source, base_dir=base_dir)


def load_merged_model(
    policy: FederationPolicy,
    arrays: Mapping[str, npt.NDArray[Any]],
    *,
    base_dir: str | os.PathLike[str] | None = None,
) -> MergedModel:
    """Build the clients' model from the policy (client/contract/model.py), load ``arrays``, merge.

    The checkpoint's array names are the trainable parameters' names, which only the same
    construction reproduces; the name and shape checks are strict, so a policy that differs
    from the run's is refused.
    """
    from client.contract.model import build_for_policy, merged_module, set_trainable

    trainable = build_for_policy(policy.spec, base_dir=base_dir)
    try:
        set_trainable(trainable.model, arrays)
    except FedgeError as exc:
        raise UsageError(
            "the checkpoint does not fit the policy's model (different model, pooling or LoRA "
            f"settings?): {exc}"
        ) from exc
    merged = merged_module(trainable)
    tokenizer = trainable.tokenizer
    accepted = inspect.signature(merged.forward).parameters
    names = tuple(
        name
        for name in INPUT_NAMES
        if name in accepted and (name in tokenizer.model_input_names or name == "input_ids")
    )
    if "attention_mask" not in names:
        raise UsageError(
            f"{trainable.source}: the model takes no attention_mask; only BERT-like encoders"
        )
    return MergedModel(
        model=merged, tokenizer=tokenizer, source=Path(trainable.source), input_names=names
    )


def heldout_feeds(merged: MergedModel, texts: Sequence[str], *, max_length: int) -> Feeds:
    """Token arrays as the model trained on them: padded and truncated to ``max_length``."""
    batch = merged.tokenizer(
        list(texts),
        max_length=max_length,
        padding="max_length",
        truncation=True,
        return_tensors="np",
    )
    feeds: Feeds = {}
    for name in merged.input_names:
        if name in batch:
            feeds[name] = np.asarray(batch[name], dtype=np.int64)
        else:  # a tokenizer without segment ids: one segment
            feeds[name] = np.zeros_like(np.asarray(batch["input_ids"]), dtype=np.int64)
    return feeds


def torch_logits(merged: MergedModel, feeds: Feeds, *, batch_size: int = 64) -> npt.NDArray[Any]:
    """fp32 logits from the torch model, for the export check and the benchmark."""
    import torch

    count = len(next(iter(feeds.values())))
    parts = []
    with torch.no_grad():
        for start in range(0, count, batch_size):
            inputs = {k: torch.from_numpy(v[start : start + batch_size]) for k, v in feeds.items()}
            parts.append(merged.model(**inputs).logits.numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
