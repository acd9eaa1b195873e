"""``fedge train``: run (or resume) a federation in the simulation or the Deployment Engine."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from fedge import messages as m
from fedge.errors import UsageError
from fedge.he_wire import PUBLIC_CONTEXT_FILE, SECRET_CONTEXT_FILE
from policies import FederationPolicy
from server.federation.app_dir import write_app_dir
from server.federation.rounds import RoundReport, RunSettings

__all__ = ["TrainPlan", "load_plan", "simulated_he_keys", "train_deployed", "train_simulated"]

_DATA_SUFFIXES = (".tsv", ".csv", ".jsonl")


@dataclass(frozen=True)
class TrainPlan:
    settings: RunSettings
    policy_path: Path

    @property
    def workdir(self) -> Path:
        return self.settings.workdir


def load_plan(policy_path: Path, *, workdir: Path | None, run_id: str | None) -> TrainPlan:
    from server.federation.flower_app import settings_from_text

    try:
        text = policy_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--policy {policy_path}: cannot read ({exc.strerror})") from exc
    from policies import check_files, the_one

    # located problems, with the file's own name
    policy = the_one(check_files([policy_path]), FederationPolicy, source=f"--policy {policy_path}")
    name = run_id or policy.metadata.name
    folder = (workdir or Path("fedge-runs") / name).resolve()
    settings = settings_from_text(text, workdir=folder, run_id=name, name=str(policy_path))
    return TrainPlan(settings=settings, policy_path=policy_path)


def _client_files(data_dir: Path, count: int) -> list[Path]:
    if not data_dir.is_dir():
        raise UsageError(f"--data {data_dir}: not a folder of client files")
    width = len(str(max(count - 1, 0)))
    found = []
    for index in range(count):
        stem = f"client-{index:0{width}d}"
        match = [data_dir / f"{stem}{suffix}" for suffix in _DATA_SUFFIXES]
        present = [path for path in match if path.is_file()]
        if not present:
            raise UsageError(
                f"--data {data_dir}: no {stem}.tsv/.csv/.jsonl for client {index} of {count} "
                "(make them with `fedge-client data synth` or `fedge-client data split`)"
            )
        found.append(present[0])
    return found


def train_simulated(
    plan: TrainPlan,
    *,
    num_clients: int,
    data_dir: Path,
    progress: Callable[[RoundReport], None] | None = None,
    cpus_per_client: float | None = None,
    verbose: bool = False,
) -> None:
    """Simulate ``num_clients`` data holders, each with its own file and state folder.

    By default the CPUs are shared so that every client runs at once: a client queued behind the
    others would reply after the round closed and have spent privacy on an update nobody used.
    """
    from server.federation.simulation_engine import simulate

    if num_clients < plan.settings.policy.spec.clients.minimum:
        raise UsageError(
            f"--simulate {num_clients}: fewer clients than the policy's minimum "
            f"({plan.settings.policy.spec.clients.minimum})"
        )
    _client_files(data_dir, num_clients)
    workdir = plan.workdir
    config = {
        m.POLICY: plan.settings.policy_text,
        m.RUN_WORKDIR: str(workdir),
        m.RUN_ID: plan.settings.run_id,
        m.RUN_DATA_DIR: str(data_dir.resolve()),
        m.RUN_STATE_DIR: str(workdir / "clients"),
    }
    settings = plan.settings
    if settings.policy.spec.protection == "he":
        secret, public = simulated_he_keys(workdir / "he")
        config |= {m.RUN_HE_SECRET_CONTEXT: str(secret), m.RUN_HE_PUBLIC_CONTEXT: str(public)}
        settings = replace(settings, he_public_context=public)
    app_dir = write_app_dir(workdir / "app", config)
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    simulate(
        settings,
        num_clients=num_clients,
        app_dir=app_dir,
        cpus_per_client=cpus_per_client or max(0.1, min(1.0, (os.cpu_count() or 1) / num_clients)),
        progress=progress,
    )


def simulated_he_keys(folder: Path) -> tuple[Path, Path]:
    """The simulated holders' CKKS keys, made by their own tool as a key custodian would.

    The coordinator's code never makes or reads a secret key: ``fedge-client he keygen`` runs
    as a separate process (the data holders' entry point), and only the public context's path
    reaches the ServerApp.
    """
    import subprocess
    import sys

    secret, public = folder / SECRET_CONTEXT_FILE, folder / PUBLIC_CONTEXT_FILE
    if not (secret.is_file() and public.is_file()):
        tool = Path(sys.executable).with_name("fedge-client")
        done = subprocess.run(
            [str(tool), "he", "keygen", "--out", str(folder), "--force"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise UsageError(f"fedge-client he keygen failed: {done.stderr.strip()[-500:]}")
    return secret, public


def train_deployed(
    plan: TrainPlan,
    *,
    superlink: str,
    root_certificates: Path,
    timeout: float,
    he_public_context: Path | None = None,
) -> int:
    """Submit the run to a SuperLink over TLS and follow it to the end; returns Flower's run id.

    The ServerApp runs in a process the SuperLink starts, so everything it needs travels in the
    run config: the policy text and an absolute work directory.
    """
    from server.federation.deployment_engine import submit_run, wait_for_run, write_flwr_home

    if not root_certificates.is_file():
        raise UsageError(f"--ca {root_certificates}: CA certificate not found")
    workdir = plan.workdir
    flwr_home = workdir / "flwr"
    write_flwr_home(flwr_home, address=superlink, root_certificates=root_certificates.resolve())
    config: dict[str, str | int | float] = {
        m.POLICY: plan.settings.policy_text,
        m.RUN_WORKDIR: str(workdir),
        m.RUN_ID: plan.settings.run_id,
    }
    if plan.settings.policy.spec.protection == "he":
        public = (he_public_context or workdir / PUBLIC_CONTEXT_FILE).resolve()
        if not public.is_file():
            raise UsageError(
                f"--he-public-context {public}: the policy asks for protection he; give the "
                "public context from the key custodian's `fedge-client he keygen`"
            )
        config[m.RUN_HE_PUBLIC_CONTEXT] = str(public)
    app_dir = write_app_dir(workdir / "app", config)
    run_id = submit_run(app_dir, flwr_home=flwr_home)
    wait_for_run(run_id, flwr_home=flwr_home, timeout=timeout)
    return run_id
