"""The artifact payload: the files ``fedge export`` writes beside the manifest, which the edge agent
reads. One home for their names, so the writer (``server.export``) and the reader
(``edge_agent.inference``, ``edge_agent.install``) cannot drift apart.

An artifact folder holds, besides ``manifest.json`` and ``manifest.sig`` (:mod:`fedge.manifest`):

- ``model.onnx``: int64 inputs named from :data:`INPUT_NAMES` (``input_ids`` always,
  ``attention_mask``, optionally ``token_type_ids``), shape [batch, sequence], and one output
  ``logits`` [batch, labels];
- ``tokenizer.json``: a Hugging Face fast tokenizer, truncating at ``max_length``;
- ``inference.json``: :func:`inference_document`, e.g.
  ``{"schema": 1, "max_length": 64, "labels": ["negative", "positive"], "inputs": [...]}``.

The manifest's ``format`` says how ``model.onnx`` was built: export writes :data:`ARTIFACT_FORMAT`,
and an agent runs any of :data:`ACCEPTED_FORMATS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

__all__ = [
    "ACCEPTED_FORMATS",
    "ARTIFACT_FORMAT",
    "INFERENCE_FILE",
    "INFERENCE_SCHEMA",
    "INPUT_NAMES",
    "MODEL_FILE",
    "OUTPUT_NAME",
    "TOKENIZER_FILE",
    "inference_document",
]

MODEL_FILE: Final = "model.onnx"
TOKENIZER_FILE: Final = "tokenizer.json"
INFERENCE_FILE: Final = "inference.json"

ARTIFACT_FORMAT: Final = "onnx-int8"
ACCEPTED_FORMATS: Final = frozenset({"onnx-int8", "onnx-fp32"})

INPUT_NAMES: Final = ("input_ids", "attention_mask", "token_type_ids")
"""Every input a model may declare, in the order they are fed."""
OUTPUT_NAME: Final = "logits"
INFERENCE_SCHEMA: Final = 1


def inference_document(
    *, max_length: int, labels: Sequence[str], inputs: Sequence[str]
) -> dict[str, Any]:
    """The ``inference.json`` object: how to tokenize, which inputs to feed, what classes mean."""
    return {
        "schema": INFERENCE_SCHEMA,
        "max_length": max_length,
        "labels": list(labels),
        "inputs": list(inputs),
    }
