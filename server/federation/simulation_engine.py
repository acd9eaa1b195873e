"""The simulation engine, in process: ``fedge train --simulate N``.

Flower's simulation runtime (Ray backend) hosts N virtual SuperNodes; the ServerApp runs in a
thread of this process. The public ``run_simulation`` cannot load a ClientApp by name or give it
a run config, so this uses the runtime's ``_run_simulation`` (flwr is pinned to 1.41.0), with the
same app folder the Deployment Engine uses.

By default the runtime starts a Ray instance of its own on this machine and stops it at the end.
With ``ray_address`` (``fedge train --ray-address``) it joins a Ray cluster that is already
running instead, so the virtual holders spread over every machine of that cluster: the address
goes to ``ray.init`` through the backend's ``init_args``, which is the one place Flower 1.41
lets it through (``flwr run``'s federation options carry only CPUs, GPUs and logging for Ray).
At the end the runtime only disconnects; the cluster keeps running.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.telemetry import EventType

from fedge.errors import FederationError
from fedge.flower_env import QUIET_ENV
from server.federation.app_dir import CLIENT_APP
from server.federation.flower_app import make_server_app
from server.federation.rounds import RoundReport, RunSettings

__all__ = ["cluster_cpus", "simulate"]


def _quiet() -> None:
    quiet = {**QUIET_ENV, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}  # CPU clients: GPUs hidden
    for key, value in quiet.items():
        os.environ.setdefault(key, value)


def cluster_cpus(address: str) -> float:
    """How many CPUs the Ray cluster at ``address`` has, asked as a short-lived driver.

    ``fedge train`` shares the CPUs among the clients so that every sampled client runs at once;
    on a cluster that share must come from the cluster's CPUs, not this machine's, or Flower
    would start an actor per fraction of a CPU on every node. The driver disconnects afterwards;
    the cluster keeps running. Ray's own errors (another Ray version, a port that is not a GCS)
    become a :class:`FederationError` naming the flag.
    """
    import ray

    _quiet()
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
        resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
        cpus = float(resources.get("CPU", 0.0))
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        raise FederationError(
            f"--ray-address {address}: could not join the Ray cluster: {exc}"
        ) from exc
    finally:
        if ray.is_initialized():
            ray.shutdown()
    if cpus <= 0:
        raise FederationError(f"--ray-address {address}: the Ray cluster has no CPUs")
    return cpus


def simulate(
    settings: RunSettings,
    *,
    num_clients: int,
    app_dir: Path,
    cpus_per_client: float = 1.0,
    gpus_per_client: float = 0.0,
    progress: Callable[[RoundReport], None] | None = None,
    client_app: str = CLIENT_APP,
    ray_address: str | None = None,
) -> None:
    """Run the federation with ``num_clients`` virtual clients.

    ``client_app`` names the ClientApp the virtual holders load ("module:attribute"): fedge's
    own unless a test or benchmark wraps it (tests/support/poisoning.py, say); no policy or
    command-line flag reaches it. ``ray_address``: join the Ray cluster whose head listens
    there (``HOST:PORT``, as ``ray start --head`` prints it) instead of starting one here.

    An exception in the ServerApp (a FederationError, say) is re-raised here by the runtime.
    """
    _quiet()
    server_app = make_server_app(lambda _context: settings, progress=progress)
    init_args: dict[str, Any] = {"include_dashboard": False}
    if ray_address is not None:
        init_args["address"] = ray_address
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
            "init_args": init_args,
        },
    )
