"""The fleet's mosquitto configuration, written by fedge: TLS only, passwords, one ACL per device.

Why fedge writes it: the security of the edge side rests on it (no anonymous client, each
device confined to ``fedge/v1/<fleet>/<device>/#``, the operator alone on ``fedge/v1/#``), and an
operator who copies a sample config by hand gets one of those wrong. ``fedge broker init`` and
the demo's own broker (``server/demo/mosquitto.py``) both write it through :class:`BrokerFolder`.

The folder holds everything mosquitto reads and nothing else needs to be hand-edited::

    mosquitto.conf   listener, TLS files, password file, ACL file, persistence, log
    broker.json      host and port (what device kits put in agent.yaml)
    certs/           ca.crt (give it to devices and the operator), server.pem, keys (0600)
    passwd           PBKDF2-SHA512 entries (mosquitto 2.x format), regenerated from secrets/
    acl              regenerated from secrets/ on every change
    secrets/         one <user>.password per account, 0600; a device kit copies its own
    data/            mosquitto's persistence (retained desired/reported documents survive restarts)

Accounts are ``operator`` and ``<fleet>.<device>``. Adding a device keeps every other password;
mosquitto re-reads the password and ACL files on SIGHUP (``kill -HUP <pid>``) or restart.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from fedge.atomic import atomic_write_text
from fedge.errors import UsageError
from fedge.tls import CertPaths, generate_federation_certs
from policies.common import TOPIC_SAFE_ID

__all__ = [
    "OPERATOR",
    "BrokerFolder",
    "device_username",
    "password_line",
]

OPERATOR = "operator"
_NAME = re.compile(TOPIC_SAFE_ID)  # the pattern AgentConfig's deviceId and fleet follow


def device_username(fleet: str, device: str) -> str:
    return f"{fleet}.{device}"


def password_line(username: str, password: str, *, iterations: int = 101) -> str:
    """mosquitto 2.x's password-file format: ``$7$`` is PBKDF2-HMAC-SHA512 with a 12-byte salt."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    encoded = f"{base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    return f"{username}:$7${iterations}${encoded}"


def _check_name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise UsageError(
            f"{what} {value!r}: not a topic-safe id (AgentConfig's pattern {TOPIC_SAFE_ID})"
        )
    return value


class BrokerFolder:
    """One broker's configuration folder; see the module docstring for its layout."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    # -- paths ----------------------------------------------------------------------------------

    @property
    def config(self) -> Path:
        return self.folder / "mosquitto.conf"

    @property
    def certs(self) -> CertPaths:
        return CertPaths.in_directory(self.folder / "certs")

    def password_file(self, user: str) -> Path:
        return self.folder / "secrets" / f"{user}.password"

    # -- writing --------------------------------------------------------------------------------

    def init(
        self,
        *,
        host: str,
        port: int,
        cert_hosts: Iterable[str] = (),
        certs: CertPaths | None = None,
        listen: str | None = None,
    ) -> BrokerFolder:
        """Write the configuration, the operator account and (unless given) certificates.

        ``host`` is what devices dial (it goes into their certificates' names and kits);
        ``listen`` the address mosquitto binds (default ``host``). Existing certificates and
        passwords are kept, so running it again never locks a device out.
        """
        if not 1 <= port <= 65535:
            raise UsageError(f"--port {port}: expected 1 to 65535")
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "data").mkdir(exist_ok=True)
        if certs is None:
            certs = self.certs
            if not certs.ca_cert.is_file():
                names = dict.fromkeys([host, *cert_hosts])
                certs = generate_federation_certs(certs.directory, hosts=tuple(names), days=365)
        atomic_write_text(
            self.folder / "broker.json",
            json.dumps({"host": host, "port": port, "ca": str(certs.ca_cert)}, indent=2) + "\n",
        )
        lines = [
            f"listener {port} {listen or host}",
            f"cafile {certs.ca_cert}",
            f"certfile {certs.server_cert}",
            f"keyfile {certs.server_key}",
            "tls_version tlsv1.2",
            "allow_anonymous false",
            f"password_file {self.folder / 'passwd'}",
            f"acl_file {self.folder / 'acl'}",
            "persistence true",
            f"persistence_location {self.folder / 'data'}/",
            f"log_dest file {self.folder / 'mosquitto.log'}",
        ]
        if os.getuid() == 0:  # as root mosquitto drops to "mosquitto", who cannot read the keys
            lines.append(f"user {pwd.getpwuid(os.getuid()).pw_name}")
        atomic_write_text(self.config, "\n".join(lines) + "\n")
        self._account(OPERATOR)
        self._rewrite()
        return self

    def add_device(self, fleet: str, device: str) -> str:
        """Give ``device`` of ``fleet`` an account confined to its own topics; its username."""
        if "." in fleet:  # the username is <fleet>.<device>: a dot would make it ambiguous
            raise UsageError(f"fleet {fleet!r}: a broker fleet name may not contain '.'")
        user = device_username(_check_name(fleet, "fleet"), _check_name(device, "device"))
        self._require_init()
        self._account(user)
        self._rewrite()
        return user

    def address(self) -> tuple[str, int]:
        """The host and port devices dial, from ``broker.json``."""
        self._require_init()
        doc = json.loads((self.folder / "broker.json").read_text(encoding="utf-8"))
        return str(doc["host"]), int(doc["port"])

    def ca_cert(self) -> Path:
        self._require_init()
        doc = json.loads((self.folder / "broker.json").read_text(encoding="utf-8"))
        return Path(str(doc["ca"]))

    def password(self, user: str) -> str:
        path = self.password_file(user)
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"{path}: no account {user!r} on this broker") from exc

    def users(self) -> list[str]:
        folder = self.folder / "secrets"
        return sorted(p.name.removesuffix(".password") for p in folder.glob("*.password"))

    # -- internals ------------------------------------------------------------------------------

    def _require_init(self) -> None:
        if not (self.folder / "broker.json").is_file():
            raise UsageError(f"{self.folder}: not a broker folder (run `fedge broker init` first)")

    def _account(self, user: str) -> None:
        path = self.password_file(user)
        if not path.is_file():
            atomic_write_text(path, secrets.token_urlsafe(18) + "\n", mode=0o600)

    def _rewrite(self) -> None:
        """passwd and acl from the accounts in secrets/: the one source of truth."""
        users = self.users()
        lines = [password_line(user, self.password(user)) for user in users]
        atomic_write_text(self.folder / "passwd", "\n".join(lines) + "\n", mode=0o600)
        blocks = [f"user {OPERATOR}\ntopic readwrite fedge/v1/#\n"]
        for user in users:
            if user == OPERATOR:
                continue
            fleet, _, device = user.partition(".")
            blocks.append(f"user {user}\ntopic readwrite fedge/v1/{fleet}/{device}/#\n")
        atomic_write_text(self.folder / "acl", "\n".join(blocks), mode=0o600)
