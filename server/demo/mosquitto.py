"""A mosquitto broker that fedge starts and stops itself: the demo's broker.

Production runs its own mosquitto (configured by ``fedge broker init``); the demo (and the
benchmarks) need one that comes up on loopback with the same configuration, so the agents run
exactly as they would in the field: TLS only, no anonymous clients, a password file, and an ACL
that confines each device to ``fedge/v1/<fleet>/<device>/#`` while the operator account may use
``fedge/v1/#`` (:class:`server.kit.broker.BrokerFolder` writes all of it). Passwords are random,
in 0600 files for the accounts that need them, never logged.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from fedge.errors import EdgeError
from fedge.process import LOOPBACK, ManagedProcess, free_port
from fedge.tls import CertPaths
from server.kit.broker import OPERATOR, BrokerFolder, device_username

__all__ = ["OPERATOR", "LocalBroker", "free_port", "mosquitto_binary"]


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
        None,
    )
    if found is None:
        raise EdgeError("mosquitto is not installed (Debian: apt-get install mosquitto)")
    return found


class LocalBroker:
    """mosquitto on 127.0.0.1 with TLS, passwords and per-device ACLs, in ``folder``.

    The configuration is :class:`server.kit.broker.BrokerFolder`'s, as ``fedge broker init``
    writes it for production; this class only adds the process.
    """

    def __init__(
        self,
        folder: Path,
        certs: CertPaths,
        devices: Sequence[tuple[str, str]],
        *,
        port: int | None = None,
    ) -> None:
        self.folder = folder
        self.certs = certs
        self.port = port or free_port()
        self.process: ManagedProcess | None = None
        self.config = BrokerFolder(folder)
        self.config.init(host=LOOPBACK, port=self.port, certs=certs)
        for fleet, device in devices:
            self.config.add_device(fleet, device)
        self.passwords = {user: self.config.password(user) for user in self.config.users()}

    @staticmethod
    def username(fleet: str, device: str) -> str:
        return device_username(fleet, device)

    def password_file(self, user: str) -> Path:
        return self.config.password_file(user)

    def start(self, *, timeout: float = 20.0) -> LocalBroker:
        self.process = ManagedProcess(
            [mosquitto_binary(), "-c", str(self.config.config)],
            log_path=self.folder / "stderr.log",
            name="mosquitto",
            error=EdgeError,
        ).start()
        self.process.wait_for_port(self.port, timeout=timeout)
        return self

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence file and exits (SIGKILL after 10 s)."""
        process, self.process = self.process, None
        if process is not None:
            process.stop()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
