"""The merged classifier as an fp32 ONNX file, and ONNX Runtime logits the way a device gets them.

The graph takes the inputs of :data:`fedge.payload.INPUT_NAMES` the model accepts, int64 of shape
[batch, sequence] (both dynamic), and gives one output, ``logits`` [batch, labels]: the payload
contract the edge agent reads.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from fedge.errors import FedgeError
from fedge.payload import OUTPUT_NAME
from server.export.merged import Feeds, MergedModel

__all__ = ["OPSET", "export_onnx", "onnx_logits"]

OPSET: Final = 17


def export_onnx(merged: MergedModel, path: str | os.PathLike[str], *, max_length: int) -> Path:
    """Export the merged classifier to ONNX (fp32, opset 17), batch and sequence dynamic.

    The TorchScript exporter (``dynamo=False``) is used: the torch.export-based one needs
    onnxscript, which fedge does not install, and this one gives the same logits as torch here.
    """
    import torch

    class LogitsOnly(torch.nn.Module):
        """Positional inputs in a fixed order, and logits as the one output."""

        def __init__(self, model: torch.nn.Module, names: tuple[str, ...]) -> None:
            super().__init__()
            self.model = model
            self.names = names

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            logits: torch.Tensor = self.model(**dict(zip(self.names, inputs, strict=True))).logits
            return logits

    target = Path(path)
    names = merged.input_names
    wrapper = LogitsOnly(merged.model, names).eval()
    sample = tuple(torch.ones((2, max_length), dtype=torch.long) for _ in names)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes[OUTPUT_NAME] = {0: "batch"}
    try:
        with warnings.catch_warnings():
            # deprecation of the TorchScript exporter, and tracer notes on shape arithmetic
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                sample,
                str(target),
                input_names=list(names),
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    except (RuntimeError, TypeError, ValueError) as exc:
        raise FedgeError(f"ONNX export of {merged.source} failed ({exc})") from exc
    finally:
        merged.model.eval()  # the exporter restores the wrapper's (training) mode recursively
    return target


def onnx_logits(
    path: str | os.PathLike[str],
    feeds: Feeds,
    *,
    batch_size: int = 64,
    threads: int | None = None,
) -> npt.NDArray[Any]:
    """Logits from ONNX Runtime's CPU provider, the way a device runs the model."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        wanted = [node.name for node in session.get_inputs()]
        count = len(feeds[wanted[0]])
        parts = [
            session.run([OUTPUT_NAME], {k: feeds[k][start : start + batch_size] for k in wanted})[0]
            for start in range(0, count, batch_size)
        ]
    except (RuntimeError, KeyError) as exc:
        raise FedgeError(f"{Path(path).name}: ONNX Runtime cannot run the model ({exc})") from exc
    return np.concatenate(parts)
