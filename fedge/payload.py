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
and an agent runs any of :data:`ACCEPTED_FORMATS`; :func:`check_format` is the one check, made by
the agent before it installs and by ``fedge-agent verify``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from fedge.errors import EdgeError
from fedge.manifest import MANIFEST_NAME, Manifest

__all__ = [
    "ACCEPTED_FORMATS",
    "ARTIFACT_FORMAT",
    "INFERENCE_FILE",
    "INFERENCE_SCHEMA",
    "INPUT_NAMES",
    "MODEL_FILE",
    "OUTPUT_NAME",
    "TOKENIZER_FILE",
    "check_format",
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


def check_format(manifest: Manifest) -> None:
    """Refuse a (verified) manifest whose ``format`` is not one an agent runs (EdgeError)."""
    if manifest.format not in ACCEPTED_FORMATS:
        raise EdgeError(
            f"{MANIFEST_NAME}: format {manifest.format!r} is not one this agent runs "
            f"({', '.join(sorted(ACCEPTED_FORMATS))})"
        )
