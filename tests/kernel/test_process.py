"""fedge/process.py: the one supervisor for child processes, on real processes."""

from __future__ import annotations

import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from fedge.errors import EdgeError, FederationError, FedgeError
from fedge.process import LOOPBACK, ManagedProcess, group_alive, listening


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_waits_for_the_port_and_stops_the_server(tmp_path: Path) -> None:
    port = _free_port()
    server = ManagedProcess(
        [sys.executable, "-m", "http.server", str(port), "--bind", LOOPBACK],
        log_path=tmp_path / "logs" / "http.log",
        cwd=tmp_path,
    )
    assert server.pid is None and not server.running() and server.stop() is None
    with server:
        server.wait_for_port(port, timeout=20)
        assert listening(LOOPBACK, port) and server.running()
        assert (tmp_path / "logs" / "http.log").stat().st_mode & 0o777 == 0o600
        with pytest.raises(FedgeError, match="started already"):
            server.start()
    assert not server.running() and not listening(LOOPBACK, port)
    assert server.returncode == -signal.SIGTERM
    assert server.stop() == -signal.SIGTERM  # idempotent


def test_an_early_exit_is_raised_as_the_callers_error_with_the_log(tmp_path: Path) -> None:
    broken = ManagedProcess(
        [sys.executable, "-c", "import sys; print('bad config line 3'); sys.exit(3)"],
        log_path=tmp_path / "broken.log",
        name="broker",
        error=EdgeError,
    ).start()
    with pytest.raises(EdgeError, match="broker exited at start: bad config line 3"):
        broken.wait_for_port(_free_port(), timeout=20)
    assert broken.returncode == 3


def test_a_silent_child_times_out_and_is_stopped(tmp_path: Path) -> None:
    port = _free_port()
    quiet = ManagedProcess(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        log_path=tmp_path / "quiet.log",
        name="quiet",
        error=FederationError,
    ).start()
    with pytest.raises(
        FederationError, match=f"quiet did not listen on {LOOPBACK}:{port} in 0.5 s"
    ):
        quiet.wait_for_port(port, timeout=0.5)
    assert not quiet.running()


def test_a_missing_program_is_the_callers_error(tmp_path: Path) -> None:
    with pytest.raises(FederationError, match="fedge-no-such-program could not start"):
        ManagedProcess(
            ["fedge-no-such-program"], log_path=tmp_path / "x.log", error=FederationError
        ).start()


def test_stop_kills_a_child_that_ignores_sigterm_with_the_group(tmp_path: Path) -> None:
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        'print("ready", flush=True); time.sleep(60)\'])\n'
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = ManagedProcess(
        [sys.executable, "-c", script], log_path=tmp_path / "group.log", grace=1.0
    ).start()
    deadline = time.monotonic() + 20
    while "ready" not in parent.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(parent.log_text().split()[0])
    assert parent.pid is not None and group_alive(parent.pid)
    parent.stop()
    deadline = time.monotonic() + 5  # SIGKILL is asynchronous
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    assert not group_alive(parent.pid)


def test_kill_gives_no_chance_to_clean_up(tmp_path: Path) -> None:
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('clean exit', flush=True), sys.exit(0)))\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = ManagedProcess([sys.executable, "-c", script], log_path=tmp_path / "k.log").start()
    deadline = time.monotonic() + 20
    while "up" not in process.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.kill() == -signal.SIGKILL
    assert "clean exit" not in process.log_text()
    graceful = ManagedProcess([sys.executable, "-c", script], log_path=tmp_path / "g.log").start()
    deadline = time.monotonic() + 20
    while "up" not in graceful.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert graceful.stop() == 0
    assert "clean exit" in graceful.log_text()
