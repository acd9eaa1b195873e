"""Small, real artifacts for the edge tests: an ONNX text classifier, its tokenizer, signed.

The model is built with ``onnx.helper`` (no torch, so it takes milliseconds): token and token-type
embeddings, a masked mean over the sequence, one linear layer to ``logits``. It has exactly the
inputs and output of the export contract (int64 ``input_ids``, ``attention_mask``,
``token_type_ids`` [batch, seq]; ``logits`` [batch, labels]), and ``favour`` sets a bias so that two
versions can be told apart by what they answer. ``embedding_dim`` makes the file larger when a test
needs a download that takes a while.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from fedge.artifact import sign_artifact
from fedge.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest
from fedge.payload import (
    ARTIFACT_FORMAT,
    INFERENCE_FILE,
    INPUT_NAMES,
    MODEL_FILE,
    TOKENIZER_FILE,
    inference_document,
)
from fedge.signing import KeyPair

LABELS = ["negative", "positive"]
WORDS = [
    "the",
    "a",
    "an",
    "is",
    "was",
    "good",
    "bad",
    "great",
    "awful",
    "fine",
    "terrible",
    "lovely",
    "movie",
    "film",
    "plot",
    "acting",
    "not",
    "very",
    "really",
    "quite",
    "fedge",
    "health",
    "check",
    "this",
    "sentence",
    "only",
    "tests",
    "that",
    "model",
    "answers",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def build_tokenizer(path: Path) -> Tokenizer:
    vocab = {token: index for index, token in enumerate(SPECIALS + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.save(str(path))
    return tokenizer


def build_model(
    path: Path,
    *,
    vocab_size: int,
    labels: int = 2,
    favour: int = 1,
    embedding_dim: int = 8,
    seed: int = 0,
    logits_width: int | None = None,
) -> None:
    """Write ``model.onnx``; the class ``favour`` wins on every input (bias 5 vs 0)."""
    rng = np.random.default_rng(seed)
    width = labels if logits_width is None else logits_width
    emb = rng.normal(0, 0.1, (vocab_size, embedding_dim)).astype(np.float32)
    types = rng.normal(0, 0.1, (2, embedding_dim)).astype(np.float32)
    weight = rng.normal(0, 0.1, (embedding_dim, width)).astype(np.float32)
    bias = np.zeros(width, dtype=np.float32)
    bias[favour % width] = 5.0
    inits = [
        numpy_helper.from_array(emb, "word_embeddings"),
        numpy_helper.from_array(types, "type_embeddings"),
        numpy_helper.from_array(weight, "classifier_weight"),
        numpy_helper.from_array(bias, "classifier_bias"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_seq"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis_last"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Gather", ["word_embeddings", "input_ids"], ["tok"]),
        helper.make_node("Gather", ["type_embeddings", "token_type_ids"], ["typ"]),
        helper.make_node("Add", ["tok", "typ"], ["emb"]),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "axis_last"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis_seq"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask", "axis_seq"], ["count"], keepdims=1),
        helper.make_node("Max", ["count", "one"], ["safe_count"]),
        helper.make_node("Div", ["summed", "safe_count"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "classifier_weight"], ["projected"]),
        helper.make_node("Add", ["projected", "classifier_bias"], ["logits"]),
    ]
    ints = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    graph = helper.make_graph(
        nodes,
        "fedge-tiny-classifier",
        ints,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", width])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_artifact(
    directory: Path,
    keypair: KeyPair,
    *,
    name: str = "tiny-cls",
    version: str = "1.0.0",
    favour: int = 1,
    embedding_dim: int = 8,
    fmt: str = "onnx-fp32",
    logits_width: int | None = None,
    max_length: int = 16,
    int8: bool = False,
) -> Manifest:
    """A complete, signed artifact folder following the export contract.

    ``int8`` quantizes the model with ONNX Runtime's dynamic quantization (MatMulInteger and
    friends, as an int8 export has) and labels it ``onnx-int8``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory / TOKENIZER_FILE)
    build_model(
        directory / MODEL_FILE,
        vocab_size=tokenizer.get_vocab_size(),
        labels=len(LABELS),
        favour=favour,
        embedding_dim=embedding_dim,
        logits_width=logits_width,
    )
    inference = inference_document(max_length=max_length, labels=LABELS, inputs=INPUT_NAMES)
    (directory / INFERENCE_FILE).write_text(json.dumps(inference), encoding="utf-8")
    if int8:
        from onnxruntime.quantization import (  # type: ignore[import-untyped]
            QuantType,
            quantize_dynamic,
        )

        quantized = directory / "model.int8.onnx"
        quantize_dynamic(directory / MODEL_FILE, quantized, weight_type=QuantType.QInt8)
        quantized.replace(directory / MODEL_FILE)
        fmt = ARTIFACT_FORMAT
    return sign_artifact(directory, keypair, name=name, version=version, format=fmt)


def publish(artifact: Path, root: Path, base_url: str, *, target: str = "http-1") -> dict[str, Any]:
    """Copy an artifact under ``root/<name>/<version>/`` and describe it as a desired replica."""
    manifest = Manifest.from_bytes((artifact / MANIFEST_NAME).read_bytes())
    prefix = f"{manifest.name}/{manifest.version}"
    destination = root / prefix
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(artifact, destination)
    return {
        "target": target,
        "manifest": f"{base_url}/{prefix}/{MANIFEST_NAME}",
        "signature": f"{base_url}/{prefix}/{SIGNATURE_NAME}",
        "files": {entry.path: f"{base_url}/{prefix}/{entry.path}" for entry in manifest.files},
    }


def desired_doc(
    artifact: Path, replicas: list[dict[str, Any]], *, deployment_id: str, **settings: Any
) -> dict[str, Any]:
    """A ``desired`` payload (as a dict) for ``artifact`` served from ``replicas``."""
    body = (artifact / MANIFEST_NAME).read_bytes()
    manifest = Manifest.from_bytes(body)
    doc: dict[str, Any] = {
        "schema": 1,
        "deploymentId": deployment_id,
        "artifact": manifest.name,
        "version": manifest.version,
        "manifestSha256": manifest.digest,
        "replicas": replicas,
    }
    if settings:
        doc["settings"] = settings
    return doc
