"""``fedge artifact``: sign a folder as an artifact, verify one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedge.cli import out
from server.cli.labels import parse_labels

__all__ = ["register"]

artifact_app = typer.Typer(help="Sign and verify model artifacts.", no_args_is_help=True)


@artifact_app.command("sign")
def artifact_sign(
    directory: Annotated[Path, typer.Argument(help="Folder of files that make the artifact.")],
    *,
    key: Annotated[Path, typer.Option("--key", help="Ed25519 private key (PEM).")],
    name: Annotated[str, typer.Option("--name", help="Artifact name.")],
    version: Annotated[str, typer.Option("--version", help="Artifact version.")],
    fmt: Annotated[
        str, typer.Option("--format", help="Artifact format, e.g. onnx-int8.")
    ] = "files",
    label: Annotated[
        list[str] | None, typer.Option("--label", help="KEY=VALUE, repeatable.")
    ] = None,
) -> None:
    """Write manifest.json and manifest.sig for a folder."""
    from fedge.artifact import sign_artifact
    from fedge.signing import load_private_key

    manifest = sign_artifact(
        directory,
        load_private_key(key),
        name=name,
        version=version,
        format=fmt,
        labels=parse_labels(label or []),
    )
    out.print(
        f"signed {manifest.name} {manifest.version}: {len(manifest.files)} file(s), "
        f"contentDigest {manifest.content_digest}, manifest sha256 {manifest.digest}"
    )


@artifact_app.command("verify")
def artifact_verify(
    directory: Annotated[Path, typer.Argument(help="Artifact folder.")],
    trusted: Annotated[
        list[str],
        typer.Option("--trusted", help="Public key: PEM file or ed25519:<base64>. Repeatable."),
    ],
) -> None:
    """Verify the signature and every file of an artifact."""
    from fedge.artifact import verify_artifact
    from fedge.signing import parse_public_key

    manifest = verify_artifact(directory, [parse_public_key(value) for value in trusted])
    table = Table(title=f"{manifest.name} {manifest.version} ({manifest.format}): verified")
    table.add_column("file")
    table.add_column("size", justify="right")
    table.add_column("sha256")
    for entry in manifest.files:
        table.add_row(entry.path, str(entry.size), entry.sha256[:16] + "…")
    out.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(artifact_app, name="artifact")
