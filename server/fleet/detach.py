"""``fedge deploy --detach``: the same rollout, carried out by a background process.

How a detached rollout keeps running, honestly: a rollout is a loop that watches devices and
publishes their desired state, so something must keep running it. ``--detach`` starts that
loop as a separate ``fedge deploy`` process (through :class:`fedge.process.ManagedProcess`: a
session of its own, so closing the terminal or Ctrl-C in it does not reach it, with its output
appended to a log file), waits until the rollout's retained document is on the broker (so
``fedge deploy status`` sees it from the next command on), and returns. Nothing restarts that
process if the machine reboots or it is killed: ``fedge deploy status`` then shows the rollout
as stopped (the process said so on its way out) or its controller as silent (killed outright).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedge.errors import EdgeError
from fedge.process import ManagedProcess
from server.fleet.connection import BrokerEndpoint
from server.fleet.progress import RolloutDocument
from server.fleet.rollout_reader import RolloutReader

__all__ = ["ENTRY", "detached_argv", "start_detached"]

# The operator's CLI, run by the interpreter that runs this one (no PATH lookup).
ENTRY = "from server.cli.app import main; main()"


# Options that name files: made absolute, since the background process may outlive a `cd`.
_PATH_OPTIONS = frozenset({"artifact", "urls", "rollout", "ca", "password_file", "placement_state"})
_NOT_PASSED = frozenset({"detach", "log", "controller_log", "deployment_id"})


def detached_argv(params: Mapping[str, Any], deployment_id: str, *, log: Path) -> list[str]:
    """The foreground ``fedge deploy`` command line for the options of a ``--detach`` one.

    ``params`` maps option names (``password_file``) to values, as click parsed them; the
    background process gets the same rollout with its deployment id fixed, so both processes
    name the same retained document, and is told where its log is, for ``deploy status``.
    """
    argv = ["deploy"]
    for name, value in params.items():
        if value is None or value is False or name in _NOT_PASSED:
            continue
        flag = f"--{name.replace('_', '-')}"
        if value is True:
            argv.append(flag)
        else:
            argv += [flag, str(Path(value).resolve()) if name in _PATH_OPTIONS else str(value)]
    return [*argv, "--deployment-id", deployment_id, "--controller-log", str(log)]


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def start_detached(
    argv: Sequence[str],
    broker: BrokerEndpoint,
    fleet: str,
    deployment_id: str,
    *,
    log: Path,
    timeout: float = 90.0,
) -> tuple[ManagedProcess, RolloutDocument]:
    """Start ``fedge <argv>`` in the background and wait for its first rollout document.

    ``argv`` is a complete foreground ``deploy`` command line for ``deployment_id``. Raises
    :class:`EdgeError` with the child's last log line if it exits before the document shows.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = ManagedProcess(
        [sys.executable, "-c", ENTRY, *argv],
        log_path=log,
        name="fedge deploy (detached)",
        env=env,
        error=EdgeError,
    )
    with RolloutReader(broker, fleet) as reader:
        process.start()
        deadline = time.monotonic() + timeout
        while True:
            document = reader.get(deployment_id)
            if document is not None:
                return process, document
            code = process.returncode
            if code is not None:
                raise EdgeError(
                    f"the detached rollout exited ({code}) before it started: "
                    f"{_last_line(process.log_text())} (log: {log})"
                )
            if time.monotonic() > deadline:
                raise EdgeError(
                    f"the detached rollout (pid {process.pid}) did not record its state on the "
                    f"broker within {timeout:g} s; it may still run (log: {log})"
                )
            reader.wait_for_change(0.2)
