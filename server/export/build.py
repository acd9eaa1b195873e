"""``fedge export``: a run's global model as a signed int8 ONNX artifact for the edge.

This module is the entry, :func:`export_artifact`; each step lives in its own module:

- :mod:`.provenance`: the run's checkpoint and metrics, the manifest's provenance;
- :mod:`.heldout`: the held-out labelled file, and accuracy on it;
- :mod:`.merged`: the clients' model rebuilt from the policy, the checkpoint loaded, LoRA merged;
- :mod:`.onnx_export`: the fp32 ONNX export, and ONNX Runtime logits;
- :mod:`.quantize`: int8 quantization (and why its defaults are these);
- :mod:`.folder`: the payload files, and the signed folder renamed into place.

The merged classifier is exported to ONNX (fp32), checked against torch, quantized to int8 and
evaluated, both versions, on the held-out file. The artifact records the two accuracies side by
side, so an operator sees what quantization cost before any device runs the model.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np

from fedge.artifact import sign_artifact
from fedge.errors import FedgeError, UsageError
from fedge.manifest import Manifest
from fedge.payload import ARTIFACT_FORMAT, MODEL_FILE
from fedge.signing import KeyPair
from policies import FederationPolicy
from server.export.folder import check_output, install_folder, write_payload
from server.export.heldout import HeldOut, accuracy
from server.export.merged import heldout_feeds, load_merged_model, torch_logits
from server.export.onnx_export import export_onnx, onnx_logits
from server.export.provenance import arrays_digest, provenance_for
from server.export.quantize import Quantization, quantize_onnx
from server.federation.checkpoint import Checkpoint

__all__ = ["ExportResult", "export_artifact"]

log = logging.getLogger(__name__)

_EXPORT_TOLERANCE: Final = 1e-3


@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest: Manifest
    metrics: dict[str, float]
    quantization: Quantization
    label_names: tuple[str, ...] = field(default=())


def export_artifact(
    *,
    policy: FederationPolicy,
    checkpoint: Checkpoint,
    heldout: HeldOut,
    keypair: KeyPair,
    out: str | os.PathLike[str],
    quantization: Quantization | None = None,
    max_length: int = 64,
    name: str | None = None,
    version: str | None = None,
    labels: Mapping[str, str] | None = None,
    metrics_path: str | os.PathLike[str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> ExportResult:
    """Merge, export, quantize, evaluate both on ``heldout``, sign, and install at ``out``."""
    settings = quantization or Quantization()
    target = check_output(out, force=force)
    if len(heldout.label_names) != policy.spec.model.num_labels:
        raise UsageError(
            f"{heldout.path}: {len(heldout.label_names)} labels, the policy's model has "
            f"{policy.spec.model.num_labels}"
        )
    merged = load_merged_model(policy, checkpoint.arrays, base_dir=base_dir)
    feeds = heldout_feeds(merged, heldout.texts, max_length=max_length)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="fedge-export-") as scratch:
            fp32 = export_onnx(merged, Path(scratch) / "model-fp32.onnx", max_length=max_length)
            fp32_logits = onnx_logits(fp32, feeds)
            check = {k: v[:8] for k, v in feeds.items()}
            drift = float(np.max(np.abs(torch_logits(merged, check) - fp32_logits[:8])))
            if drift > _EXPORT_TOLERANCE:
                raise FedgeError(f"the ONNX export differs from torch by {drift:.2e} in logits")
            int8 = quantize_onnx(fp32, staging / MODEL_FILE, settings, calibration=feeds)
            int8_logits = onnx_logits(int8, feeds)
            fp32_size = fp32.stat().st_size
        metrics = {
            "accuracy_fp32": accuracy(fp32_logits, heldout.labels),
            "accuracy_int8": accuracy(int8_logits, heldout.labels),
            "agreement_int8_fp32": float(
                np.mean(np.argmax(int8_logits, axis=-1) == np.argmax(fp32_logits, axis=-1))
            ),
            "size_bytes_fp32": float(fp32_size),
            "size_bytes_int8": float(int8.stat().st_size),
            "heldout_examples": float(len(heldout.texts)),
        }
        write_payload(staging, merged, labels=heldout.label_names, max_length=max_length)
        manifest = sign_artifact(
            staging,
            keypair,
            name=name or policy.metadata.name,
            version=version or f"r{checkpoint.round}-{arrays_digest(checkpoint.arrays)[:8]}",
            format=ARTIFACT_FORMAT,
            provenance=provenance_for(policy, checkpoint, metrics_path=metrics_path),
            labels={**policy.metadata.labels, **(labels or {})},
            metrics=metrics,
        )
        # mkdtemp makes the folder private; an artifact holds no secret and is for others to read
        os.chmod(staging, 0o755)  # noqa: S103
        install_folder(staging, target, force=force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s %s to %s (%s)", manifest.name, manifest.version, target, metrics)
    return ExportResult(target, manifest, metrics, settings, heldout.label_names)
