"""``fedge demo``: the whole pipeline on one machine, every persona through its own entry point.

The operator's process (this one) runs what the operator runs: the enrollment endpoint, the
federation (Flower's simulation engine), placement and the rollout. The data holders' steps
(making data, enrolling, the HE key custodian) run as ``fedge-client`` processes, the edge
devices as ``fedge-agent`` processes, the broker as a mosquitto with TLS, passwords and per-device
ACLs (server/demo/mosquitto.py), and the export as ``fedge export``, so the demo crosses the same
process boundaries a real deployment does (DESIGN.md section 2). Everything it starts is registered
on an exit stack and stopped when it ends, on an error, or on Ctrl-C.

This module only orders the stages; each lives beside it: holders.py (data, enrollment),
training.py, export.py, quality.py, placement.py, fleet.py (broker, agents, rollout, inference),
with the shared state and stage timer in context.py, the child processes in processes.py and the
terminal printout in terminal.py; ``--console`` keeps it all up behind the operator's console
(console.py). Each stage is timed and written to ``summary.json``;
``report.html`` is rendered from it and from ``metrics.jsonl`` at the end (server/report/).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from rich.console import Console

from fedge.errors import UsageError
from server.demo.console import serve_console
from server.demo.context import DemoContext, DemoOptions
from server.demo.export import export
from server.demo.fleet import run_fleet
from server.demo.holders import enroll, make_data
from server.demo.placement import place
from server.demo.quality import quality
from server.demo.terminal import print_summary
from server.demo.training import train, write_policy

__all__ = ["run_demo"]


def run_demo(options: DemoOptions, console: Console) -> Path:
    """Run every stage; returns the report's path. Stops everything it started, always.

    With ``options.console_port`` the report's path is printed here and the console serves the
    finished demo (its broker and agents still up) until Ctrl-C or SIGTERM.
    """
    if options.protection not in ("none", "secagg", "he"):
        raise UsageError(f"--protection {options.protection!r}: expected none, secagg or he")
    if options.clients < 2:
        raise UsageError("--clients: a federation needs at least 2 data holders")
    options.workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        demo = DemoContext(options, console, stack)
        data = make_data(demo)
        policy = write_policy(demo)
        enroll(demo)
        train(demo, data, policy)
        artifact = export(demo, data, policy)
        quality(demo, data, policy)
        urls = place(demo, artifact)
        run_fleet(demo, artifact, urls)
        demo.state.notes.append(f"the demo took {time.monotonic() - started:.0f} s")
        report = _report(demo)
        if options.console_port is not None:
            # the console needs the broker and agents: serve it before the stack stops them
            print_summary(console, demo)
            console.print(f"report: {report}", markup=False)
            serve_console(demo, console, port=options.console_port)
            return report
    print_summary(console, demo)
    return report


def _report(ctx: DemoContext) -> Path:
    from server.report.page import REPORT_NAME, write_report
    from server.report.summary import load_run_summary

    ctx.write_summary()
    summary = load_run_summary(ctx.w)
    # metrics live in run/: the report's training sections read them from the summary folder
    if not summary.rounds:
        from dataclasses import replace

        summary = replace(summary, rounds=load_run_summary(ctx.run_dir).rounds)
    return write_report(summary, ctx.w / REPORT_NAME)
