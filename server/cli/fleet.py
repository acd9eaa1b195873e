"""``fedge deploy`` and ``fedge fleet status``: the operator's side of the edge fleet.

The broker password comes from ``--password-file`` or the ``FEDGE_BROKER_PASSWORD`` environment
variable, never from a flag (flags show in ``ps``) and never in YAML.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fedge.cli import new_app, out
from fedge.errors import EdgeError, UsageError

if TYPE_CHECKING:
    from server.fleet.controller import BrokerEndpoint

__all__ = ["fleet_app", "register"]

fleet_app = new_app("fedge fleet", "The edge fleet as the broker holds it.")

BrokerOption = Annotated[
    str, typer.Option("--broker", help="The MQTT broker's HOST:PORT (TLS).", show_default=False)
]
CaOption = Annotated[
    Path | None, typer.Option("--ca", help="CA certificate the broker's certificate chains to.")
]
UserOption = Annotated[
    str | None, typer.Option("--username", help="The operator's broker account.")
]
PasswordOption = Annotated[
    Path | None,
    typer.Option(
        "--password-file", help="File holding the account's password (or FEDGE_BROKER_PASSWORD)."
    ),
]
FleetOption = Annotated[str, typer.Option("--fleet", help="The fleet's name (topic level).")]
InsecureOption = Annotated[
    bool,
    typer.Option("--no-tls", help="Plain MQTT, only to a broker on loopback (the demo's)."),
]


def _broker(
    address: str, ca: Path | None, username: str | None, password_file: Path | None, no_tls: bool
) -> BrokerEndpoint:
    from policies.rules import is_loopback_host
    from server.fleet.controller import BrokerEndpoint

    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--broker: expected HOST:PORT, got {address!r}")
    if no_tls and not is_loopback_host(host):
        raise UsageError(f"--no-tls: only allowed for a broker on loopback, not {host}")
    if ca is not None and not ca.is_file():
        raise UsageError(f"--ca {ca}: not a file")
    password = os.environ.get("FEDGE_BROKER_PASSWORD")
    if password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"--password-file {password_file}: {exc.strerror}") from exc
    from fedge.logs import register_secret

    if password:
        register_secret(password)
    return BrokerEndpoint(
        host=host,
        port=int(port),
        ca_file=ca,
        username=username,
        password=password,
        tls=not no_tls,
    )


@fleet_app.command("status")
def fleet_status(
    broker: BrokerOption,
    fleet: FleetOption,
    *,
    ca: CaOption = None,
    username: UserOption = None,
    password_file: PasswordOption = None,
    no_tls: InsecureOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Every device's desired and reported version, phase, health and last seen."""
    from server.fleet.controller import fleet_snapshot

    settings = _broker(broker, ca, username, password_file, no_tls)
    records = fleet_snapshot(settings, fleet)
    rows = []
    for name in sorted(records):
        record = records[name]
        reported = record.reported
        health = reported.health if reported else None
        rows.append(
            {
                "device": name,
                "online": record.view().online,
                "desired": record.desired.version if record.desired else None,
                "reported": reported.current.version if reported and reported.current else None,
                "phase": reported.phase.value if reported and reported.phase else None,
                "error": reported.error if reported else None,
                "samples": health.samples if health else 0,
                "errorRate": health.error_rate if health else None,
                "p50Ms": health.p50_ms if health else None,
                "p95Ms": health.p95_ms if health else None,
                "lastSeen": record.last_seen.isoformat() if record.last_seen else None,
            }
        )
    if as_json:
        out.print(json.dumps(rows, indent=2), markup=False)
        return
    table = Table(title=f"fleet {fleet}")
    for column in ("device", "online", "desired", "reported", "phase", "p95 ms", "last seen"):
        table.add_column(column)
    for row in rows:
        p95 = row["p95Ms"]
        table.add_row(
            str(row["device"]),
            "yes" if row["online"] else "no",
            str(row["desired"] or "-"),
            str(row["reported"] or "-"),
            str(row["phase"] or "-") + (f" ({row['error']})" if row["error"] else ""),
            f"{p95:.1f}" if isinstance(p95, float) else "-",
            str(row["lastSeen"] or "-"),
        )
    out.print(table)


def deploy(
    artifact: Annotated[Path, typer.Option("--artifact", help="The signed artifact folder.")],
    urls: Annotated[Path, typer.Option("--urls", help="Replica URLs from `fedge place urls -o`.")],
    rollout: Annotated[Path, typer.Option("--rollout", help="RolloutPolicy YAML file.")],
    broker: BrokerOption,
    fleet: FleetOption,
    *,
    ca: CaOption = None,
    username: UserOption = None,
    password_file: PasswordOption = None,
    no_tls: InsecureOption = False,
    devices: Annotated[
        str | None,
        typer.Option("--devices", help="Comma-separated device ids (default: every known one)."),
    ] = None,
    placement_state: Annotated[
        Path | None,
        typer.Option("--placement-state", help="Mark the version deployed in this state file."),
    ] = None,
) -> None:
    """Roll a placed artifact out to a fleet: canary, soak, the rest; roll back on bad health."""
    from policies import RolloutPolicy, load_one
    from server.fleet.controller import desired_for_artifact, run_rollout
    from server.fleet.rollout import Action, RolloutState

    spec = load_one(rollout, RolloutPolicy).spec
    try:
        replica_urls = json.loads(urls.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--urls {urls}: {exc.strerror}") from exc
    except ValueError as exc:
        raise UsageError(f"--urls {urls}: not JSON ({exc})") from exc
    desired = desired_for_artifact(artifact, replica_urls)
    settings = _broker(broker, ca, username, password_file, no_tls)
    chosen = [d.strip() for d in devices.split(",") if d.strip()] if devices else None

    def show(state: RolloutState, actions: list[Action]) -> None:
        for action in actions:
            if action.devices:
                out.print(f"{action.kind}: {', '.join(action.devices)}")
        if state.stage == "succeeded":  # a halt is the one error line below, not two
            out.print(f"rollout succeeded: {state.reason}")

    out.print(f"deploying {desired.artifact} {desired.version} as {desired.deployment_id}")
    state = run_rollout(settings, fleet, desired, spec, devices=chosen, on_step=show)
    if state.stage != "succeeded":
        undone = f"; rolled back {', '.join(state.updated)}" if state.rolled_back else ""
        raise EdgeError(f"rollout halted: {state.reason}{undone}")
    if placement_state is not None:
        from cloud_adapters.placement.state import PlacementState

        with PlacementState(placement_state) as store:
            store.set_deployed(desired.artifact, desired.version)


def register(app: typer.Typer) -> None:
    """Add ``deploy`` and ``fleet`` to the operator's ``fedge`` app."""
    app.command("deploy")(deploy)
    app.add_typer(fleet_app, name="fleet")
