"""The operator's MQTT connection: TLS, its account, QoS 1 publishing that rides out a restart.

One home for what the fleet controller (every device's shadow), the rollout recorder and the
rollout reader (``fedge deploy status``) all need from paho: connecting with the operator's
credentials, failing with one line when the broker refuses, subscribing again after every
reconnection, and publishing with a wait for the broker's acknowledgement. Subclasses say which
filters they subscribe to (:meth:`BrokerConnection.filters`) and what a message means
(:meth:`BrokerConnection.handle`).
"""

from __future__ import annotations

import ssl
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from fedge.errors import EdgeError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["BrokerConnection", "BrokerEndpoint"]


@dataclass(frozen=True)
class BrokerEndpoint:
    """How the operator reaches the broker: TLS against ``ca_file``, its own account."""

    host: str
    port: int
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = True


class BrokerConnection:
    """A connected operator client; subclasses override :meth:`filters` and :meth:`handle`."""

    def __init__(self, broker: BrokerEndpoint, *, client_id: str | None = None) -> None:
        self._broker = broker
        self._connected = threading.Event()
        self._error: str | None = None
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"fedge-operator-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        if broker.tls:
            context = ssl.create_default_context(
                cafile=str(broker.ca_file) if broker.ca_file else None
            )
            self._client.tls_set_context(context)
        if broker.username:
            self._client.username_pw_set(broker.username, broker.password)
        self._client.reconnect_delay_set(min_delay=1, max_delay=5)  # ride out a broker restart
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message

    def filters(self) -> Sequence[str]:
        """The topic filters to subscribe to (again) at every connection."""
        return ()

    def handle(self, topic: str, payload: bytes) -> None:
        """One message (paho's network thread): record it and return."""

    def __enter__(self) -> BrokerConnection:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def where(self) -> str:
        return f"{self._broker.host}:{self._broker.port}"

    def connect(self, *, timeout: float = 15.0) -> None:
        try:
            self._client.connect(self._broker.host, self._broker.port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            raise EdgeError(f"broker {self.where}: cannot connect ({exc})") from exc
        self._client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise EdgeError(f"broker {self.where}: no connection within {timeout:g} s")
        if self._error is not None:
            self.close()
            raise EdgeError(f"broker {self.where}: {self._error}")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._error = f"connection refused ({reason})"
        else:
            for topic in self.filters():
                client.subscribe(topic, qos=1)
        self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.handle(message.topic, bytes(message.payload))

    def publish(self, topic: str, payload: bytes, *, retain: bool, timeout: float = 30.0) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK, across a reconnection.

        paho reports a publish made while the connection is down as an error (and queues it); a
        rollout must survive a broker restart, so the message is sent again once the client has
        reconnected. A duplicate is harmless: ``desired`` is retained (the same bytes twice) and
        an agent ignores a second ``rollback`` of a deployment it already rolled back.
        """
        deadline = time.monotonic() + timeout
        problem = "not connected"
        while time.monotonic() < deadline:
            if self._client.is_connected():
                info = self._client.publish(topic, payload, qos=1, retain=retain)
                try:
                    info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
                    if info.is_published():
                        return
                    problem = "no acknowledgement"
                except (RuntimeError, ValueError) as exc:  # connection lost, queue full
                    problem = str(exc)
            time.sleep(0.1)
        raise EdgeError(f"{topic}: the broker did not acknowledge the message ({problem})")

    def publish_many(
        self, messages: Sequence[tuple[str, bytes]], *, retain: bool, timeout: float = 30.0
    ) -> None:
        """Publish several QoS 1 messages back to back, then wait for every PUBACK.

        A batch of a hundred devices then costs about one round trip to the broker instead of a
        hundred (paho keeps up to the broker's receive maximum in flight and queues the rest).
        A message not acknowledged that way goes through :meth:`publish`, which rides out a
        reconnection.
        """
        sent: list[tuple[str, bytes, mqtt.MQTTMessageInfo | None]] = []
        for topic, payload in messages:
            info = None
            if self._client.is_connected():
                info = self._client.publish(topic, payload, qos=1, retain=retain)
            sent.append((topic, payload, info))
        deadline = time.monotonic() + timeout
        for topic, payload, info in sent:
            if info is not None:
                try:
                    info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
                    if info.is_published():
                        continue
                except (RuntimeError, ValueError):  # connection lost, queue full
                    pass
            self.publish(topic, payload, retain=retain, timeout=timeout)
