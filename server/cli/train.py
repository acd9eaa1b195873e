"""``fedge train``: run a federation (in process, or on a SuperLink) and print its rounds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fedge.cli import out
from fedge.errors import UsageError

if TYPE_CHECKING:
    from server.federation.metrics import RoundReport

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
    superlink: Annotated[
        str | None,
        typer.Option("--superlink", help="Deployment Engine: the SuperLink's HOST:PORT (TLS)."),
    ] = None,
    ca: Annotated[
        Path | None, typer.Option("--ca", help="With --superlink: the CA certificate (PEM).")
    ] = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=1, help="With --superlink: seconds to wait for the run."),
    ] = 3600.0,
    he_public_context: Annotated[
        Path | None,
        typer.Option(
            "--he-public-context",
            help="protection he, with --superlink: the public CKKS context (no secret key).",
        ),
    ] = None,
) -> None:
    """Run a federation; a run stopped part-way resumes at the next round when started again."""
    from server.federation.train import load_plan, train_deployed, train_simulated

    if (simulate is None) == (superlink is None):
        raise UsageError("give exactly one of --simulate N (in process) or --superlink HOST:PORT")
    plan = load_plan(policy, workdir=workdir, run_id=run_id)
    table = _round_table()
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
        )
        from server.federation.metrics import MetricsLog
        from server.federation.rounds import RoundReport as Report

        for record in MetricsLog(plan.workdir / "metrics.jsonl").read():
            _add_round(table, Report(**record))
        out.print(table)
        out.print(f"Flower run {flower_run} completed; metrics {plan.workdir / 'metrics.jsonl'}")
        return
    if data is None:
        raise UsageError("--simulate needs --data, a folder of client-NN files")
    assert simulate is not None  # noqa: S101 - checked above
    out.print(f"run {plan.settings.run_id}: {simulate} simulated clients, workdir {plan.workdir}")

    def progress(report: RoundReport) -> None:
        _add_round(table, report)
        out.print(
            f"round {report.round}: {report.status}, {len(report.clients)} client(s), "
            f"accuracy {report.eval_accuracy if report.eval_accuracy is not None else '-'}"
        )

    train_simulated(
        plan,
        num_clients=simulate,
        data_dir=data,
        progress=progress,
        cpus_per_client=cpus_per_client,
    )
    out.print(table)
    out.print(
        f"metrics {plan.workdir / 'metrics.jsonl'}, checkpoints {plan.workdir / 'checkpoints'}"
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train)
