"""``fedge train``: run (or resume) a federation in the simulation or the Deployment Engine.

Both engines report through the same two callbacks: ``progress`` gets each round's metrics line,
``observer`` what happens in between (waiting for holders, a round going out). In the simulation
they come straight from the ServerApp; on a SuperLink the ServerApp runs elsewhere, so
:class:`_Follower` reads what it leaves in the work directory between two status polls.
A SuperLink run this command started is never left behind silently: an interrupt or the
timeout stops it, or (``keep_running``) says exactly how to stop it later.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedge import messages as m
from fedge.bounded import InputError, read_capped
from fedge.errors import FederationError, UsageError
from fedge.he_wire import PUBLIC_CONTEXT_FILE, SECRET_CONTEXT_FILE
from policies import FederationPolicy
from server.federation.app_dir import CLIENT_APP, write_app_dir
from server.federation.rounds import RoundReport, RoundStarted, RunEvent, RunSettings, Waiting

if TYPE_CHECKING:
    from server.federation.deployment_engine import RunStatus

__all__ = [
    "TrainPlan",
    "check_ray_address",
    "load_plan",
    "simulated_he_keys",
    "train_deployed",
    "train_simulated",
]

_DATA_SUFFIXES = (".tsv", ".csv", ".jsonl")


@dataclass(frozen=True)
class TrainPlan:
    settings: RunSettings
    policy_path: Path

    @property
    def workdir(self) -> Path:
        return self.settings.workdir


def load_plan(
    policy_path: Path, *, workdir: Path | None, run_id: str | None, rounds: int | None = None
) -> TrainPlan:
    """The run as the policy describes it; ``rounds`` overrides the policy's ``spec.rounds``."""
    from policies import check_files, the_one
    from policies.source import MAX_FILE_BYTES
    from server.federation.flower_app import settings_from_text

    # Validation reads the file first, through the same bounded reader as `fedge validate`: a
    # file it refuses (a FIFO, /dev/zero, not UTF-8) never reaches the reads below.
    policy = the_one(check_files([policy_path]), FederationPolicy, source=f"--policy {policy_path}")
    try:
        text = read_capped(policy_path, limit=MAX_FILE_BYTES, what="a policy file").decode(
            "utf-8-sig"
        )
    except (InputError, UnicodeDecodeError) as exc:  # changed since it was validated
        raise UsageError(f"--policy {policy_path}: {exc}") from exc
    name = run_id or policy.metadata.name
    folder = (workdir or Path("fedge-runs") / name).resolve()
    if rounds is not None:
        text = _with_rounds(text, rounds, folder)
    settings = settings_from_text(text, workdir=folder, run_id=name, name=str(policy_path))
    return TrainPlan(settings=settings, policy_path=policy_path)


def _with_rounds(text: str, rounds: int, workdir: Path) -> str:
    """The policy text with ``spec.rounds`` set to ``rounds``.

    The text itself changes (not just the coordinator's copy) because it travels to every holder,
    which prices its privacy over the rounds the policy it receives announces.
    """
    import yaml

    from server.federation.checkpoint import CheckpointStore

    if rounds < 1:
        raise UsageError(f"--rounds {rounds}: must be at least 1")
    latest = CheckpointStore(workdir / "checkpoints").latest()
    if latest is not None and latest.round > rounds:
        raise UsageError(
            f"--rounds {rounds}: the run in {workdir} already reached round {latest.round}; "
            f"give --rounds {latest.round} or more, or start a new run (--run-id or --workdir)"
        )
    documents = list(yaml.safe_load_all(text))
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == "FederationPolicy":
            spec = document.get("spec")
            if isinstance(spec, dict):
                spec["rounds"] = rounds
    return str(yaml.safe_dump_all(documents, sort_keys=False))


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


def check_ray_address(address: str, *, timeout: float = 5.0) -> str:
    """``--ray-address``: a Ray head's ``HOST:PORT`` that accepts connections; returned as given.

    Checked here, before Ray sees it, because Ray itself retries an address where nothing
    listens for minutes, and reads an address it cannot parse as a local file or a Ray Client
    URL. Ray Client addresses (``ray://``) are refused: Flower's actor pool needs a driver in
    the cluster, which the head's GCS address gives.
    """
    from fedge.process import listening

    flag = f"--ray-address {address}"
    if "://" in address:
        raise UsageError(
            f"{flag}: give the head's GCS address HOST:PORT (as `ray start --head` prints it), "
            "not a URL (Ray Client's ray:// is not supported)"
        )
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [IPv6]:PORT
    if (
        not sep
        or not host
        or any(c.isspace() or c in "/[]@" for c in host)
        or not port.isdigit()
        or not 0 < int(port) < 65536
    ):
        raise UsageError(
            f"{flag}: expected HOST:PORT of a Ray head (as `ray start --head` prints it)"
        )
    if not listening(host, int(port), timeout=timeout):
        raise FederationError(
            f"{flag}: nothing accepts connections there; start the cluster's head with "
            f"`ray start --head --port {port}` (and open the port to this machine)"
        )
    return address


