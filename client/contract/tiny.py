"""A tiny random BERT with MiniLM's tokenizer: the model tests and quick demos train.

It goes through the same construction as the real one (:mod:`client.contract.model`), so a test
on it runs the code a data holder runs, in seconds instead of minutes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from client.contract.model import builtin_minilm

__all__ = ["build_tiny_model"]

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
