"""``fedge keys``: the Ed25519 key pair that signs artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedge.cli import out
from fedge.errors import UsageError

__all__ = ["register"]

keys_app = typer.Typer(help="Ed25519 signing keys for artifacts.", no_args_is_help=True)


@keys_app.command("generate")
def keys_generate(
    output: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for signing.key (0600) and signing.pub.")
    ],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key pair.")] = False,
) -> None:
    """Generate an Ed25519 key pair for signing artifacts."""
    from fedge.signing import generate_keypair

    if (output / "signing.key").exists() and not force:
        raise UsageError(
            f"{output / 'signing.key'}: a signing key already exists (use --force to replace it)"
        )
    keypair = generate_keypair()
    key_path, pub_path = keypair.save(output)
    out.print(f"private key  {key_path} (mode 0600, keep it secret)")
    out.print(f"public key   {pub_path}")
    out.print(f"key id       {keypair.public.key_id}")
    out.print(f"trust it in an AgentConfig with: {keypair.public.inline}")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
