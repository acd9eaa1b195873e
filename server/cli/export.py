"""``fedge export``: a run's model as a signed ``onnx-int8`` artifact, accuracy measured.

Every input is checked (policy, checkpoint, held-out file, signing key, output folder) before
the model is loaded, so a typo costs a second, not a minute of export.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.table import Table

from fedge.cli import out
from fedge.errors import UsageError
from server.cli.labels import parse_labels

if TYPE_CHECKING:
    from policies import FederationPolicy

__all__ = ["register"]


def _policy(path: Path) -> FederationPolicy:
    from policies import FederationPolicy, check_files, the_one

    if not path.is_file():
        raise UsageError(f"--policy {path}: file does not exist")
    return the_one(check_files([path]), FederationPolicy, source=f"--policy {path}")


def _quiet() -> None:
    # transformers' progress bars and load reports would bury the one table this prints
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def register(app: typer.Typer) -> None:
    """Add the top-level ``export`` command to the operator's app."""

    @app.command("export")
    def export(
        policy: Annotated[
            Path, typer.Option("--policy", "-p", help="The run's FederationPolicy YAML.")
        ],
        heldout: Annotated[
            Path,
            typer.Option(
                "--heldout", help="Labelled .csv/.tsv/.jsonl file the accuracies are measured on."
            ),
        ],
        key: Annotated[Path, typer.Option("--key", help="Ed25519 signing key (PEM).")],
        output: Annotated[Path, typer.Option("--out", "-o", help="Artifact folder to create.")],
        *,
        workdir: Annotated[
            Path | None,
            typer.Option("--workdir", help="Run folder: its latest checkpoint and metrics."),
        ] = None,
        checkpoint: Annotated[
            Path | None,
            typer.Option("--checkpoint", help="A round-NNNNNN.npz checkpoint instead."),
        ] = None,
        label: Annotated[
            list[str] | None,
            typer.Option("--label", help="KEY=VALUE manifest label, repeatable (e.g. app=x)."),
        ] = None,
        quantization: Annotated[
            str,
            typer.Option(
                "--quantization",
                help="dynamic (default: best held-out accuracy) or static (calibrated on "
                "--heldout texts).",
            ),
        ] = "dynamic",
        reduce_range: Annotated[
            bool,
            typer.Option(
                "--reduce-range",
                help="7-bit weights, for x86 devices without VNNI (8-bit products can saturate).",
            ),
        ] = False,
        max_length: Annotated[
            int, typer.Option("--max-length", min=8, max=4096, help="Tokens per input.")
        ] = 64,
        name: Annotated[
            str | None, typer.Option("--name", help="Artifact name (default: the policy's).")
        ] = None,
        version: Annotated[
            str | None,
            typer.Option("--version", help="Artifact version (default: rROUND-DIGEST)."),
        ] = None,
        text_column: Annotated[str, typer.Option("--text-column")] = "text",
        label_column: Annotated[str, typer.Option("--label-column")] = "label",
        label_names: Annotated[
            str | None,
            typer.Option(
                "--label-names",
                help="Comma-separated class names in index order (default: the file's own).",
            ),
        ] = None,
        force: Annotated[
            bool, typer.Option("--force", help="Replace an existing --out folder.")
        ] = False,
    ) -> None:
        """Export the run's model: LoRA merged, ONNX int8, evaluated, signed."""
        from fedge.signing import load_private_key
        from server.export.build import export_artifact
        from server.export.folder import check_output
        from server.export.heldout import read_heldout
        from server.export.provenance import load_checkpoint
        from server.export.quantize import Quantization

        if quantization not in ("dynamic", "static"):
            raise UsageError(f"--quantization {quantization!r}: expected dynamic or static")
        mode: Literal["dynamic", "static"] = "static" if quantization == "static" else "dynamic"
        extra = parse_labels(label or [])
        doc = _policy(policy)
        keypair = load_private_key(key)
        check_output(output, force=force)
        found, metrics_path = load_checkpoint(workdir=workdir, checkpoint=checkpoint)
        names = None
        if label_names is not None:
            names = [part.strip() for part in label_names.split(",")]
            if any(not part for part in names) or len(set(names)) != len(names):
                raise UsageError(f"--label-names {label_names!r}: empty or repeated name")
        data = read_heldout(
            heldout,
            num_labels=doc.spec.model.num_labels,
            text_column=text_column,
            label_column=label_column,
            label_names=names,
        )
        _quiet()
        out.print(
            f"exporting run {found.run_id} round {found.round}: "
            f"{len(data.texts)} held-out examples from {heldout}"
        )
        result = export_artifact(
            policy=doc,
            checkpoint=found,
            heldout=data,
            keypair=keypair,
            out=output,
            quantization=Quantization(mode=mode, reduce_range=reduce_range),
            max_length=max_length,
            name=name,
            version=version,
            labels=extra,
            metrics_path=metrics_path,
            base_dir=policy.parent,
            force=force,
        )
        metrics = result.metrics
        table = Table(title=f"{result.manifest.name} {result.manifest.version} (onnx-int8)")
        for column in ("model", "accuracy", "size MB"):
            table.add_column(column, justify="left" if column == "model" else "right")
        table.add_row(
            "fp32 ONNX",
            f"{metrics['accuracy_fp32']:.4f}",
            f"{metrics['size_bytes_fp32'] / 1e6:.1f}",
        )
        table.add_row(
            f"int8 ({result.quantization.describe()})",
            f"{metrics['accuracy_int8']:.4f}",
            f"{metrics['size_bytes_int8'] / 1e6:.1f}",
        )
        out.print(table)
        out.print(
            f"signed artifact {result.path}: contentDigest {result.manifest.content_digest}, "
            f"manifest sha256 {result.manifest.digest}; int8 agrees with fp32 on "
            f"{metrics['agreement_int8_fp32']:.1%} of held-out examples"
        )
