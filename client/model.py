"""The model a data holder fine-tunes, and a tiny random one for tests.

The definition itself lives in client/contract.py, which export shares; this module re-exports
it for the client's own code. Only the trainable weights (the head, and LoRA adapters when the
policy asks for them) are exchanged with the coordinator: kilobytes per round instead of the
whole model. Every client builds the same initial weights from the same seed, which lets the
coordinator ask any one client for the starting point instead of building a model itself.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from client.contract import (
    BUILTIN_MINILM,
    TrainableModel,
    build_classifier,
    builtin_minilm,
    get_trainable,
    resolve_model_source,
    set_trainable,
)
from policies.federation import LoraSpec, Pooling

__all__ = [
    "BUILTIN_MINILM",
    "TrainableModel",
    "build_tiny_model",
    "get_trainable",
    "load_trainable_model",
    "resolve_model_source",
    "set_trainable",
]

_TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


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
    source = builtin_minilm()
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


def load_trainable_model(
    source: str,
    *,
    num_labels: int,
    lora: LoraSpec | None,
    pooling: Pooling = "mean",
    seed: int = 0,
    base_dir: str | os.PathLike[str] | None = None,
) -> TrainableModel:
    """The classifier every party builds (client/contract.py), with or without LoRA."""
    return build_classifier(
        source, num_labels=num_labels, pooling=pooling, lora=lora, seed=seed, base_dir=base_dir
    )
