"""fedge's Flower ServerApp: the coordinator's side of a run, in either engine.

In the Deployment Engine the SuperLink starts it with the run config that ``fedge train`` sent
(``policy`` as YAML text, ``workdir``, ``run-id``); in the simulation engine ``fedge train
--simulate`` builds it in process around the same settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedge import messages as m
from fedge.errors import UsageError
from policies import FederationPolicy, check_text, the_one
from server.federation.rounds import RoundReport, RunSettings, run_federation

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


def make_server_app(
    resolve: Callable[[Context], RunSettings] = settings_from_run_config,
    *,
    progress: Callable[[RoundReport], None] | None = None,
) -> ServerApp:
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, resolve(context), progress=progress)

    return server_app


app = make_server_app()
