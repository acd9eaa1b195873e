"""A mosquitto broker that fedge starts and stops itself: the demo's broker.

Production runs its own mosquitto; the demo (and the benchmarks) need one that comes up on
loopback with the same security as production, so the agents run exactly as they would in the
field: TLS only (a CA and a server certificate from :func:`fedge.tls.generate_federation_certs`),
no anonymous clients, a password file, and an ACL that confines each device to
``fedge/v1/<fleet>/<device>/#`` while the operator account may use ``fedge/v1/#``. Passwords
are random, written to 0600 files for the accounts that need them, never logged.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import secrets
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from fedge.atomic import atomic_write_text
from fedge.errors import EdgeError
from fedge.process import LOOPBACK, ManagedProcess
from fedge.tls import CertPaths

__all__ = ["OPERATOR", "LocalBroker", "free_port", "mosquitto_binary", "password_line"]

OPERATOR = "operator"


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
        None,
    )
    if found is None:
        raise EdgeError("mosquitto is not installed (Debian: apt-get install mosquitto)")
    return found


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def password_line(username: str, password: str, *, iterations: int = 101) -> str:
    """mosquitto 2.x's password-file format: ``$7$`` is PBKDF2-HMAC-SHA512 with a 12-byte salt."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    encoded = f"{base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    return f"{username}:$7${iterations}${encoded}"


class LocalBroker:
    """mosquitto on 127.0.0.1 with TLS, passwords and per-device ACLs, in ``folder``."""

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
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "data").mkdir(exist_ok=True)
        self.passwords = {OPERATOR: secrets.token_urlsafe(16)}
        blocks = [f"user {OPERATOR}\ntopic readwrite fedge/v1/#\n"]
        for fleet, device in devices:
            user = self.username(fleet, device)
            self.passwords[user] = secrets.token_urlsafe(16)
            blocks.append(f"user {user}\ntopic readwrite fedge/v1/{fleet}/{device}/#\n")
        lines = [password_line(u, p) for u, p in self.passwords.items()]
        atomic_write_text(folder / "passwd", "\n".join(lines) + "\n", mode=0o600)
        atomic_write_text(folder / "acl", "\n".join(blocks), mode=0o600)
        for user, password in self.passwords.items():
            atomic_write_text(self.password_file(user), password + "\n", mode=0o600)
        config = [
            f"listener {self.port} {LOOPBACK}",
            f"cafile {certs.ca_cert}",
            f"certfile {certs.server_cert}",
            f"keyfile {certs.server_key}",
            "tls_version tlsv1.2",
            "allow_anonymous false",
            f"password_file {folder / 'passwd'}",
            f"acl_file {folder / 'acl'}",
            "persistence true",
            f"persistence_location {folder / 'data'}/",
            f"log_dest file {folder / 'mosquitto.log'}",
        ]
        if os.getuid() == 0:  # as root mosquitto drops to "mosquitto", who cannot read the keys
            config.append(f"user {pwd.getpwuid(os.getuid()).pw_name}")
        atomic_write_text(folder / "mosquitto.conf", "\n".join(config) + "\n")

    @staticmethod
    def username(fleet: str, device: str) -> str:
        return f"{fleet}.{device}"

    def password_file(self, user: str) -> Path:
        return self.folder / "secrets" / f"{user}.password"

    def start(self, *, timeout: float = 20.0) -> LocalBroker:
        self.process = ManagedProcess(
            [mosquitto_binary(), "-c", str(self.folder / "mosquitto.conf")],
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
