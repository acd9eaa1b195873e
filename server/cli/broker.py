"""``fedge broker``: the fleet's mosquitto configuration (TLS, passwords, per-device ACLs)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from fedge.cli import out

__all__ = ["broker_app", "register"]

broker_app = typer.Typer(
    help="The fleet's MQTT broker: write mosquitto's configuration, add devices.",
    no_args_is_help=True,
)

DirOption = Annotated[
    Path, typer.Option("--dir", help="The broker folder (from `fedge broker init`).")
]


@broker_app.command("init")
def init(
    output: Annotated[Path, typer.Option("--out", "-o", help="The broker folder to write.")],
    host: Annotated[str, typer.Option("--host", help="The name or IP devices dial.")],
    *,
    port: Annotated[int, typer.Option("--port", help="TLS port.")] = 8883,
    listen: Annotated[
        str | None,
        typer.Option("--listen", help="Address mosquitto binds (default: --host)."),
    ] = None,
    cert_host: Annotated[
        list[str] | None,
        typer.Option("--cert-host", help="More names in the server certificate; repeatable."),
    ] = None,
) -> None:
    """Write mosquitto.conf, certificates, the operator account and the ACL; print how to start.

    Running it again keeps certificates and passwords (no device is locked out).
    """
    from server.kit.broker import OPERATOR, BrokerFolder

    broker = BrokerFolder(output).init(
        host=host, port=port, cert_hosts=cert_host or (), listen=listen
    )
    out.print(f"broker folder   {output}")
    out.print(f"CA certificate  {broker.ca_cert()} (devices and the operator trust it)")
    out.print(f"operator        {OPERATOR}, password in {broker.password_file(OPERATOR)}")
    command = shlex.join(["mosquitto", "-c", str(broker.config)])
    out.print(f"start it with:  {command}", markup=False)
    out.print("add devices with `fedge kit device` (or `fedge broker add-device`)")


@broker_app.command("add-device")
def add_device(
    device: Annotated[str, typer.Argument(help="The device id (AgentConfig deviceId).")],
    fleet: Annotated[str, typer.Option("--fleet", help="The device's fleet.")],
    directory: DirOption,
) -> None:
    """Give a device an account confined to fedge/v1/<fleet>/<device>/#; keep every other."""
    from server.kit.broker import BrokerFolder

    broker = BrokerFolder(directory)
    user = broker.add_device(fleet, device)
    out.print(f"account {user}: password in {broker.password_file(user)}")
    out.print("a running mosquitto re-reads its files on SIGHUP: kill -HUP <its pid>")


def register(app: typer.Typer) -> None:
    app.add_typer(broker_app, name="broker")
