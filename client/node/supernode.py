"""The data holder's side of the Deployment Engine: a ``flower-supernode`` process of its own.

A data holder joins a federation by running one SuperNode on its own machine. The SuperNode dials
the operator's SuperLink over TLS (it checks the SuperLink's certificate against the CA file it
was given) and starts fedge's ClientApp for every message; the ClientApp learns where the
holder's data, state and own policy live from the SuperNode's ``--node-config``, which never
leaves this machine.

:func:`supernode_command` builds the command line; :class:`SuperNodeProcess` runs it in a process
group of its own (the SuperNode starts ``flower-superexec`` and ``flwr-clientapp`` children), logs
to a file in the state directory, and stops the whole group: SIGTERM first, which Flower handles
by leaving cleanly, then SIGKILL after a grace period.

The warm variant (``fedge-client start``'s default) runs two processes instead, both through
client/node/warm.py: the SuperNode with ``--isolation process`` and its loop's idle sleep shortened,
and fedge's own SuperExec, which loads the model once and forks each ClientApp task from that
warm process. :func:`warm_commands` builds both command lines and :class:`WarmSuperNodeProcess`
runs them: the SuperExec starts once the SuperNode's Runtime API listens, each in a process group
of its own, and both groups are stopped. The SuperExec reaches that API over plain HTTP, as
Flower's own subprocess isolation does; the API listens on loopback only, never on the network.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from fedge.errors import FederationError, UsageError
from fedge.flower_env import flower_environment
from fedge.process import ManagedProcess, listening

__all__ = [
    "SuperNodeProcess",
    "WarmCommands",
    "WarmSuperNodeProcess",
    "flower_environment",
    "node_config_string",
    "supernode_command",
    "warm_commands",
]

SUPERNODE = "flower-supernode"
LOG_FILE = "supernode.log"
SUPEREXEC_LOG_FILE = "superexec.log"
WARM_MODULE = "client.node.warm"


def _config_string(value: str) -> str:
    """A TOML basic string without a literal ``"``, ``\\`` escaped, controls as ``\\uXXXX``.

    Flower splits ``--node-config`` with the pattern ``key="[^"]*"`` before TOML parses each
    value, so a value may contain no double quote at all, not even an escaped one; TOML's
    ``\\u0022`` carries it through both.
    """
    out = []
    for char in value:
        if char == "\\":
            out.append("\\\\")
        elif char == '"' or ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def node_config_string(config: Mapping[str, str | int | float]) -> str:
    """Render ``config`` for ``flower-supernode --node-config`` (space-separated ``key=value``)."""
    parts = []
    for key, value in config.items():
        if not key or any(c.isspace() or c in "=\"'" for c in key):
            raise UsageError(f"node config: {key!r} is not a usable key")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise UsageError(f"node config: {key}: expected a string or a number")
        if isinstance(value, str):
            rendered = _config_string(value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"node config: {key}: {value} is not a finite number")
        else:
            rendered = repr(value)
        parts.append(f"{key}={rendered}")
    return " ".join(parts)


def _node_config(
    *,
    data_path: str | os.PathLike[str],
    state_dir: str | os.PathLike[str],
    client_name: str,
    policy_path: str | os.PathLike[str] | None,
    eval_fraction: float | None,
) -> str:
    """The ``--node-config`` string; paths absolute, since Flower's processes run elsewhere."""
    if eval_fraction is not None and not 0.0 <= eval_fraction < 1.0:
        raise UsageError(f"eval_fraction: expected a number in [0, 1), got {eval_fraction}")
    if not client_name.strip():
        raise UsageError("client_name: a data holder needs a name")
    config: dict[str, str | int | float] = {
        "data-path": str(Path(data_path).resolve()),
        "state-dir": str(Path(state_dir).resolve()),
        "client-name": client_name,
    }
    if policy_path is not None:
        config["policy-path"] = str(Path(policy_path).resolve())
    if eval_fraction is not None:
        config["eval-fraction"] = float(eval_fraction)
    return node_config_string(config)


def _check_port(runtime_port: int) -> None:
    if not 0 < runtime_port < 65536:
        raise UsageError(f"runtime_port: {runtime_port} is not a TCP port number")


