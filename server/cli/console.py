"""``fedge console``: the operator's live console in the browser (see :mod:`server.console`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedge.cli import out
from fedge.errors import UsageError
from server.cli.fleet import (
    CaOption,
    InsecureOption,
    PasswordOption,
    UserOption,
    broker_endpoint,
)

__all__ = ["console", "register"]

OptionalBroker = Annotated[
    str | None,
    typer.Option("--broker", help="The fleet's MQTT broker HOST:PORT, for the fleet views."),
]
OptionalFleet = Annotated[str | None, typer.Option("--fleet", help="The fleet's name.")]


def console(
    *,
    workdir: Annotated[
        Path, typer.Option("--workdir", help="The operator's folder: runs, registry, placement.")
    ],
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; beyond loopback needs TLS.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8765,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="Server certificate (PEM; fedge certs).")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="Its private key.")] = None,
    name: Annotated[
        list[str] | None,
        typer.Option("--name", help="Another host name the console is reached by (repeat)."),
    ] = None,
    coordinator_dir: Annotated[
        Path | None,
        typer.Option("--coordinator", help="The enrollment folder (default: found below)."),
    ] = None,
    placement_state: Annotated[
        Path | None, typer.Option("--placement-state", help="The placement SQLite state.")
    ] = None,
    superlink: Annotated[
        str | None,
        typer.Option("--superlink", help="The SuperLink (loopback), to revoke and stop runs."),
    ] = None,
    federation_ca: Annotated[
        Path | None,
        typer.Option("--federation-ca", help="The federation's CA (tokens, the SuperLink's TLS)."),
    ] = None,
    coordinator: Annotated[
        str | None, typer.Option("--advertise", help="Enrollment HOST:PORT holders are told.")
    ] = None,
    broker: OptionalBroker = None,
    fleet: OptionalFleet = None,
    ca: CaOption = None,
    username: UserOption = None,
    password_file: PasswordOption = None,
    no_tls: InsecureOption = False,
) -> None:
    """Serve the live console: runs, holders, placement and fleet, with audited actions.

    A token is made on first start (stored 0600 in WORKDIR/.console/token) and printed; the
    browser trades it for a session cookie. Ctrl-C stops the console.
    """
    from server.console.actions import ActionSettings
    from server.console.fleet_watch import FleetSettings
    from server.console.serve import ConsoleServer, ConsoleSettings

    fleet_settings = None
    if (broker is None) != (fleet is None):
        raise UsageError("--broker and --fleet go together")
    if broker is not None and fleet is not None:
        flags: list[tuple[str, str | bool]] = [("broker", broker), ("fleet", fleet)]
        for key, value in (("ca", ca), ("username", username), ("password_file", password_file)):
            if value is not None:
                flags.append(
                    (key, str(Path(value).resolve()) if isinstance(value, Path) else value)
                )
        if no_tls:
            flags.append(("no_tls", True))
        fleet_settings = FleetSettings(
            endpoint=broker_endpoint(broker, ca, username, password_file, no_tls),
            fleet=fleet,
            flags=tuple(flags),
        )
    settings = ConsoleSettings(
        workdir=workdir,
        host=host,
        port=port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        names=tuple(name or ()),
        registry_dir=coordinator_dir,
        placement_state=placement_state,
        fleet=fleet_settings,
        actions=ActionSettings(ca=federation_ca, superlink=superlink, coordinator=coordinator),
    )
    server = ConsoleServer(settings)
    out.print(f"fedge console on {server.url}", markup=False)
    out.print(f"operator token: {server.token}", markup=False)
    out.print(f"(stored in {workdir.resolve() / '.console' / 'token'}); Ctrl-C stops", markup=False)
    server.run()


def register(app: typer.Typer) -> None:
    app.command("console")(console)
