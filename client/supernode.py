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
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from fedge.errors import FederationError, UsageError

__all__ = ["SuperNodeProcess", "flower_environment", "node_config_string", "supernode_command"]

SUPERNODE = "flower-supernode"
LOG_FILE = "supernode.log"

_QUIET_ENV: Mapping[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
}


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
) -> list[str]:
    """The ``flower-supernode`` command line for one data holder.

    ``superlink`` is the SuperLink's ``HOST:PORT``; ``runtime_port`` is this SuperNode's own
    local port for its ClientApps (one per SuperNode on a machine). Paths are made absolute,
    since the ClientApp runs with another working directory. TLS is always on: there is no
    ``--insecure`` here on purpose.
    """
    if not 0 < runtime_port < 65536:
        raise UsageError(f"runtime_port: {runtime_port} is not a TCP port number")
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
    return [
        executable,
        "--superlink",
        superlink,
        "--root-certificates",
        str(Path(root_certificates).resolve()),
        "--host",
        host,
        "--port",
        str(runtime_port),
        "--node-config",
        node_config_string(config),
    ]


def flower_environment(
    flwr_home: str | os.PathLike[str], *, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Telemetry off, a private ``FLWR_HOME``, this interpreter's ``bin`` first on ``PATH``.

    The SuperNode starts ``flower-superexec`` and ``flwr-clientapp`` by bare name; they must
    come from the installation that has fedge's ClientApp.
    """
    env = dict(os.environ if base is None else base)
    env.update(_QUIET_ENV)
    env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    bin_dir = str(Path(sys.executable).parent)
    parts = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
    env["PATH"] = os.pathsep.join([bin_dir, *parts])
    return env


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
    ) -> None:
        self.command = list(command)
        self.state_dir = Path(state_dir)
        self.flwr_home = Path(flwr_home) if flwr_home is not None else self.state_dir / "flwr"
        self.log_path = self.state_dir / LOG_FILE
        self.grace = grace
        self._base_env = env
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> SuperNodeProcess:
        """Start the SuperNode in a new session (its own process group), logging to a file."""
        if self._process is not None:
            raise UsageError("this SuperNode was started already")
        env = flower_environment(self.flwr_home, base=self._base_env)
        executable = shutil.which(self.command[0], path=env["PATH"])
        if executable is None:
            raise FederationError(
                f"{self.command[0]}: not found on PATH (install fedge[client], which brings flwr)"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._log = os.fdopen(fd, "ab")
        try:
            self._process = subprocess.Popen(
                [executable, *self.command[1:]],
                env=env,
                cwd=self.state_dir,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise FederationError(f"{self.command[0]} could not start: {exc}") from exc
        finally:
            self._close_log()  # the child holds its own copy of the descriptor
        return self

    def _signal_group(self, signum: int) -> bool:
        """Send ``signum`` to the SuperNode's process group; False when the group is gone."""
        if self._process is None:
            return False
        try:
            os.killpg(self._process.pid, signum)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _group_alive(self) -> bool:
        """Whether a live (not zombie) process is left in the group.

        On Linux ``/proc`` says so exactly; ``killpg(0)`` would also count zombies that a
        container's init never reaps.
        """
        if self._process is None:
            return False
        proc = Path("/proc")
        if not proc.is_dir():
            return self._signal_group(0)
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ")".
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == self._process.pid:
                return True
        return False

    def stop(self) -> int | None:
        """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL whatever is left.

        Returns the SuperNode's exit status (None if it was never started).
        """
        process = self._process
        if process is None:
            self._close_log()
            return None
        self._signal_group(signal.SIGTERM)
        try:
            process.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            process.wait()
        # Children (superexec, a ClientApp mid-round) may outlive the leader: give them the
        # rest of a short grace period, then kill what is left of the group.
        deadline = time.monotonic() + min(self.grace, 5.0)
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        self._signal_group(signal.SIGKILL)
        self._close_log()
        return process.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def log_text(self) -> str:
        """What the SuperNode has logged so far (for a failure report)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> SuperNodeProcess:
        return self if self._process is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
