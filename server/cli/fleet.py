"""``fedge deploy``, ``fedge deploy status`` and ``fedge fleet status``: the operator and the fleet.

``fedge deploy`` prints the rollout as it goes (stages, each device's phase, the soak countdown,
the health figures it decides on) and keeps the same progress retained on the broker, on an
operator-only topic, so that ``fedge deploy status`` in any terminal, and ``--detach`` (a
background process, see :mod:`server.fleet.detach`), work from the broker alone.

The broker password comes from ``--password-file`` or the ``FEDGE_BROKER_PASSWORD`` environment
variable, never from a flag (flags show in ``ps``) and never in YAML.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from fedge.bounded import InputError, load_json, read_capped, read_capped_text
from fedge.cli import Column, OutputFormat, OutputOption, emit, err, out, output_format
from fedge.errors import EdgeError, UsageError
from fedge.output import document

if TYPE_CHECKING:
    from server.fleet.controller import BrokerEndpoint
    from server.fleet.progress import ProgressEvent, RolloutDocument
    from server.fleet.rollout_reader import RolloutReader

__all__ = ["deploy_app", "fleet_app", "register"]

fleet_app = typer.Typer(help="The edge fleet as the broker holds it.", no_args_is_help=True)
deploy_app = typer.Typer(no_args_is_help=True)  # its help is the rollout's docstring

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
WatchOption = Annotated[
    bool, typer.Option("--watch", "-w", help="Keep showing changes until Ctrl-C.")
]
T = TypeVar("T")


def broker_endpoint(
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
            password = read_capped_text(password_file, limit=64 << 10, what="a password").strip()
        except InputError as exc:
            raise UsageError(f"--password-file {exc}") from exc
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


def _now() -> datetime:
    from edge_agent.protocol import utc_now

    return utc_now()


def _when(value: str | None, now: datetime) -> str:
    """``2026-12-05T08:30:01Z (3 s ago)`` from an ISO timestamp."""
    if not value:
        return "-"
    at = datetime.fromisoformat(value).astimezone(UTC)
    ago = max(0, round((now - at).total_seconds()))
    return f"{at:%Y-%m-%dT%H:%M:%SZ} ({ago} s ago)"


# -- fedge fleet status -----------------------------------------------------------------------


def _ms(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, float) else "-"


def _device_columns(now: datetime) -> list[Column]:
    return [
        Column("device", lambda r: str(r["device"])),
        Column("online", lambda r: "yes" if r["online"] else "no"),
        Column("desired", lambda r: str(r["desired"] or "-")),
        Column("reported", lambda r: str(r["reported"] or "-")),
        Column("phase", lambda r: str(r["phase"] or "-")),
        Column("p95 ms", lambda r: _ms(r["p95Ms"]), justify="right"),
        Column("last seen", lambda r: _when(r["lastSeen"], now)),
        Column("samples", lambda r: str(r["samples"]), wide=True, justify="right"),
        Column("error rate", lambda r: f"{r['errorRate']:.3f}" if r["samples"] else "-", wide=True),
        Column("p50 ms", lambda r: _ms(r["p50Ms"]), wide=True, justify="right"),
        Column("error", lambda r: str(r["error"] or "-"), wide=True),
    ]


def _print_fleet(
    rows: list[dict[str, Any]], fleet: str, fmt: OutputFormat, *, legacy_json: bool, watch: bool
) -> None:
    if legacy_json:
        out.file.write(json.dumps(rows, indent=None if watch else 2) + "\n")
        out.file.flush()
        return
    doc = document("DeviceList", rows, fleet=fleet)
    if watch and fmt is OutputFormat.JSON:  # one document per line: a stream a script can read
        out.file.write(json.dumps(doc) + "\n")
        out.file.flush()
        return
    if watch and fmt is OutputFormat.YAML:
        out.file.write("---\n")
    now = _now()
    if watch and not fmt.is_document:
        if out.is_terminal:
            out.clear()
        out.print(f"fleet {fleet} at {now:%H:%M:%S}; Ctrl-C to stop", markup=False)
    emit(doc, fmt, columns=_device_columns(now), title=None if watch else f"fleet {fleet}")
    out.file.flush()


@fleet_app.command("status")
def fleet_status(
    broker: BrokerOption,
    fleet: FleetOption,
    *,
    ca: CaOption = None,
    username: UserOption = None,
    password_file: PasswordOption = None,
    no_tls: InsecureOption = False,
    output: OutputOption = OutputFormat.TABLE,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="The rows as a bare JSON list (before -o json existed)."),
    ] = False,
    watch: WatchOption = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.5, help="Seconds between --watch refreshes.")
    ] = 2.0,
) -> None:
    """Every device's desired and reported version, phase, health and last seen.

    "last seen" is the device's own newest timestamp (its reported, status or telemetry time),
    not when this command received the broker's retained copy. A fleet no device has ever
    reported in exits 2.
    """
    from server.fleet.controller import FleetClient
    from server.fleet.listing import device_items

    fmt = output_format(output, as_json)
    settings = broker_endpoint(broker, ca, username, password_file, no_tls)
    with FleetClient(settings, fleet) as connection:
        time.sleep(1.0)  # retained messages arrive right after the subscription
        records = connection.snapshot()
        if not records:
            raise UsageError(f"--fleet {fleet}: no device of this fleet has reported to the broker")
        _print_fleet(device_items(records), fleet, fmt, legacy_json=as_json, watch=watch)
        if not watch:
            return
        try:
            while True:
                deadline = time.monotonic() + interval
                connection.wait_for_change(interval)
                time.sleep(max(0.0, deadline - time.monotonic()))
                rows = device_items(connection.snapshot())
                _print_fleet(rows, fleet, fmt, legacy_json=as_json, watch=True)
        except KeyboardInterrupt:
            return  # Ctrl-C is how a watch ends


# -- fedge deploy -----------------------------------------------------------------------------


def _print_event(event: ProgressEvent) -> None:
    """A progress line, at once (also into a pipe or the detached log). A halt is not printed:
    the command's one error line says it."""
    if event.kind != "halted":
        out.print(event.text, markup=False)
        out.file.flush()


