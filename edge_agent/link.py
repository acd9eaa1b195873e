"""The agent's MQTT connection: TLS, credentials, a persistent session, a last will, a bdSeq.

paho-mqtt 2.x with ``CallbackAPIVersion.VERSION2`` and MQTT 5. The session is persistent
(``clean_start=False`` on every connect, with a session expiry), so QoS 1 messages sent to the
device while it was away are delivered when it returns, and its subscriptions survive a broker
restart when the broker persists its state. Before every connection attempt the birth sequence is
incremented and persisted, and the last will (``status: offline``, retained) is set to carry that
number; on CONNACK the agent publishes ``status: online`` with the same number, so a controller can
tell the death of an old connection from the birth of a new one, whatever order they arrive in.

paho reconnects on its own with a growing delay; a publish made while disconnected is queued
(QoS 1) and sent on reconnection, and the agent republishes its retained documents on every
connect anyway. Nothing here raises paho's exceptions past the module: they become
:class:`~fedge.errors.EdgeError`.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config import BrokerSettings
from edge_agent.protocol import Channel, DeviceTopics, parse_topic
from fedge.errors import EdgeError
from fedge.logs import get_logger

__all__ = ["MqttLink"]

log = get_logger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600
_MAX_QUEUED = 1000


class MqttLink:
    """One device's connection; callbacks run on paho's network thread and must return quickly."""

    def __init__(
        self,
        broker: BrokerSettings,
        topics: DeviceTopics,
        *,
        on_message: Callable[[Channel, bytes], None],
        on_connected: Callable[[int], None],
        next_birth_seq: Callable[[], int],
        will_payload: Callable[[int], bytes],
        reconnect_delay: tuple[int, int] = (1, 10),
        client_id: str | None = None,
    ) -> None:
        self.broker = broker
        self.topics = topics
        self._on_message_cb = on_message
        self._on_connected_cb = on_connected
        self._next_birth_seq = next_birth_seq
        self._will_payload = will_payload
        self.birth_seq = 0
        self._connected = threading.Event()
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"fedge/{topics.fleet}/{topics.device}",
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=True,
        )
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            try:
                client.tls_set(
                    ca_certs=None if broker.ca_file is None else str(broker.ca_file),
                    certfile=None if broker.cert_file is None else str(broker.cert_file),
                    keyfile=None if broker.key_file is None else str(broker.key_file),
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise EdgeError(
                    f"broker TLS: cannot load the CA or client certificate ({exc})"
                ) from exc
        client.reconnect_delay_set(min_delay=reconnect_delay[0], max_delay=reconnect_delay[1])
        client.max_queued_messages_set(_MAX_QUEUED)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self.client = client

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        """Connect in the background; paho retries until the broker answers."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        try:
            self.client.connect_async(
                self.broker.host,
                self.broker.port,
                keepalive=max(5, round(self.broker.keepalive)),
                clean_start=False,
                properties=properties,
            )
        except (OSError, ValueError) as exc:
            raise EdgeError(f"broker {self.broker.host}:{self.broker.port}: {exc}") from exc
        self.client.loop_start()

    def publish(self, channel: Channel, payload: bytes, *, retain: bool, qos: int = 1) -> None:
        info = self.client.publish(self.topics.of(channel), payload, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("publish on %s not queued: %s", channel.value, mqtt.error_string(info.rc))

    def stop(self, *, last_words: bytes | None = None, timeout: float = 3.0) -> None:
        """Say ``offline`` ourselves (a clean disconnect drops the will), then disconnect."""
        if last_words is not None and self.connected:
            info = self.client.publish(self.topics.status, last_words, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.debug("offline status not confirmed: %s", exc)
        self.client.disconnect()
        self.client.loop_stop()
        self._connected.clear()

    # -- paho callbacks (network thread) --------------------------------------------------------

    def _on_pre_connect(self, client: mqtt.Client, _userdata: Any) -> None:
        self.birth_seq = self._next_birth_seq()
        client.will_set(self.topics.status, self._will_payload(self.birth_seq), qos=1, retain=True)

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error(
                "broker %s:%d refused the connection: %s",
                self.broker.host,
                self.broker.port,
                reason.getName(),
            )
            return
        log.info(
            "connected to %s:%d (birth %d, session present: %s)",
            self.broker.host,
            self.broker.port,
            self.birth_seq,
            flags.session_present,
        )
        client.subscribe([(self.topics.desired, 1), (self.topics.cmd, 1)])
        self._connected.set()
        self._on_connected_cb(self.birth_seq)

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._connected.clear()
        if reason.is_failure:
            log.warning("disconnected from the broker: %s", reason.getName())
        else:
            log.info("disconnected from the broker")

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        refused = [reason.getName() for reason in reasons if reason.is_failure]
        if refused:
            log.error(
                "the broker refused this device's subscriptions (%s): check its ACL grants %s",
                ", ".join(refused),
                self.topics.subtree,
            )

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        parsed = parse_topic(message.topic)
        if parsed is None or (parsed[0], parsed[1]) != (self.topics.fleet, self.topics.device):
            log.warning("ignoring a message on %s", message.topic)
            return
        try:
            self._on_message_cb(parsed[2], bytes(message.payload))
        except Exception:  # a bug in a handler must not kill paho's network thread
            log.exception("handling a message on %s failed", message.topic)