def supernode_command(
    *,
    superlink: str,
    root_certificates: str | os.PathLike[str],
    runtime_port: int,
    data_path: str | os.PathLike[str],
    state_dir: str | os.PathLike[str],
    client_name: str,
    policy_path: str | os.PathLike[str] | None = None,
    eval_fraction: float | None = None,
    host: str = "127.0.0.1",
    executable: str = SUPERNODE,
    warm: bool = False,
    auth_private_key: str | os.PathLike[str] | None = None,
) -> list[str]:
    """The ``flower-supernode`` command line for one data holder.

    ``superlink`` is the SuperLink's ``HOST:PORT``; ``runtime_port`` is this SuperNode's own
    local port for its ClientApps (one per SuperNode on a machine). Paths are made absolute,
    since the ClientApp runs with another working directory. TLS is always on: there is no
    ``--insecure`` here on purpose.

    ``warm``: the SuperNode runs through ``python -m client.node.warm supernode`` (this interpreter;
    ``executable`` is not used) with ``--isolation process``: it starts no SuperExec, the one
    from :func:`warm_commands` must run beside it.

    ``auth_private_key``: the SuperNode's EC private key (OpenSSH format, from
    ``fedge-client enroll``), for a SuperLink that runs with ``--enable-supernode-auth`` and
    admits only the public keys registered with it.
    """
    _check_port(runtime_port)
    node_config = _node_config(
        data_path=data_path,
        state_dir=state_dir,
        client_name=client_name,
        policy_path=policy_path,
        eval_fraction=eval_fraction,
    )
    prefix = [sys.executable, "-m", WARM_MODULE, "supernode"] if warm else [executable]
    return [
        *prefix,
        "--superlink",
        superlink,
        "--root-certificates",
        str(Path(root_certificates).resolve()),
        *(["--isolation", "process"] if warm else []),
        "--host",
        host,
        "--port",
        str(runtime_port),
        "--node-config",
        node_config,
        *(
            ["--auth-supernode-private-key", str(Path(auth_private_key).resolve())]
            if auth_private_key is not None
            else []
        ),
    ]


@dataclass(frozen=True)
class WarmCommands:
    """The two processes of a warm data holder (see :func:`warm_commands`)."""

    supernode: list[str]
    superexec: list[str]
    """Without ``--parent-pid``: :class:`WarmSuperNodeProcess` adds the SuperNode's pid."""
    host: str
    runtime_port: int


def warm_commands(
    *,
    superlink: str,
    root_certificates: str | os.PathLike[str],
    runtime_port: int,
    data_path: str | os.PathLike[str],
    state_dir: str | os.PathLike[str],
    client_name: str,
    policy_path: str | os.PathLike[str] | None = None,
    eval_fraction: float | None = None,
    preload: bool = True,
    auth_private_key: str | os.PathLike[str] | None = None,
) -> WarmCommands:
    """The SuperNode (``--isolation process``) and fedge's warm SuperExec beside it.

    The SuperExec connects to the SuperNode's Runtime API on ``127.0.0.1:runtime_port`` with
    ``--insecure``: plain HTTP, which is what Flower's default isolation uses too, and safe only
    because the API listens on loopback (``host`` is fixed to 127.0.0.1 here for that reason).
    With ``preload`` the SuperExec gets the SuperNode's node config and loads the model and the
    tokenized data before the first task arrives.
    """
    host = "127.0.0.1"
    supernode = supernode_command(
        superlink=superlink,
        root_certificates=root_certificates,
        runtime_port=runtime_port,
        data_path=data_path,
        state_dir=state_dir,
        client_name=client_name,
        policy_path=policy_path,
        eval_fraction=eval_fraction,
        host=host,
        warm=True,
        auth_private_key=auth_private_key,
    )
    superexec = [sys.executable, "-m", WARM_MODULE, "superexec"]
    if preload:
        superexec += ["--preload-node-config", supernode[supernode.index("--node-config") + 1]]
    superexec += ["--insecure", "--runtime-api-address", f"{host}:{runtime_port}"]
    return WarmCommands(supernode, superexec, host, runtime_port)


