"""Text classification with ONNX Runtime and a Hugging Face fast tokenizer, from an artifact folder.

The artifact contract (what ``fedge export`` writes; the names are in :mod:`fedge.payload`):
``model.onnx`` with int64 inputs ``input_ids``, ``attention_mask`` and optionally
``token_type_ids`` of shape [batch, seq] and an output ``logits`` [batch, labels];
``tokenizer.json``; and ``inference.json``::

    {"schema": 1, "max_length": 64, "labels": ["negative", "positive"],
     "inputs": ["input_ids", "attention_mask", "token_type_ids"]}

A model is loaded in full and passes :meth:`InferenceEngine.health_check` (one sample inference
with the right output shape and finite values) before an agent switches to it, so a model that
loads but cannot answer never replaces one that can.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
from tokenizers import Tokenizer

from fedge.errors import EdgeError
from fedge.payload import (
    INFERENCE_FILE,
    INFERENCE_SCHEMA,
    INPUT_NAMES,
    MODEL_FILE,
    OUTPUT_NAME,
    TOKENIZER_FILE,
)

__all__ = [
    "HEALTH_SAMPLE",
    "InferenceConfig",
    "InferenceEngine",
    "Prediction",
]

HEALTH_SAMPLE = "fedge health check: this sentence only tests that the model answers."


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    scores: dict[str, float]


@dataclass(frozen=True)
class InferenceConfig:
    max_length: int
    labels: tuple[str, ...]
    inputs: tuple[str, ...]

    @classmethod
    def read(cls, path: Path) -> InferenceConfig:
        try:
            doc: Any = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise EdgeError(f"{path.name}: missing from the artifact") from exc
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise EdgeError(f"{path.name}: not readable JSON ({exc})") from exc
        if not isinstance(doc, dict) or doc.get("schema") != INFERENCE_SCHEMA:
            raise EdgeError(f"{path.name}: expected a JSON object with schema {INFERENCE_SCHEMA}")
        max_length, labels = doc.get("max_length"), doc.get("labels")
        inputs = doc.get("inputs", list(INPUT_NAMES[:2]))
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
            raise EdgeError(f"{path.name}: max_length must be an integer of at least 2")
        if (
            not isinstance(labels, list)
            or not labels
            or not all(isinstance(label, str) and label for label in labels)
            or len(set(labels)) != len(labels)
        ):
            raise EdgeError(f"{path.name}: labels must be a non-empty list of distinct strings")
        if not isinstance(inputs, list) or not set(inputs) <= set(INPUT_NAMES):
            raise EdgeError(f"{path.name}: inputs must be a subset of {list(INPUT_NAMES)}")
        if "input_ids" not in inputs:
            raise EdgeError(f"{path.name}: inputs must include input_ids")
        return cls(max_length=max_length, labels=tuple(labels), inputs=tuple(inputs))


def _softmax(logits: np.ndarray[Any, np.dtype[np.float32]]) -> np.ndarray[Any, Any]:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray[Any, Any] = exp / exp.sum(axis=-1, keepdims=True)
    return result


class InferenceEngine:
    """One loaded model: tokenizer, ONNX Runtime session, labels. Thread-safe for inference."""

    def __init__(self, directory: str | Path, *, threads: int | None = None) -> None:
        folder = Path(directory)
        self.directory = folder
        self.config = InferenceConfig.read(folder / INFERENCE_FILE)
        try:
            self.tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        except Exception as exc:
            raise EdgeError(f"{TOKENIZER_FILE}: cannot load the tokenizer ({exc})") from exc
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.config.max_length)
        pad = self.tokenizer.token_to_id("[PAD]")
        self._pad_id = 0 if pad is None else pad
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(folder / MODEL_FILE), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise EdgeError(f"{MODEL_FILE}: ONNX Runtime cannot load the model ({exc})") from exc
        declared = {node.name for node in self.session.get_inputs()}
        if "input_ids" not in declared:
            raise EdgeError(f"{MODEL_FILE}: the model has no input_ids input")
        unknown = declared - set(INPUT_NAMES)
        if unknown:
            raise EdgeError(f"{MODEL_FILE}: unexpected model inputs {sorted(unknown)}")
        self._feeds = tuple(name for name in INPUT_NAMES if name in declared)
        outputs = [node.name for node in self.session.get_outputs()]
        if OUTPUT_NAME not in outputs:
            raise EdgeError(f"{MODEL_FILE}: the model has no logits output (has {outputs})")

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.labels

    @property
    def inputs(self) -> tuple[str, ...]:
        """The inputs the model declares, in :data:`~fedge.payload.INPUT_NAMES` order."""
        return self._feeds

    def _encode(self, texts: Sequence[str]) -> dict[str, np.ndarray[Any, np.dtype[np.int64]]]:
        encodings = self.tokenizer.encode_batch(list(texts))
        width = max(1, *(len(encoding.ids) for encoding in encodings))
        ids = np.full((len(texts), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        types = np.zeros((len(texts), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            mask[row, :n] = encoding.attention_mask
            types[row, :n] = encoding.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: arrays[name] for name in self._feeds}

    def logits(self, texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self._run(self._encode(texts), len(texts))

    def probabilities(
        self,
        input_ids: np.ndarray[Any, np.dtype[np.int64]],
        attention_mask: np.ndarray[Any, np.dtype[np.int64]],
        token_type_ids: np.ndarray[Any, np.dtype[np.int64]] | None = None,
    ) -> np.ndarray[Any, np.dtype[np.float64]]:
        """Class probabilities for token arrays the caller built ([rows, seq] each), in one
        ONNX Runtime call: what an explanation's occluded variants need, since they are token
        sequences with a piece replaced, not texts."""
        if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
            raise EdgeError(
                f"token arrays must be [rows, seq] of one shape, got {list(input_ids.shape)} "
                f"and {list(attention_mask.shape)}"
            )
        types = np.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        arrays = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": types}
        feeds = {name: np.ascontiguousarray(arrays[name], dtype=np.int64) for name in self._feeds}
        result: np.ndarray[Any, np.dtype[np.float64]] = _softmax(
            self._run(feeds, len(input_ids))
        ).astype(np.float64)
        return result

    def _run(
        self, feeds: dict[str, np.ndarray[Any, np.dtype[np.int64]]], rows: int
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        try:
            (result,) = self.session.run([OUTPUT_NAME], feeds)
        except Exception as exc:
            raise EdgeError(f"{MODEL_FILE}: inference failed ({exc})") from exc
        array = np.asarray(result, dtype=np.float32)
        if array.shape != (rows, len(self.labels)):
            raise EdgeError(
                f"{MODEL_FILE}: logits have shape {list(array.shape)}, expected "
                f"[{rows}, {len(self.labels)}] for labels {list(self.labels)}"
            )
        return array

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        probabilities = _softmax(self.logits(texts))
        predictions = []
        for row in probabilities:
            best = int(row.argmax())
            scores = {label: float(value) for label, value in zip(self.labels, row, strict=True)}
            predictions.append(
                Prediction(label=self.labels[best], score=float(row[best]), scores=scores)
            )
        return predictions

    def health_check(self) -> None:
        """One inference on a fixed sentence: right shape, finite numbers, or EdgeError."""
        row = self.logits([HEALTH_SAMPLE])[0]
        if not all(math.isfinite(float(value)) for value in row):
            raise EdgeError(f"{MODEL_FILE}: health check produced non-finite logits {row.tolist()}")
