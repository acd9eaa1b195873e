"""fedge's Flower ServerApp: the coordinator's side of a run, in either engine.

In the Deployment Engine the SuperLink starts it with the run config that ``fedge train`` sent
(``policy`` as YAML text, ``workdir``, ``run-id``); in the simulation engine ``fedge train
--simulate`` builds it in process around the same settings.

The Deployment Engine's ServerApp runs in a process the SuperLink starts, so nobody sees its
callbacks: it leaves its progress (waiting for holders, the round going out, the last round
written) in ``<workdir>/flower-runs/<run>.json`` for ``fedge train`` and ``fedge runs`` to read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedge import messages as m
from fedge.errors import UsageError
from policies import FederationPolicy, check_text, the_one
from server.federation.deployment_engine import write_progress
from server.federation.rounds import (
    RoundReport,
    RoundStarted,
    RunEvent,
    RunSettings,
    Waiting,
    run_federation,
)

__all__ = ["app", "make_server_app", "settings_from_run_config"]


def settings_from_text(policy_text: str, *, workdir: Path, run_id: str, name: str) -> RunSettings:
    policy = the_one(check_text(policy_text, name=name), FederationPolicy, source=name)
    return RunSettings(policy=policy, policy_text=policy_text, workdir=workdir, run_id=run_id)


def settings_from_run_config(context: Context) -> RunSettings:
    config = context.run_config
    try:
        text, workdir = str(config[m.POLICY]), Path(str(config[m.RUN_WORKDIR]))
    except KeyError as exc:
        raise UsageError(f"run config: {exc.args[0]} is required") from exc
    settings = settings_from_text(
        text,
        workdir=workdir,
        run_id=str(config.get(m.RUN_ID, "fedge")),
        name="run config policy",
    )
    if m.RUN_HE_PUBLIC_CONTEXT in config:
        public = Path(str(config[m.RUN_HE_PUBLIC_CONTEXT]))
        settings = replace(settings, he_public_context=public)
    return settings


class _ProgressFile:
    """Keeps ``<workdir>/flower-runs/<flower run>.json`` up to date as the run goes."""

    def __init__(self, settings: RunSettings, flower_run: int) -> None:
        self.workdir, self.flower_run = settings.workdir, flower_run
        self.body: dict[str, Any] = {
            "run-id": settings.run_id,
            "state": "starting",
            "rounds": settings.policy.spec.rounds,
            "round": 0,  # the last round whose line is in metrics.jsonl
            "training": 0,  # the round whose train messages went out last
            "sampled": {},  # round -> holders sampled for it
            "clients": 0,  # holders whose update the last written round used
            "needed": 0,
            "connected": 0,
        }

    def update(self, **changes: Any) -> None:
        self.body.update(changes)
        write_progress(self.workdir, self.flower_run, self.body)

    def event(self, event: RunEvent) -> None:
        if isinstance(event, Waiting):
            self.update(state="waiting", needed=event.needed, connected=event.connected)
        elif isinstance(event, RoundStarted):
            sampled = {**self.body["sampled"], str(event.round): event.sampled}
            self.update(state="training", training=event.round, sampled=sampled)

    def round(self, report: RoundReport) -> None:
        self.update(round=report.round, clients=len(report.clients))


def make_server_app(
    resolve: Callable[[Context], RunSettings] = settings_from_run_config,
    *,
    progress: Callable[[RoundReport], None] | None = None,
    record_progress: bool = False,
) -> ServerApp:
    """fedge's ServerApp; ``record_progress``: keep the progress file of the Flower run."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        settings = resolve(context)
        if not record_progress:
            run_federation(grid, settings, progress=progress)
            return
        recorder = _ProgressFile(settings, context.run_id)
        recorder.update()

        def on_round(report: RoundReport) -> None:
            recorder.round(report)
            if progress is not None:
                progress(report)

        try:
            run_federation(grid, replace(settings, observer=recorder.event), progress=on_round)
        except BaseException:
            with contextlib.suppress(OSError):  # the run's own error is the one to report
                recorder.update(state="failed")
            raise
        recorder.update(state="finished")

    return server_app


app = make_server_app(record_progress=True)