class SuperNodeProcess:
    """A running ``flower-supernode``: start it, stop it (and every child it started).

    Use it as a context manager; ``stop`` is idempotent and also safe when ``start`` failed.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        state_dir: str | os.PathLike[str],
        flwr_home: str | os.PathLike[str] | None = None,
        grace: float = 10.0,
        env: Mapping[str, str] | None = None,
        log_name: str = LOG_FILE,
    ) -> None:
        self.command = list(command)
        self.state_dir = Path(state_dir)
        self.flwr_home = Path(flwr_home) if flwr_home is not None else self.state_dir / "flwr"
        self.log_path = self.state_dir / log_name
        self.grace = grace
        self._base_env = env
        self._managed: ManagedProcess | None = None

    @property
    def pid(self) -> int | None:
        return self._managed.pid if self._managed is not None else None

    def running(self) -> bool:
        return self._managed is not None and self._managed.running()

    def start(self) -> SuperNodeProcess:
        """Start the SuperNode in a new session (its own process group), logging to a file."""
        if self._managed is not None:
            raise UsageError("this SuperNode was started already")
        env = flower_environment(self.flwr_home, base=self._base_env)
        executable = shutil.which(self.command[0], path=env["PATH"])
        if executable is None:
            raise FederationError(
                f"{self.command[0]}: not found on PATH (install fedge[client], which brings flwr)"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self._managed = ManagedProcess(
            [executable, *self.command[1:]],
            log_path=self.log_path,
            name=self.command[0],
            env=env,
            cwd=self.state_dir,
            grace=self.grace,
            error=FederationError,
        ).start()
        return self

    def stop(self) -> int | None:
        """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL whatever is left.

        Children (superexec, a ClientApp mid-round) may outlive the leader: they get the rest
        of a short grace period, then the group is killed. Returns the SuperNode's exit status
        (None if it was never started).
        """
        return self._managed.stop() if self._managed is not None else None

    def log_text(self) -> str:
        """What the SuperNode has logged so far (for a failure report)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> SuperNodeProcess:
        return self if self._managed is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class WarmSuperNodeProcess:
    """A warm data holder: the SuperNode and fedge's forking SuperExec (:func:`warm_commands`).

    ``start`` refuses a Runtime API port that something already listens on (the SuperExec would
    take its tasks from that process), starts the SuperNode, waits until its Runtime API
    listens, then starts the SuperExec with ``--parent-pid`` of the SuperNode, so that it also
    leaves if the SuperNode dies. Each runs in a process group of its own with its own log in
    the state directory; ``stop`` stops the SuperExec's group (with any ClientApp it forked),
    then the SuperNode's. Idempotent, and safe after a failed ``start``.
    """

    def __init__(
        self,
        commands: WarmCommands,
        *,
        state_dir: str | os.PathLike[str],
        flwr_home: str | os.PathLike[str] | None = None,
        grace: float = 10.0,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        self.commands = commands
        self.state_dir = Path(state_dir)
        self.ready_timeout = ready_timeout
        home = Path(flwr_home) if flwr_home is not None else self.state_dir / "flwr"
        self.supernode = SuperNodeProcess(
            commands.supernode, state_dir=state_dir, flwr_home=home, grace=grace, env=env
        )
        self._env = env
        self._home = home
        self.superexec: SuperNodeProcess | None = None

    @property
    def log_path(self) -> Path:
        return self.supernode.log_path

    @property
    def superexec_log_path(self) -> Path:
        return self.state_dir / SUPEREXEC_LOG_FILE

    @property
    def pid(self) -> int | None:
        return self.supernode.pid

    def running(self) -> bool:
        return self.supernode.running() and self.superexec is not None and self.superexec.running()

    def start(self) -> WarmSuperNodeProcess:
        host, port = self.commands.host, self.commands.runtime_port
        if self.supernode.pid is not None:
            raise UsageError("this SuperNode was started already")
        if listening(host, port):
            raise FederationError(
                f"port {port} on {host} is in use: pick another --port for the SuperNode"
            )
        try:
            self.supernode.start()
            deadline = time.monotonic() + self.ready_timeout
            while not listening(host, port):
                if not self.supernode.running():
                    raise FederationError(
                        f"the SuperNode stopped before its Runtime API listened; see "
                        f"{self.supernode.log_path}"
                    )
                if time.monotonic() > deadline:
                    raise FederationError(
                        f"the SuperNode's Runtime API did not listen on {host}:{port} within "
                        f"{self.ready_timeout:.0f} s; see {self.supernode.log_path}"
                    )
                time.sleep(0.1)
            self.superexec = SuperNodeProcess(
                [*self.commands.superexec, "--parent-pid", str(self.supernode.pid)],
                state_dir=self.state_dir,
                flwr_home=self._home,
                grace=self.supernode.grace,
                env=self._env,
                log_name=SUPEREXEC_LOG_FILE,
            ).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> int | None:
        """Stop the SuperExec (and its ClientApps), then the SuperNode; the SuperNode's status."""
        if self.superexec is not None:
            self.superexec.stop()
        return self.supernode.stop()

    def log_text(self) -> str:
        """Both logs so far (for a failure report)."""
        superexec = self.superexec.log_text() if self.superexec is not None else ""
        return f"{self.supernode.log_text()}\n--- {SUPEREXEC_LOG_FILE}\n{superexec}"

    def __enter__(self) -> WarmSuperNodeProcess:
        return self if self.supernode.pid is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