def _required(value: T | None, flag: str) -> T:
    if value is None:
        raise UsageError(f"{flag} is required (see 'fedge deploy --help')")
    return value


@deploy_app.callback(invoke_without_command=True)
def deploy(
    ctx: typer.Context,
    *,
    artifact: Annotated[
        Path | None, typer.Option("--artifact", help="The signed artifact folder (required).")
    ] = None,
    urls: Annotated[
        Path | None,
        typer.Option("--urls", help="Replica URLs from `fedge place urls --out` (required)."),
    ] = None,
    rollout: Annotated[
        Path | None, typer.Option("--rollout", help="RolloutPolicy YAML file (required).")
    ] = None,
    broker: Annotated[
        str | None, typer.Option("--broker", help="The MQTT broker's HOST:PORT (TLS; required).")
    ] = None,
    fleet: Annotated[
        str | None, typer.Option("--fleet", help="The fleet's name (topic level; required).")
    ] = None,
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
    deployment_id: Annotated[
        str | None,
        typer.Option("--deployment-id", help="The deployment's id (default: NAME-VERSION-random)."),
    ] = None,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach",
            help="Return once the rollout has started; a background fedge process (its own "
            "session, output in --log) carries it out. Follow it with `fedge deploy status`. "
            "Nothing restarts that process if it is killed or the machine reboots.",
        ),
    ] = False,
    log: Annotated[
        Path | None,
        typer.Option("--log", help="With --detach: the log (default fedge-deploy-ID.log)."),
    ] = None,
    controller_log: Annotated[str | None, typer.Option("--controller-log", hidden=True)] = None,
) -> None:
    """Roll a placed artifact out to a fleet: canary, soak, the rest; roll back on bad health.

    Prints each stage, every device's phase change, the soak countdown and the health figures
    (error rate, p95 latency, samples) it decides on; the same progress is kept retained on the
    broker for `fedge deploy status`. Exits 1 if the rollout halts.
    """
    if ctx.invoked_subcommand is not None:
        return
    artifact = _required(artifact, "--artifact")
    urls = _required(urls, "--urls")
    rollout = _required(rollout, "--rollout")
    broker, fleet = _required(broker, "--broker"), _required(fleet, "--fleet")
    from policies import RolloutPolicy, load_one
    from server.fleet.controller import desired_for_artifact, run_rollout
    from server.fleet.progress import ControllerInfo

    spec = load_one(rollout, RolloutPolicy).spec
    try:
        replica_urls = load_json(
            read_capped(urls, limit=4 << 20, what="a replica-URL document"), source=str(urls)
        )
    except InputError as exc:
        raise UsageError(f"--urls {exc}") from exc
    desired = desired_for_artifact(artifact, replica_urls, deployment_id=deployment_id)
    settings = broker_endpoint(broker, ca, username, password_file, no_tls)
    chosen = [d.strip() for d in devices.split(",") if d.strip()] if devices else None
    out.print(f"deploying {desired.artifact} {desired.version} as {desired.deployment_id}")
    if detach:
        _detach(ctx, desired.deployment_id, settings, fleet, log)
        return
    import signal
    import socket

    def stopped(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM (kill, systemd, a detached one's stop) as Ctrl-C

    signal.signal(signal.SIGTERM, stopped)  # so the rollout's document says it stopped
    info = ControllerInfo(pid=os.getpid(), host=socket.gethostname(), log=controller_log)
    state = run_rollout(
        settings, fleet, desired, spec, devices=chosen, on_progress=_print_event, controller=info
    )
    if state.stage != "succeeded":
        undone = f"; rolled back {', '.join(state.updated)}" if state.rolled_back else ""
        raise EdgeError(f"rollout halted: {state.reason}{undone}")
    if placement_state is not None:
        from cloud_adapters.placement.lock import StateLock
        from cloud_adapters.placement.state import PlacementState

        # Serialized with `fedge place apply`, whose retention reads what is deployed.
        with StateLock(placement_state, wait_s=30), PlacementState(placement_state) as store:
            store.set_deployed(desired.artifact, desired.version)


def _detach(
    ctx: typer.Context, deployment_id: str, settings: BrokerEndpoint, fleet: str, log: Path | None
) -> None:
    """Start this same command in the background, for ``deployment_id``, and return."""
    from server.fleet.detach import detached_argv, start_detached

    log = (log or Path(f"fedge-deploy-{deployment_id}.log")).resolve()
    argv = detached_argv(ctx.params, deployment_id, log=log)
    process, doc = start_detached(argv, settings, fleet, deployment_id, log=log)
    out.print(f"rollout {deployment_id} runs in the background (pid {process.pid}); log: {log}")
    shared = ("broker", "ca", "username", "password_file", "no_tls")
    connection = [
        f"--{name.replace('_', '-')}" + ("" if value is True else f" {value}")
        for name, value in ctx.params.items()
        if name in shared and value
    ]
    out.print(f"now: {doc.stage}; follow it with:", markup=False)
    out.print(
        f"  fedge deploy status --fleet {fleet} --deployment {deployment_id} --watch "
        + " ".join(connection),
        markup=False,
    )


# -- fedge deploy status ----------------------------------------------------------------------


def _rollout_columns(now: datetime) -> list[Column]:
    return [
        Column("fleet", lambda r: str(r["fleet"])),
        Column("deployment", lambda r: str(r["deploymentId"])),
        Column("version", lambda r: f"{r['artifact']} {r['version']}"),
        Column("state", lambda r: str(r["stateText"])),
        Column("done", lambda r: f"{r['succeeded']}/{len(r['devices'])}", justify="right"),
        Column("started", lambda r: _when(r["startedAt"], now)),
        Column("updated", lambda r: _when(r["updatedAt"], now)),
        Column("controller", lambda r: "{pid}@{host}".format(**r["controller"]), wide=True),
        Column("log", lambda r: str(r["controller"].get("log") or "-"), wide=True),
        Column("reason", lambda r: str(r["stopped"] or r["reason"] or "-"), wide=True),
    ]


def _select(
    documents: list[RolloutDocument], fleet: str | None, deployment: str | None
) -> list[RolloutDocument]:
    if deployment is not None:
        found = [d for d in documents if d.deployment_id == deployment]
        if not found:
            where = f" of fleet {fleet}" if fleet else ""
            raise UsageError(f"--deployment {deployment}: no such rollout{where} on the broker")
        return found
    if fleet is not None and not documents:
        raise UsageError(f"--fleet {fleet}: no rollout of this fleet is recorded on the broker")
    return documents


def _follow(reader: RolloutReader, doc: RolloutDocument, fmt: OutputFormat) -> None:
    """Print a rollout's progress lines (its history, then each new one) until it ends; with
    ``-o json`` one document per line, each time the controller writes it."""
    from server.fleet.listing import STALE_AFTER, rollout_item

    printed, shown, warned = 0, None, False
    if not fmt.is_document:
        out.print(f"rollout {doc.deployment_id} (fleet {doc.fleet}): {doc.artifact} {doc.version}")
    while True:
        if fmt.is_document and doc.updated_at != shown:
            out.file.write(json.dumps(rollout_item(doc, _now())) + "\n")
            out.file.flush()
            shown = doc.updated_at
        elif not fmt.is_document:
            new = [e for e in doc.events if e.seq > printed]
            if new and printed and new[0].seq > printed + 1:
                out.print(f"({new[0].seq - printed - 1} lines not shown)", markup=False)
            for event in new:
                _print_event(event)
            printed = doc.events[-1].seq if doc.events else printed
        if doc.stopped is not None:
            raise EdgeError(f"rollout {doc.deployment_id} stopped in {doc.stage}: {doc.stopped}")
        if doc.stage == "halted":
            undone = f"; rolled back {', '.join(doc.updated)}" if doc.rolled_back else ""
            raise EdgeError(f"rollout halted: {doc.reason}{undone}")
        if doc.stage == "succeeded":
            return
        silent = doc.silent_for(_now())
        if silent > STALE_AFTER and not warned:
            where = f"pid {doc.controller.pid} on {doc.controller.host}"
            err.print(f"the rollout's controller ({where}) is silent for {silent:.0f} s")
            warned = True
        reader.wait_for_change(1.0)
        doc = reader.get(doc.deployment_id) or doc


@deploy_app.command("status")
def deploy_status(
    broker: BrokerOption,
    *,
    fleet: Annotated[
        str | None, typer.Option("--fleet", help="Only this fleet (default: every fleet).")
    ] = None,
    deployment: Annotated[
        str | None, typer.Option("--deployment", help="Only this deployment id.")
    ] = None,
    ca: CaOption = None,
    username: UserOption = None,
    password_file: PasswordOption = None,
    no_tls: InsecureOption = False,
    output: OutputOption = OutputFormat.TABLE,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Follow one rollout (--deployment, or the newest) line by line until it ends; "
            "exits 1 if it halts. Ctrl-C stops watching, not the rollout.",
        ),
    ] = False,
) -> None:
    """Rollouts as their controllers recorded them on the broker, newest first.

    Works from any terminal with the operator's broker account, whether the rollout runs in a
    `fedge deploy` in the foreground or detached. An unknown --fleet or --deployment exits 2.
    """
    from server.fleet.listing import rollout_item
    from server.fleet.rollout_reader import RolloutReader

    fmt = output_format(output)
    settings = broker_endpoint(broker, ca, username, password_file, no_tls)
    with RolloutReader(settings, fleet) as reader:
        time.sleep(1.0)  # retained messages arrive right after the subscription
        chosen = _select(reader.documents(), fleet, deployment)
        if watch:
            if not chosen:
                raise UsageError("no rollout is recorded on the broker")
            try:
                _follow(reader, chosen[0], fmt)
            except KeyboardInterrupt:
                err.print("stopped watching; the rollout goes on")
            return
    now = _now()
    items = [rollout_item(doc, now) for doc in chosen]
    emit(
        document("RolloutList", items, fleet=fleet),
        fmt,
        columns=_rollout_columns(now),
        title="rollouts",
    )
    if len(chosen) == 1 and not fmt.is_document:
        doc = chosen[0]
        for name, state in doc.device_states.items():
            line = f"  {name}: {state.phase or 'not started'}"
            if state.phase == "SUCCEEDED":
                from server.fleet.progress import health_figures

                line += f" on {state.version} ({health_figures(state)})"
            out.print(line + ("" if state.online else " (offline)"), markup=False)
        for event in doc.events[-10:]:
            out.print(f"  {event.at:%H:%M:%S} {event.text}", markup=False)


def register(app: typer.Typer) -> None:
    """Add ``deploy`` (with ``deploy status``) and ``fleet`` to the operator's ``fedge`` app."""
    app.add_typer(deploy_app, name="deploy")
    app.add_typer(fleet_app, name="fleet")
