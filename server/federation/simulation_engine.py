"""The simulation engine, in process: ``fedge train --simulate N``.

Flower's simulation runtime (Ray backend) hosts N virtual SuperNodes; the ServerApp runs in a
thread of this process. The public ``run_simulation`` cannot load a ClientApp by name or give it
a run config, so this uses the runtime's ``_run_simulation`` (flwr is pinned to 1.41.0), with the
same app folder the Deployment Engine uses.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.telemetry import EventType

from fedge.flower_env import QUIET_ENV
from server.federation.app_dir import CLIENT_APP
from server.federation.flower_app import make_server_app
from server.federation.rounds import RoundReport, RunSettings

__all__ = ["simulate"]


def simulate(
    settings: RunSettings,
    *,
    num_clients: int,
    app_dir: Path,
    cpus_per_client: float = 1.0,
    gpus_per_client: float = 0.0,
    progress: Callable[[RoundReport], None] | None = None,
    client_app: str = CLIENT_APP,
) -> None:
    """Run the federation with ``num_clients`` virtual clients.

    ``client_app`` names the ClientApp the virtual holders load ("module:attribute"): fedge's
    own unless a test or benchmark wraps it (tests/support/poisoning.py, say); no policy or
    command-line flag reaches it.

    An exception in the ServerApp (a FederationError, say) is re-raised here by the runtime.
    """
    quiet = {**QUIET_ENV, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}  # CPU clients: GPUs hidden
    for key, value in quiet.items():
        os.environ.setdefault(key, value)
    server_app = make_server_app(lambda _context: settings, progress=progress)
    _run_simulation(
        num_supernodes=num_clients,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        server_app=server_app,
        client_app_attr=client_app,
        app_dir=str(app_dir),
        is_app=True,  # makes the runtime read the run config from app_dir for the ClientApps
        backend_name="ray",
        backend_config={
            "client_resources": {"num_cpus": cpus_per_client, "num_gpus": gpus_per_client},
            "init_args": {"include_dashboard": False},
        },
    )
