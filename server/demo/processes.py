"""The demo's child processes: fedge's own commands run to completion, and long-running children.

Every persona runs through its own entry point, so the demo starts ``fedge-client``, ``fedge``
and ``fedge-agent`` processes: :func:`run_tool` runs one to completion (long-running
children are :class:`fedge.process.ManagedProcess`, stopped with their group whatever happens),
and :func:`wait_for` polls until something they serve is up.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from fedge.errors import FedgeError

__all__ = ["fedge_bin", "run_tool", "wait_for"]


def fedge_bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def run_tool(args: Sequence[str], *, what: str, cwd: Path | None = None) -> str:
    """Run one of fedge's own commands as its own process; its last error line on failure."""
    done = subprocess.run(list(args), capture_output=True, text=True, check=False, cwd=cwd)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise FedgeError(f"{what} failed: {lines[-1] if lines else f'exit {done.returncode}'}")
    return done.stdout


def wait_for(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise FedgeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.5)
