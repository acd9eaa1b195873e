"""``fedge train``: run a federation (in process, or on a SuperLink) and print its rounds.

Long runs are never silent: while too few holders are connected it says how many it waits for,
when a round goes out it says to how many, and each round's line (replies, declines, accuracy,
the largest epsilon, seconds) is printed as the ServerApp writes it, in either engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fedge.cli import out, print_table
from fedge.errors import UsageError

if TYPE_CHECKING:
    from server.federation.metrics import RoundReport
    from server.federation.rounds import RunEvent

__all__ = ["register"]


def _round_table() -> Table:
    table = Table(title="rounds")
    for column in (
        "round",
        "status",
        "clients",
        "declined",
        "eval acc",
        "eval loss",
        "max eps",
        "MB out/in",
        "s",
    ):
        table.add_column(column, justify="left" if column in ("status", "declined") else "right")
    return table


def _add_round(table: Table, report: RoundReport) -> None:
    eps = max(report.epsilon.values(), default=0.0)
    acc = "-" if report.eval_accuracy is None else f"{report.eval_accuracy:.3f}"
    loss = "-" if report.eval_loss is None else f"{report.eval_loss:.3f}"
    table.add_row(
        str(report.round),
        report.status,
        str(len(report.clients)),
        str(len(report.declined)),
        acc,
        loss,
        f"{eps:.2f}",
        f"{report.bytes_sent / 1e6:.2f}/{report.bytes_received / 1e6:.2f}",
        f"{report.seconds:.1f}",
    )


def _say(line: str) -> None:
    out.print(line, markup=False)


class _Progress:
    """The operator's lines while a run goes: waiting, a round sent, a round's outcome."""

    def __init__(self, table: Table, *, per_round: int) -> None:
        self.table, self.per_round = table, per_round
        self.sampled: dict[int, int] = {}
        self.rounds = 0

    def event(self, event: RunEvent) -> None:
        from server.federation.rounds import Waiting

        if isinstance(event, Waiting):
            nodes = "node" if event.needed == 1 else "nodes"
            out.print(f"waiting for {event.needed} {nodes} ({event.connected} connected)")
            return
        self.sampled[event.round], self.rounds = event.sampled, event.rounds
        out.print(f"round {event.round}/{event.rounds}: sent to {event.sampled} client(s)")

    def round(self, report: RoundReport) -> None:
        _add_round(self.table, report)
        expected = self.sampled.get(report.round, self.per_round)
        replied = len(report.clients) + len(report.declined)
        acc = "-" if report.eval_accuracy is None else f"{report.eval_accuracy:.3f}"
        eps = max(report.epsilon.values(), default=0.0)
        of = f"/{self.rounds}" if self.rounds else ""
        failed = f", {len(report.failed)} failed" if report.failed else ""
        user = "" if report.user_epsilon is None else f", user-level {report.user_epsilon:.2f}"
        out.print(
            f"round {report.round}{of}: {report.status}, {replied}/{expected} clients replied, "
            f"{len(report.declined)} declined{failed}, accuracy {acc}, max epsilon {eps:.2f}"
            f"{user}, {report.seconds:.1f} s"
        )


def train(
    policy: Annotated[Path, typer.Option("--policy", "-p", help="The FederationPolicy YAML.")],
    *,
    simulate: Annotated[
        int | None,
        typer.Option("--simulate", min=1, help="Run N simulated clients in this process."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="With --simulate: folder of client-NN.tsv/.csv/.jsonl files."),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir", help="Run folder (metrics, checkpoints); default fedge-runs/RUN."
        ),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run-id", help="Stable run name; the same name resumes. Default: policy name."
        ),
    ] = None,
    cpus_per_client: Annotated[
        float | None,
        typer.Option(
            "--cpus-per-client",
            min=0.1,
            help="With --simulate: CPU share per client (default: all clients run at once).",
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="With --simulate: join the Ray cluster whose head is at HOST:PORT (as `ray "
            "start --head` prints it) instead of starting Ray here; the clients spread over its "
            "nodes.",
        ),
    ] = None,
    superlink: Annotated[
        str | None,
        typer.Option("--superlink", help="Deployment Engine: the SuperLink's HOST:PORT (TLS)."),
    ] = None,
    ca: Annotated[
        Path | None, typer.Option("--ca", help="With --superlink: the CA certificate (PEM).")
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=1,
            help="With --superlink: seconds to wait for the run; then it is stopped.",
        ),
    ] = 3600.0,
    keep_running: Annotated[
        bool,
        typer.Option(
            "--keep-running",
            help="With --superlink: on Ctrl-C or --timeout leave the run going on the SuperLink "
            "(and print how to stop it) instead of stopping it.",
        ),
    ] = False,
    rounds: Annotated[
        int | None,
        typer.Option("--rounds", min=1, help="Train this many rounds instead of the policy's."),
    ] = None,
    he_public_context: Annotated[
        Path | None,
        typer.Option(
            "--he-public-context",
            help="protection he, with --superlink: the public CKKS context (no secret key).",
        ),
    ] = None,
) -> None:
    """Run a federation; a run stopped part-way resumes at the next round when started again."""
    from server.federation.train import (
        check_ray_address,
        load_plan,
        train_deployed,
        train_simulated,
    )

    if (simulate is None) == (superlink is None):
        raise UsageError("give exactly one of --simulate N (in process) or --superlink HOST:PORT")
    if ray_address is not None and superlink is not None:
        raise UsageError(
            "--ray-address is for --simulate; with --superlink the holders run their own SuperNodes"
        )
    if ray_address is not None:  # before the policy is read: Ray would retry a dead one for minutes
        check_ray_address(ray_address)
    plan = load_plan(policy, workdir=workdir, run_id=run_id, rounds=rounds)
    table = _round_table()
    shown = _Progress(table, per_round=plan.settings.policy.spec.clients.per_round)
    if superlink is not None:
        if ca is None:
            raise UsageError("--superlink needs --ca, the federation's CA certificate (TLS)")
        out.print(f"run {plan.settings.run_id}: SuperLink {superlink}, workdir {plan.workdir}")
        flower_run = train_deployed(
            plan,
            superlink=superlink,
            root_certificates=ca,
            timeout=timeout,
            he_public_context=he_public_context,
            keep_running=keep_running,
            say=_say,
            progress=shown.round,
            observer=shown.event,
        )
        from server.federation.metrics import MetricsLog
        from server.federation.rounds import RoundReport as Report

        table = _round_table()  # the whole run, resumed rounds included
        for record in MetricsLog(plan.workdir / "metrics.jsonl").read():
            _add_round(table, Report(**record))
        print_table(table)
        out.print(f"Flower run {flower_run} completed; metrics {plan.workdir / 'metrics.jsonl'}")
        return
    if data is None:
        raise UsageError("--simulate needs --data, a folder of client-NN files")
    assert simulate is not None  # noqa: S101 - checked above
    where = f", Ray cluster {ray_address}" if ray_address is not None else ""
    out.print(
        f"run {plan.settings.run_id}: {simulate} simulated clients{where}, workdir {plan.workdir}",
        markup=False,
    )
    train_simulated(
        plan,
        num_clients=simulate,
        data_dir=data,
        progress=shown.round,
        observer=shown.event,
        cpus_per_client=cpus_per_client,
        ray_address=ray_address,
    )
    print_table(table)
    out.print(
        f"metrics {plan.workdir / 'metrics.jsonl'}, checkpoints {plan.workdir / 'checkpoints'}"
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train)
