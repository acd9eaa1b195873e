"""The artifact folder on disk: refuse an existing ``--out`` early, write the payload files beside
the model, and rename the signed folder into place.

The folder is built next to ``out`` and renamed into place once signed, so a reader sees no
artifact or a whole one; an artifact it replaces goes only once the new one is in.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from fedge.atomic import atomic_write_bytes, atomic_write_text, fsync_dir, fsync_file
from fedge.errors import UsageError
from fedge.payload import INFERENCE_FILE, MODEL_FILE, TOKENIZER_FILE, inference_document
from server.export.merged import MergedModel

__all__ = ["check_output", "install_folder", "tokenizer_json", "write_payload"]


def tokenizer_json(merged: MergedModel, max_length: int) -> bytes:
    """The fast tokenizer's file, truncating at ``max_length`` and padding nothing."""
    backend = getattr(merged.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UsageError(f"{merged.source}: the model has no fast tokenizer (tokenizer.json)")
    doc = json.loads(backend.to_str())
    doc["truncation"] = {
        "direction": "Right",
        "max_length": max_length,
        "strategy": "LongestFirst",
        "stride": 0,
    }
    doc["padding"] = None
    return json.dumps(doc, ensure_ascii=False, indent=None).encode("utf-8")


def write_payload(
    staging: Path, merged: MergedModel, *, labels: Sequence[str], max_length: int
) -> None:
    """The tokenizer and ``inference.json`` beside the model, and the model flushed to disk."""
    atomic_write_bytes(staging / TOKENIZER_FILE, tokenizer_json(merged, max_length))
    inference = inference_document(max_length=max_length, labels=labels, inputs=merged.input_names)
    atomic_write_text(staging / INFERENCE_FILE, json.dumps(inference, indent=2) + "\n")
    fsync_file(staging / MODEL_FILE)


def check_output(out: str | os.PathLike[str], *, force: bool) -> Path:
    """Refuse an existing ``--out`` early, before minutes of work, unless ``force``."""
    target = Path(out)
    if target.exists() and not force:
        raise UsageError(f"--out {target}: already exists (use --force to replace it)")
    if target.exists() and not target.is_dir():
        raise UsageError(f"--out {target}: exists and is not a folder")
    return target


def install_folder(staging: Path, target: Path, *, force: bool) -> None:
    """Rename the finished folder into place; an old artifact goes only once the new one is in."""
    check_output(target, force=force)
    old: Path | None = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
    os.rename(staging, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
