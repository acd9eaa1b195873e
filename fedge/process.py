"""One supervisor for every child process fedge starts: SuperNodes, mosquitto, demo stages.

Why one: each of them needs the same four things, and each copy got one of them subtly wrong at
some point. A child runs in a session of its own (so a signal reaches it and everything it
started, never fedge itself); its output goes to a log file, not to a pipe nobody drains; a
caller can wait until it listens on a port, failing early, with the log's tail, if it died
instead; and it is stopped by SIGTERM to the whole group, then SIGKILL after a grace period,
then SIGKILL again for any member that outlived the leader (a SuperExec, a ClientApp mid-round).

Errors are raised as the caller's own family (``error=``): a SuperNode that cannot start is a
:class:`~fedge.errors.FederationError`, a broker an :class:`~fedge.errors.EdgeError`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from fedge.errors import FedgeError

__all__ = ["LOOPBACK", "ManagedProcess", "free_port", "group_alive", "listening", "stop_group"]

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (for a child told which port to take)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def listening(host: str, port: int, *, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port`` now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _signal_group(pgid: int, signum: int) -> bool:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in process group ``pgid``.

    On Linux ``/proc`` says so exactly; ``killpg(pgid, 0)`` would also count zombies that a
    container's init never reaps.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return _signal_group(pgid, 0)
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def stop_group(
    process: subprocess.Popen[bytes],
    *,
    grace: float = 10.0,
    first: int = signal.SIGTERM,
    linger: float = 5.0,
) -> int:
    """Stop a session leader and its group: ``first`` (SIGTERM), ``grace`` s, SIGKILL.

    Members that outlive the leader get the rest of ``min(grace, linger)`` seconds, then
    SIGKILL. Returns the leader's exit status. The leader must have been started with
    ``start_new_session=True`` (its pid is its group's id).
    """
    if process.poll() is None:
        if first == signal.SIGKILL:
            _signal_group(process.pid, signal.SIGKILL)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            _signal_group(process.pid, first)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
    deadline = time.monotonic() + min(grace, linger)
    while group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_group(process.pid, signal.SIGKILL)
    return process.returncode


class ManagedProcess:
    """A child in a session of its own, logging to ``log_path``; see the module docstring.

    Idempotent: ``stop`` after ``stop`` (or without ``start``) does nothing. As a context
    manager it starts on entry (unless started) and stops on exit.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        log_path: str | os.PathLike[str],
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        grace: float = 10.0,
        error: type[FedgeError] = FedgeError,
    ) -> None:
        self.command = list(command)
        self.log_path = Path(log_path)
        self.name = name or Path(self.command[0]).name
        self.env = dict(env) if env is not None else None
        self.cwd = Path(cwd) if cwd is not None else None
        self.grace = grace
        self.error = error
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> ManagedProcess:
        """Start the command; its stdout and stderr are appended to the log (mode 0600)."""
        if self.process is not None:
            raise self.error(f"{self.name} was started already")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise self.error(f"{self.name} could not start: {exc}") from exc
        finally:
            os.close(fd)  # the child holds its own copy of the descriptor
        return self

    def wait_for_port(
        self, port: int, *, host: str = LOOPBACK, timeout: float = 20.0, poll: float = 0.05
    ) -> None:
        """Return once ``host:port`` accepts connections; raise if the child exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise self.error(f"{self.name} exited at start: {self.log_tail()}")
            if listening(host, port, timeout=0.2):
                return
            time.sleep(poll)
        self.stop()
        raise self.error(f"{self.name} did not listen on {host}:{port} in {timeout:g} s")

    def send_signal(self, signum: int) -> bool:
        """Send ``signum`` to the whole group; False when it is gone (or never started)."""
        return self.process is not None and _signal_group(self.process.pid, signum)

    def group_alive(self) -> bool:
        return self.process is not None and group_alive(self.process.pid)

    def stop(self, *, first: int = signal.SIGTERM) -> int | None:
        """Stop the group (see :func:`stop_group`); the exit status, None if never started."""
        if self.process is None:
            return None
        return stop_group(self.process, grace=self.grace, first=first)

    def kill(self) -> int | None:
        """SIGKILL the group: no clean exit, no chance to save anything (crash tests)."""
        return self.stop(first=signal.SIGKILL)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 500) -> str:
        return self.log_text()[-chars:].strip()

    def __enter__(self) -> ManagedProcess:
        return self if self.process is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
