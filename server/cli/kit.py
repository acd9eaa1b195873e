"""``fedge kit``: startup kits, one folder per site (a data holder, an edge device)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedge.cli import out

__all__ = ["kit_app", "register"]

kit_app = typer.Typer(
    help="Startup kits: everything a data holder or an edge device needs, in one folder.",
    no_args_is_help=True,
)

OutOption = Annotated[Path, typer.Option("--out", "-o", help="The kit folder to write.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")]


@kit_app.command("holder")
def holder(
    name: Annotated[str, typer.Argument(help="The data holder's name.")],
    ca: Annotated[Path, typer.Option("--ca", help="The federation's CA certificate (PEM).")],
    policy: Annotated[Path, typer.Option("--policy", "-p", help="The FederationPolicy YAML.")],
    coordinator: Annotated[
        str, typer.Option("--coordinator", help="The enrollment endpoint's HOST:PORT.")
    ],
    output: OutOption,
    *,
    workdir: Annotated[
        Path,
        typer.Option("--workdir", help="The coordinator's folder (holds enrollment.sqlite)."),
    ] = Path("fedge-coordinator"),
    expires: Annotated[
        str, typer.Option("--expires", help="How long the token is valid, e.g. 24h, 7d.")
    ] = "24h",
    force: ForceOption = False,
) -> None:
    """A holder's kit: a one-time token, its copy of the policy, and start.sh (enroll, start)."""
    from server.cli.enroll import issue_token
    from server.enrollment.rules import format_time
    from server.kit.kits import holder_kit

    if not policy.is_file():  # before a token is spent on a kit that cannot be written
        from fedge.errors import UsageError

        raise UsageError(f"--policy {policy}: file does not exist")
    issued = issue_token(name, ca, expires=expires, workdir=workdir, purpose="enroll")
    kit = holder_kit(
        output,
        name=issued.name,
        token=issued.token,
        expires_at=format_time(issued.expires_at),
        policy=policy,
        coordinator=coordinator,
        ca=ca,
        force=force,
    )
    out.print(f"holder kit for {kit.name} in {kit.folder} (token valid until {kit.expires_at})")
    out.print(f"hand it over privately; the holder runs: {kit.folder}/start.sh THEIR-DATA-FILE")


@kit_app.command("device")
def device(
    device_id: Annotated[str, typer.Argument(help="The device id (topic level).")],
    fleet: Annotated[str, typer.Option("--fleet", help="The device's fleet.")],
    broker_dir: Annotated[
        Path, typer.Option("--broker-dir", help="The broker folder (`fedge broker init`).")
    ],
    trusted: Annotated[
        list[str],
        typer.Option("--trusted", help="Signing key: ed25519:<base64> or a PEM file; repeatable."),
    ],
    output: OutOption,
    *,
    http_port: Annotated[
        int, typer.Option("--http-port", min=0, max=65535, help="The agent's local HTTP port.")
    ] = 8080,
    force: ForceOption = False,
) -> None:
    """A device's kit: broker CA and credentials, agent.yaml, start.sh; its broker account."""
    from server.kit.broker import BrokerFolder
    from server.kit.kits import device_kit

    kit = device_kit(
        output,
        broker=BrokerFolder(broker_dir),
        fleet=fleet,
        device=device_id,
        trusted=trusted,
        http_port=http_port,
        force=force,
    )
    out.print(f"device kit for {device_id} in {kit.folder} (broker account {kit.username})")
    out.print("a running mosquitto re-reads its files on SIGHUP: kill -HUP <its pid>")
    out.print(f"on the device: {kit.folder}/start.sh")


def register(app: typer.Typer) -> None:
    app.add_typer(kit_app, name="kit")
