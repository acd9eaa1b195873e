"""``fedge runs``: the runs on a SuperLink, as ``flwr ls / stop / log`` show them, with rounds.

The SuperLink knows a run's state but nothing of rounds or holders; the ServerApp leaves those
in its work directory (``flower-runs/<run>.json``, see server/federation/deployment_engine.py),
so ``--workdir`` names the run folders whose progress fills the round and clients columns.
Every command talks to the SuperLink through the same ``flwr`` wrapper ``fedge train`` uses,
with a private, throw-away Flower home, after checking that the address and CA are right.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fedge.cli import Column, OutputFormat, OutputOption, emit, out
from fedge.errors import UsageError
from fedge.output import document

if TYPE_CHECKING:
    from server.federation.deployment_engine import RunStatus

__all__ = ["register"]

runs_app = typer.Typer(
    help="Runs on a SuperLink: list them (the default), stop one, show its log.",
    invoke_without_command=True,
    no_args_is_help=False,
)

SuperlinkOption = Annotated[
    str | None, typer.Option("--superlink", help="The SuperLink's control address HOST:PORT.")
]
CaOption = Annotated[
    Path | None, typer.Option("--ca", help="The federation's CA certificate (PEM).")
]


@contextmanager
def _flwr_home(superlink: str | None, ca: Path | None) -> Iterator[Path]:
    """A private Flower home with fedge's connection, after a TLS check of address and CA."""
    from server.federation.deployment_engine import check_superlink, write_flwr_home

    if superlink is None or ca is None:
        raise UsageError("--superlink HOST:PORT and --ca CA are required")
    if not ca.is_file():
        raise UsageError(f"--ca {ca}: CA certificate not found")
    check_superlink(superlink, ca)
    with tempfile.TemporaryDirectory(prefix="fedge-flwr-") as scratch:
        home = Path(scratch)
        write_flwr_home(home, address=superlink, root_certificates=ca.resolve())
        yield home


def _progress(workdirs: list[Path]) -> dict[int, dict[str, Any]]:
    from server.federation.deployment_engine import read_progress

    found: dict[int, dict[str, Any]] = {}
    for folder in workdirs:
        if not folder.is_dir():
            raise UsageError(f"--workdir {folder}: not a folder")
        for flower_run, body in read_progress(folder).items():
            found[flower_run] = {**body, "workdir": str(folder.resolve())}
    return found


def _item(run: RunStatus, body: dict[str, Any] | None) -> dict[str, Any]:
    """One run as ``-o json`` prints it (a ``RunList`` item; the table shows the same fields).

    ``run`` is a string, as in ``flwr ls``: Flower's ids are 64-bit and would lose digits in a
    reader that keeps numbers as doubles (jq, JavaScript).
    """
    body = body or {}
    waiting = body.get("state") == "waiting" and not run.finished
    return {
        "run": str(run.run_id),
        "state": run.status,
        "details": run.details or None,
        "started": run.started or None,
        "name": body.get("run-id"),
        "round": body.get("round"),
        "rounds": body.get("rounds"),
        "clients": body.get("connected") if waiting else body.get("clients"),
        "progress": body.get("state"),
        "workdir": body.get("workdir"),
    }


def _reached(item: Mapping[str, Any]) -> str:
    if item["progress"] == "waiting" and item["state"] == "running":
        return "waiting for nodes"
    return f"{item['round']}/{item['rounds']}" if item["rounds"] else "-"


def _cell(key: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda item: "-" if item[key] is None else str(item[key])


RUN_COLUMNS = (
    Column("run", _cell("run")),
    Column("state", _cell("state")),
    Column("round", _reached),
    Column("clients", _cell("clients"), justify="right"),
    Column("started", _cell("started")),
    Column("name", _cell("name")),
    Column("details", _cell("details")),
    Column("workdir", _cell("workdir"), wide=True),
)


@runs_app.callback()
def list_runs(
    ctx: typer.Context,
    *,
    superlink: SuperlinkOption = None,
    ca: CaOption = None,
    workdir: Annotated[
        list[Path] | None,
        typer.Option(
            "--workdir",
            help="A run folder of `fedge train` (repeatable): fills round and clients.",
        ),
    ] = None,
    output: OutputOption = OutputFormat.TABLE,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Show the list again every --interval s.")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.5, help="Seconds between --watch refreshes.")
    ] = 5.0,
) -> None:
    """List the SuperLink's runs: state, round reached, clients, when each started.

    ``--watch`` repeats the list until Ctrl-C (exit 0); with ``-o json`` one document per line.
    """
    if ctx.invoked_subcommand is not None:
        return
    from server.federation.deployment_engine import list_runs as flwr_ls

    bodies = _progress(workdir or [])  # a wrong --workdir is refused before anything else
    try:
        with _flwr_home(superlink, ca) as home:
            while True:
                runs = flwr_ls(flwr_home=home)
                items = [_item(run, bodies.get(run.run_id)) for run in runs]
                doc = document("RunList", items, superlink=superlink)
                if watch and output is OutputFormat.JSON:  # a stream a script reads line by line
                    out.file.write(json.dumps(doc) + "\n")
                    out.file.flush()
                else:
                    when = f" at {time.strftime('%H:%M:%S')}" if watch else ""
                    title = f"runs on {superlink}{when}"
                    notes = [f"{len(items)} run(s)"]
                    emit(doc, output, columns=RUN_COLUMNS, title=title, notes=notes)
                if not watch:
                    return
                time.sleep(interval)
                bodies = _progress(workdir or [])
    except KeyboardInterrupt:
        if not watch:
            raise
        # Ctrl-C is how a watch ends: exit 0


@runs_app.command("stop")
def stop(
    run_id: Annotated[int, typer.Argument(help="The Flower run id (see `fedge runs`).")],
    *,
    superlink: SuperlinkOption = None,
    ca: CaOption = None,
) -> None:
    """Ask the SuperLink to stop a run (its ServerApp and every ClientApp of it)."""
    from server.federation.deployment_engine import stop_run

    with _flwr_home(superlink, ca) as home:
        stop_run(run_id, flwr_home=home)
    out.print(f"stopped run {run_id} on the SuperLink")


@runs_app.command("logs")
def logs(
    run_id: Annotated[int, typer.Argument(help="The Flower run id (see `fedge runs`).")],
    *,
    superlink: SuperlinkOption = None,
    ca: CaOption = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")
    ] = False,
) -> None:
    """Print the ServerApp's log of a run (with --follow, stream it until the run ends)."""
    from server.federation.deployment_engine import follow_logs, run_logs

    with _flwr_home(superlink, ca) as home:
        if follow:
            follow_logs(run_id, flwr_home=home, write=lambda line: out.print(line, markup=False))
        else:
            out.print(run_logs(run_id, flwr_home=home).rstrip("\n"), markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")