def train_simulated(
    plan: TrainPlan,
    *,
    num_clients: int,
    data_dir: Path,
    progress: Callable[[RoundReport], None] | None = None,
    observer: Callable[[RunEvent], None] | None = None,
    cpus_per_client: float | None = None,
    verbose: bool = False,
    client_app: str = CLIENT_APP,
    ray_address: str | None = None,
) -> None:
    """Simulate ``num_clients`` data holders, each with its own file and state folder.

    By default the CPUs are shared so that every client runs at once: a client queued behind the
    others would reply after the round closed and have spent privacy on an update nobody used.
    ``client_app`` ("module:attribute") replaces fedge's ClientApp for tests and benchmarks
    (a holder that sends poisoned updates); ``fedge train`` never sets it.

    ``ray_address`` joins a running Ray cluster instead of starting Ray here; the default CPU
    share then comes from the cluster's CPUs. Every node of that cluster runs ClientApps, so
    it needs fedge installed, and the data folder and the work directory at the same paths
    (a shared file system): each holder reads its file and keeps its privacy ledger there.
    """
    from server.federation.simulation_engine import cluster_cpus, simulate

    if num_clients < plan.settings.policy.spec.clients.minimum:
        raise UsageError(
            f"--simulate {num_clients}: fewer clients than the policy's minimum "
            f"({plan.settings.policy.spec.clients.minimum})"
        )
    _client_files(data_dir, num_clients)
    cpus = float(os.cpu_count() or 1)
    if ray_address is not None:
        ray_address = check_ray_address(ray_address)
        if cpus_per_client is None:
            cpus = cluster_cpus(ray_address)
    workdir = plan.workdir
    config = {
        m.POLICY: plan.settings.policy_text,
        m.RUN_WORKDIR: str(workdir),
        m.RUN_ID: plan.settings.run_id,
        m.RUN_DATA_DIR: str(data_dir.resolve()),
        m.RUN_STATE_DIR: str(workdir / "clients"),
    }
    settings = replace(plan.settings, observer=observer)
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
        cpus_per_client=cpus_per_client or max(0.1, min(1.0, cpus / num_clients)),
        progress=progress,
        client_app=client_app,
        ray_address=ray_address,
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


class _Follower:
    """Between two status polls: the run's state changes, its progress file, its new lines."""

    def __init__(
        self,
        workdir: Path,
        run_id: int,
        *,
        say: Callable[[str], None],
        progress: Callable[[RoundReport], None] | None,
        observer: Callable[[RunEvent], None] | None,
    ) -> None:
        from server.federation.metrics import MetricsLog

        self.workdir, self.run_id = workdir, run_id
        self.say, self.progress, self.observer = say, progress, observer
        self.metrics = MetricsLog(workdir / "metrics.jsonl")
        self.last_round = max((int(r.get("round", 0)) for r in self.metrics.read()), default=0)
        self.status = ""
        self.seen: tuple[Any, ...] = ()

    def poll(self, status: RunStatus) -> None:
        from server.federation.deployment_engine import read_progress

        if status.status != self.status:
            self.status = status.status
            if not status.finished:
                self.say(f"Flower run {self.run_id}: {status.status}")
        body = read_progress(self.workdir, flower_run=self.run_id).get(self.run_id, {})
        if self.observer is not None and body:
            state = body.get("state")
            if state == "waiting":
                now: tuple[Any, ...] = (state, body.get("needed"), body.get("connected"))
                event: RunEvent = Waiting(int(now[1] or 0), int(now[2] or 0))
            else:
                now = ("training", body.get("training"))
                sampled = body.get("sampled", {}).get(str(body.get("training")), 0)
                event = RoundStarted(int(now[1] or 0), int(body.get("rounds", 0)), int(sampled))
            if now != self.seen and (state == "waiting" or int(now[1] or 0) > 0):
                self.seen = now
                self.observer(event)
        for record in self.metrics.read():
            if int(record.get("round", 0)) > self.last_round:
                self.last_round = int(record["round"])
                if self.progress is not None:
                    self.progress(RoundReport(**record))


def train_deployed(
    plan: TrainPlan,
    *,
    superlink: str,
    root_certificates: Path,
    timeout: float,
    he_public_context: Path | None = None,
    keep_running: bool = False,
    say: Callable[[str], None] = lambda _line: None,
    progress: Callable[[RoundReport], None] | None = None,
    observer: Callable[[RunEvent], None] | None = None,
) -> int:
    """Submit the run to a SuperLink over TLS and follow it to the end; returns Flower's run id.

    The ServerApp runs in a process the SuperLink starts, so everything it needs travels in the
    run config: the policy text and an absolute work directory. On an interrupt or the timeout
    the run is stopped on the SuperLink (``keep_running``: left running, with the command that
    stops it), and ``say`` is told which.
    """
    from server.federation.deployment_engine import (
        RunTimeoutError,
        check_superlink,
        submit_run,
        wait_for_run,
        write_flwr_home,
    )

    if not root_certificates.is_file():
        raise UsageError(f"--ca {root_certificates}: CA certificate not found")
    check_superlink(superlink, root_certificates)
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
    say(f"submitted as Flower run {run_id}")
    follower = _Follower(workdir, run_id, say=say, progress=progress, observer=observer)

    def leave() -> str:
        return _leave_run(
            run_id, flwr_home, keep_running=keep_running, superlink=superlink, ca=root_certificates
        )

    try:
        wait_for_run(run_id, flwr_home=flwr_home, timeout=timeout, on_poll=follower.poll)
    except KeyboardInterrupt:
        say(leave())
        raise
    except RunTimeoutError as exc:
        raise FederationError(f"{exc} (--timeout {timeout:g}); {leave()}") from exc
    return run_id  # the last poll, with the run finished, read its last lines


def _leave_run(
    run_id: int, flwr_home: Path, *, keep_running: bool, superlink: str, ca: Path
) -> str:
    """Stop the run on the SuperLink (or leave it); the line that tells the operator which."""
    from server.federation.deployment_engine import stop_run

    stop = f"fedge runs stop {run_id} --superlink {superlink} --ca {ca}"
    if keep_running:
        return f"run {run_id} keeps running on the SuperLink; stop it with: {stop}"
    try:
        stop_run(run_id, flwr_home=flwr_home)
    except FederationError as exc:
        return f"could not stop run {run_id} on the SuperLink ({exc}); try: {stop}"
    return f"stopped run {run_id} on the SuperLink"
