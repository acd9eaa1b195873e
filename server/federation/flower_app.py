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

from fedge.errors import UsageError
from policies import FederationPolicy, check_text
from server.federation.rounds import RoundReport, RunSettings, run_federation

__all__ = ["app", "make_server_app", "settings_from_run_config"]


def settings_from_text(policy_text: str, *, workdir: Path, run_id: str, name: str) -> RunSettings:
    report = check_text(policy_text, name=name)
    report.raise_for_problems()
    policies = [d.document for d in report.documents if isinstance(d.document, FederationPolicy)]
    if len(policies) != 1:
        raise UsageError(f"{name}: expected exactly one FederationPolicy, found {len(policies)}")
    return RunSettings(policy=policies[0], policy_text=policy_text, workdir=workdir, run_id=run_id)


def settings_from_run_config(context: Context) -> RunSettings:
    config = context.run_config
    try:
        text, workdir = str(config["policy"]), Path(str(config["workdir"]))
    except KeyError as exc:
        raise UsageError(f"run config: {exc.args[0]} is required") from exc
    settings = settings_from_text(
        text,
        workdir=workdir,
        run_id=str(config.get("run-id", "fedge")),
        name="run config policy",
    )
    if "he-public-context" in config:
        settings = replace(settings, he_public_context=Path(str(config["he-public-context"])))
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
