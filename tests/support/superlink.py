"""A real ``flower-superlink`` with TLS on a free loopback port, for the Deployment Engine tests.

Started the way an operator starts it (``superlink_command``), in a process group of its own
through :class:`fedge.process.ManagedProcess`, and stopped with its whole group whatever the
test's outcome. A missing ``flower-superlink`` fails under CI and skips elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedge.errors import FederationError
from fedge.process import LOOPBACK, ManagedProcess, free_port
from fedge.tls import CertPaths, generate_federation_certs
from server.federation.deployment_engine import (
    flower_environment,
    superlink_command,
    write_flwr_home,
)

__all__ = ["SuperLink", "free_port", "running_superlink", "tls_ready"]


@dataclass
class SuperLink:
    address: str
    certs: CertPaths
    process: subprocess.Popen[bytes]
    log: Path
    flwr_home: Path


def tls_ready(port: int, ca: Path) -> bool:
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with (
            socket.create_connection((LOOPBACK, port), timeout=1) as raw,
            context.wrap_socket(raw, server_hostname=LOOPBACK),
        ):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def running_superlink(tmp_path: Path, *, supernode_auth: bool = False) -> Iterator[SuperLink]:
    """A TLS SuperLink on a free loopback port, stopped at the end; fails under CI if missing."""
    env = flower_environment(tmp_path / "superlink-home")
    executable = shutil.which("flower-superlink", path=env["PATH"])
    if executable is None:
        message = "flower-superlink is not installed (pip install 'fedge[server]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    certs = generate_federation_certs(tmp_path / "certs")
    port = free_port()
    log = tmp_path / "superlink.log"
    command = superlink_command(
        certs, host=LOOPBACK, port=port, executable=executable, supernode_auth=supernode_auth
    )
    managed = ManagedProcess(
        command, log_path=log, name="flower-superlink", env=env, cwd=tmp_path, error=FederationError
    ).start()
    assert managed.process is not None
    try:
        home = tmp_path / "operator-flwr"
        write_flwr_home(home, address=f"{LOOPBACK}:{port}", root_certificates=certs.ca_cert)
        deadline = time.monotonic() + 60
        while not tls_ready(port, certs.ca_cert):
            if not managed.running() or time.monotonic() > deadline:
                pytest.fail(f"flower-superlink did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield SuperLink(f"{LOOPBACK}:{port}", certs, managed.process, log, home)
    finally:
        managed.stop()
