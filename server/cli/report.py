"""``fedge report``: write a run's self-contained report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedge.cli import out

__all__ = ["register"]


def report(workdir: Annotated[Path, typer.Argument(help="The run's work folder.")]) -> None:
    """Write WORKDIR/report.html from metrics.jsonl and summary.json (self-contained)."""
    from server.report.page import REPORT_NAME, write_report
    from server.report.summary import load_run_summary

    out.print(str(write_report(load_run_summary(workdir), workdir / REPORT_NAME)))


def register(app: typer.Typer) -> None:
    app.command("report")(report)
