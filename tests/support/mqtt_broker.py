"""A real mosquitto for the edge tests: TLS, a password file, an ACL, persistence, restartable.

:class:`MosquittoBroker` writes a config that listens on a free 127.0.0.1 port with TLS only (a CA
and a server certificate for 127.0.0.1 from :func:`fedge.tls.generate_federation_certs`), refuses
anonymous clients, checks passwords from a file made with ``mosquitto_passwd`` (or, where that tool
is missing, the same PBKDF2-SHA512 format written here), and confines each device through
per-user ACL blocks to ``fedge/v1/<fleet>/<device>/#``, while one operator user may use
``fedge/v1/#``. Persistence is on, so retained documents and persistent sessions survive
:meth:`MosquittoBroker.restart` (which keeps the port). :class:`Operator` is a paho client with the
operator's credentials that remembers every message it saw and waits for a condition.

Fixtures: ``broker_certs`` (one CA per session) and ``mosquitto`` (a factory; every broker it
starts is stopped at the end of the test). A missing mosquitto fails under CI and skips elsewhere.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fedge.errors import EdgeError
from fedge.process import ManagedProcess, free_port
from fedge.tls import CertPaths, generate_federation_certs
from server.demo.mosquitto import mosquitto_binary as product_binary
from server.kit.broker import password_line

LOOPBACK = "127.0.0.1"
OPERATOR = "operator"


class BrokerMissingError(RuntimeError):
    pass


def mosquitto_binary() -> str:
    try:
        return product_binary()
    except EdgeError as exc:
        raise BrokerMissingError(str(exc)) from exc


def write_password_file(path: Path, users: dict[str, str], *, use_tool: bool = True) -> None:
    tool = shutil.which("mosquitto_passwd") or (
        "/usr/bin/mosquitto_passwd" if Path("/usr/bin/mosquitto_passwd").exists() else None
    )
    path.write_text("", encoding="utf-8")
    path.chmod(0o600)
    if tool is None or not use_tool:
        lines = [password_line(user, password) for user, password in users.items()]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return
    for user, password in users.items():
        subprocess.run(
            [tool, "-b", str(path), user, password], check=True, capture_output=True, timeout=30
        )


def device_username(fleet: str, device: str) -> str:
    return f"{fleet}.{device}"


@dataclass
class MosquittoBroker:
    workdir: Path
    certs: CertPaths
    devices: Sequence[tuple[str, str]]
    port: int = field(default_factory=free_port)
    passwords: dict[str, str] = field(default_factory=dict)
    use_passwd_tool: bool = True
    process: ManagedProcess | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        self.passwords[OPERATOR] = secrets.token_urlsafe(12)
        for fleet, device in self.devices:
            self.passwords[device_username(fleet, device)] = secrets.token_urlsafe(12)
        write_password_file(self.passwd_file, self.passwords, use_tool=self.use_passwd_tool)
        blocks = [f"user {OPERATOR}\ntopic readwrite fedge/v1/#\n"]
        blocks += [
            f"user {device_username(fleet, device)}\ntopic readwrite fedge/v1/{fleet}/{device}/#\n"
            for fleet, device in self.devices
        ]
        self.acl_file.write_text("\n".join(blocks), encoding="utf-8")
        self.acl_file.chmod(0o600)
        lines = [
            f"listener {self.port} {LOOPBACK}",
            f"cafile {self.certs.ca_cert}",
            f"certfile {self.certs.server_cert}",
            f"keyfile {self.certs.server_key}",
            "tls_version tlsv1.2",
            "allow_anonymous false",
            f"password_file {self.passwd_file}",
            f"acl_file {self.acl_file}",
            "persistence true",
            f"persistence_location {self.workdir / 'data'}/",
            "autosave_interval 1",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if os.getuid() == 0:  # mosquitto would drop to user "mosquitto", who cannot read the keys
            lines.append(f"user {pwd.getpwuid(os.getuid()).pw_name}")
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")

    @property
    def config(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def passwd_file(self) -> Path:
        return self.workdir / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.workdir / "acl"

    @property
    def log(self) -> Path:
        return self.workdir / "mosquitto.log"

    def credentials(self, fleet: str, device: str) -> tuple[str, str]:
        username = device_username(fleet, device)
        return username, self.passwords[username]

    @property
    def operator(self) -> tuple[str, str]:
        return OPERATOR, self.passwords[OPERATOR]

    def start(self) -> None:
        if self.process is not None and self.process.running():
            return
        self.process = ManagedProcess(
            [mosquitto_binary(), "-c", str(self.config)],
            log_path=self.workdir / "stderr.log",
            name="mosquitto",
            error=EdgeError,
        ).start()
        try:
            self.process.wait_for_port(self.port, timeout=20)
        except EdgeError as exc:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{exc}\n{tail}") from exc

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence file and exits."""
        process, self.process = self.process, None
        if process is not None:
            process.stop()

    def restart(self, *, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    def client(
        self,
        username: str,
        password: str,
        *,
        client_id: str | None = None,
    ) -> Operator:
        return Operator(self, username, password, client_id=client_id)


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Operator:
    """A paho client that records everything it receives on ``fedge/v1/#`` (or what it may)."""

    def __init__(
        self,
        broker: MosquittoBroker,
        username: str,
        password: str,
        *,
        client_id: str | None = None,
        subscribe: Sequence[str] = ("fedge/v1/#",),
        tls: bool = True,
    ) -> None:
        self.broker = broker
        self.messages: list[Message] = []
        self.latest: dict[str, Message] = {}
        self.suback: list[list[Any]] = []
        self.puback: dict[int, Any] = {}
        self._subscribe = list(subscribe)
        self._cond = threading.Condition()
        self.connected = threading.Event()
        self._settled = threading.Event()
        self.refused: Any = None
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv5,
        )
        client.username_pw_set(username, password)
        if tls:
            client.tls_set(ca_certs=str(broker.certs.ca_cert), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.reconnect_delay_set(1, 2)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_disconnect = lambda *_args: self.connected.clear()
        self.client = client

    def __enter__(self) -> Operator:
        self.client.connect_async(LOOPBACK, self.broker.port, keepalive=10)
        self.client.loop_start()
        self._settled.wait(15)
        if not self.connected.is_set():
            self.client.disconnect()
            self.client.loop_stop()
            raise RuntimeError(f"test client could not connect: {self.refused}")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.refused = reason
            self._settled.set()
            return
        for topic in self._subscribe:
            client.subscribe(topic, qos=1)
        self.connected.set()
        self._settled.set()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        with self._cond:
            self.suback.append(list(reasons))
            self._cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._cond:
            self.puback[mid] = reason
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        item = Message(message.topic, bytes(message.payload), bool(message.retain))
        with self._cond:
            self.messages.append(item)
            self.latest[item.topic] = item
            self._cond.notify_all()

    def publish(
        self, topic: str, payload: bytes | str | dict[str, Any], *, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        info = self.client.publish(topic, data, qos=1, retain=retain)
        return info

    def wait_for(
        self,
        predicate: Callable[[], Any],
        *,
        timeout: float = 60.0,
        what: str = "condition",
    ) -> Any:
        """Block until ``predicate()`` is truthy (returned), or fail naming ``what``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
                self._cond.wait(min(remaining, 0.2))

    def reported(self, fleet: str, device: str) -> dict[str, Any] | None:
        message = self.latest.get(f"fedge/v1/{fleet}/{device}/reported")
        return None if message is None or not message.payload else message.json()

    def wait_reported(
        self,
        fleet: str,
        device: str,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        timeout: float = 60.0,
        what: str = "",
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            doc = self.reported(fleet, device)
            return doc if doc is not None and predicate(doc) else None

        try:
            found: dict[str, Any] = self.wait_for(
                check, timeout=timeout, what=what or f"{device} reported"
            )
            return found
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last reported: {self.reported(fleet, device)}") from None


def session_expiry(seconds: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = seconds
    return props


def _missing(exc: BrokerMissingError) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{exc} (required under CI)")
    pytest.skip(str(exc))


@pytest.fixture(scope="session")
def broker_certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return generate_federation_certs(
        tmp_path_factory.mktemp("mqtt-pki"), hosts=("127.0.0.1", "localhost")
    )


@pytest.fixture
def mosquitto(tmp_path: Path, broker_certs: CertPaths) -> Iterator[Callable[..., MosquittoBroker]]:
    """Factory: ``mosquitto(devices=[(fleet, device), ...])`` starts a broker for this test."""
    try:
        mosquitto_binary()
    except BrokerMissingError as exc:
        _missing(exc)
    started: list[MosquittoBroker] = []

    def start(
        devices: Sequence[tuple[str, str]] = (), *, use_passwd_tool: bool = True
    ) -> MosquittoBroker:
        broker = MosquittoBroker(
            workdir=tmp_path / f"mosquitto-{len(started)}",
            certs=broker_certs,
            devices=list(devices),
            use_passwd_tool=use_passwd_tool,
        )
        started.append(broker)
        broker.start()
        return broker

    try:
        yield start
    finally:
        for broker in started:
            broker.stop()
