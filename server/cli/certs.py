"""``fedge certs``: a throw-away CA and SuperLink certificate for a test or private federation."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from fedge.cli import out

__all__ = ["register"]


def certs(
    output: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for ca.crt, server.pem and keys.")
    ],
    *,
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Name or IP in the server certificate; repeatable."),
    ] = None,
    days: Annotated[int, typer.Option("--days", min=1, max=3650, help="Validity.")] = 30,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
) -> None:
    """Make a self-signed CA and a SuperLink certificate for a test or private federation."""
    from fedge.tls import generate_federation_certs

    paths = generate_federation_certs(
        output, hosts=tuple(host or ("localhost", "127.0.0.1")), days=days, overwrite=force
    )
    out.print(f"CA certificate      {paths.ca_cert} (give it to every data holder)")
    out.print(f"SuperLink cert/key  {paths.server_cert} / {paths.server_key}")
    from server.federation.deployment_engine import superlink_command

    out.print(f"start the SuperLink with: {shlex.join(superlink_command(paths))}", markup=False)
    enrolled = shlex.join(superlink_command(paths, supernode_auth=True))
    out.print(f"with enrollment (fedge enroll, fedge kit holder): {enrolled}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("certs")(certs)
