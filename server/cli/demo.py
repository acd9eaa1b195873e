"""``fedge demo``: the whole pipeline on embedded defaults, every persona its own process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedge.cli import out
from fedge.errors import UsageError

__all__ = ["register"]


def demo(
    *,
    workdir: Annotated[
        Path, typer.Option("--workdir", help="Where the demo writes its files.")
    ] = Path("fedge-demo"),
    clients: Annotated[int, typer.Option("--clients", min=2, help="Data holders.")] = 2,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Federated rounds.")] = 3,
    epsilon: Annotated[
        float, typer.Option("--epsilon", min=0.1, help="Each holder's privacy budget.")
    ] = 8.0,
    protection: Annotated[str, typer.Option("--protection", help="none | secagg | he")] = "none",
    data: Annotated[
        Path | None,
        typer.Option("--data", help="A labelled CSV/TSV/JSONL file instead of synthetic data."),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help="builtin:all-MiniLM-L6-v2 or a local model folder.")
    ] = "builtin:all-MiniLM-L6-v2",
    examples: Annotated[
        int, typer.Option("--examples", min=10, help="Synthetic examples per holder.")
    ] = 200,
    console: Annotated[
        bool,
        typer.Option(
            "--console",
            help="At the end, keep the broker and agents up and serve the console (Ctrl-C stops).",
        ),
    ] = False,
    console_port: Annotated[
        int,
        typer.Option(
            "--console-port", min=0, max=65535, help="The console's port on 127.0.0.1 (0: any)."
        ),
    ] = 8765,
) -> None:
    """Run the whole pipeline on embedded defaults and write report.html.

    Data for each holder, enrollment, federated DP fine-tuning (simulation engine), int8 export,
    signing, placement on three local "clouds" under a residency policy, a mosquitto broker with
    TLS and ACLs, two edge agents, a canary rollout, sample inferences, and the report.
    With --console the demo then serves the operator's console over its run, and prints its
    address and token, until Ctrl-C (exit 130) or SIGTERM (exit 0).
    """
    from server.demo.context import DemoOptions
    from server.demo.pipeline import run_demo

    if data is not None and not data.is_file():
        raise UsageError(f"--data {data}: not a file")
    options = DemoOptions(
        workdir=workdir,
        clients=clients,
        rounds=rounds,
        epsilon=epsilon,
        protection=protection,
        data=data,
        model=model,
        examples=examples,
        console_port=console_port if console else None,
    )
    report = run_demo(options, out)
    if not console:  # with --console the demo printed it before serving
        out.print(f"report: {report}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
