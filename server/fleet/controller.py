"""The fleet controller: the operator's MQTT side of a rollout, and the fleet's status.

I/O only; the decisions are server/fleet/rollout.py's. The controller keeps the latest ``reported``,
``status`` and ``telemetry`` of every device of a fleet (messages from an earlier life of a
device, by its birth sequence, are dropped), publishes each device's retained ``desired``
document when the rollout says so, and, on a rollback, publishes again the desired document the
device had before the rollout (also retained, so a device that restarts converges to it), or,
when it had none, a ``rollback`` command. The topic and payload contract is
``edge_agent.protocol``, the one module of the agent the coordinator may import.

The operator's broker account needs read and write on ``fedge/v1/<fleet>/#``; devices are
confined to their own subtree by the broker's ACL, so only the operator can set a device's
desired state.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.protocol import (
    Channel,
    Command,
    CommandMessage,
    DesiredState,
    ProtocolError,
    Replica,
    ReportedState,
    StatusMessage,
    TelemetryMessage,
    decode,
    device_topics,
    fleet_filter,
    parse_topic,
    utc_now,
)
from fedge.errors import EdgeError, UsageError
from fedge.logs import get_logger
from fedge.replica_urls import DOCUMENT_FIELDS
from policies.rollout import RolloutSpec
from server.fleet.rollout import Action, DeviceView, RolloutState, decide, start_rollout

__all__ = [
    "BrokerEndpoint",
    "DeviceRecord",
    "FleetClient",
    "desired_for_artifact",
    "fleet_snapshot",
    "run_rollout",
]

log = get_logger(__name__)


@dataclass(frozen=True)
class BrokerEndpoint:
    """How the operator reaches the broker: TLS against ``ca_file``, its own account."""

    host: str
    port: int
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = True


@dataclass
class DeviceRecord:
    """Everything the controller knows about one device."""

    device: str
    desired: DesiredState | None = None
    reported: ReportedState | None = None
    status: StatusMessage | None = None
    telemetry: TelemetryMessage | None = None
    birth_seq: int = -1
    last_seen: datetime | None = None

    def view(self) -> DeviceView:
        reported = self.reported
        if reported is None:
            return DeviceView(online=self._online())
        health = reported.health
        return DeviceView(
            version=reported.current.version if reported.current else None,
            deployment_id=reported.deployment_id,
            phase=reported.phase.value if reported.phase else None,
            error=reported.error,
            error_rate=health.error_rate if health.samples else None,
            p95_latency_ms=health.p95_ms,
            samples=health.samples,
            online=self._online(),
        )

    def _online(self) -> bool:
        return self.status is not None and self.status.state.value == "online"


def desired_for_artifact(
    artifact_dir: Path, urls: Mapping[str, Any], *, deployment_id: str | None = None
) -> DesiredState:
    """The desired document for a signed artifact folder and its replica URLs.

    ``urls`` is what ``fedge place urls`` writes: ``{"artifact", "version", "replicas"}``. The
    manifest's SHA-256 is taken from the local folder's exact bytes, which the devices compare
    before they download anything else.
    """
    manifest_path = artifact_dir / "manifest.json"
    try:
        raw = manifest_path.read_bytes()
        manifest = json.loads(raw)
    except OSError as exc:
        raise UsageError(f"--artifact {artifact_dir}: cannot read manifest.json") from exc
    except ValueError as exc:
        raise UsageError(f"{manifest_path}: not JSON ({exc})") from exc
    name, version = str(manifest.get("name", "")), str(manifest.get("version", ""))
    artifact_key, version_key, replicas_key = DOCUMENT_FIELDS
    if (urls.get(artifact_key), urls.get(version_key)) != (name, version):
        raise UsageError(
            f"--urls names {urls.get(artifact_key)} {urls.get(version_key)}, "
            f"but the artifact is {name} {version}"
        )
    replicas = urls.get(replicas_key)
    if not isinstance(replicas, list) or not replicas:
        raise UsageError("--urls: no replica URLs (is the artifact placed? fedge place apply)")
    try:
        return DesiredState(
            deployment_id=deployment_id or f"{name}-{version}-{uuid.uuid4().hex[:8]}",
            artifact=name,
            version=version,
            manifest_sha256=hashlib.sha256(raw).hexdigest(),
            replicas=[Replica.model_validate(r) for r in replicas],
            issued_at=utc_now(),
        )
    except ValueError as exc:
        raise UsageError(f"--urls: not a valid deployment ({exc})") from exc


class FleetClient:
    """A connected operator client that mirrors one fleet's device shadows."""

    def __init__(self, broker: BrokerEndpoint, fleet: str, *, client_id: str | None = None) -> None:
        self.fleet = fleet
        self.devices: dict[str, DeviceRecord] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._changed = threading.Event()  # a device's reported or status document moved
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
        self._broker = broker

    def __enter__(self) -> FleetClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self, *, timeout: float = 15.0) -> None:
        where = f"{self._broker.host}:{self._broker.port}"
        try:
            self._client.connect(self._broker.host, self._broker.port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            raise EdgeError(f"broker {where}: cannot connect ({exc})") from exc
        self._client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise EdgeError(f"broker {where}: no connection within {timeout:g} s")
        if self._error is not None:
            self.close()
            raise EdgeError(f"broker {where}: {self._error}")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._error = f"connection refused ({reason})"
        else:
            for channel in (Channel.DESIRED, Channel.REPORTED, Channel.STATUS, Channel.TELEMETRY):
                client.subscribe(fleet_filter(channel, fleet=self.fleet), qos=1)
        self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        parsed = parse_topic(message.topic)
        if parsed is None or parsed[0] != self.fleet or not message.payload:
            return
        _, device, channel = parsed
        try:
            self._record(device, channel, bytes(message.payload))
        except ProtocolError as exc:
            log.warning("%s: ignoring a malformed message: %s", message.topic, exc)

    def _record(self, device: str, channel: Channel, payload: bytes) -> None:
        with self._lock:
            record = self.devices.setdefault(device, DeviceRecord(device))
            if channel is Channel.DESIRED:
                record.desired = decode(DesiredState, payload, channel=channel.value)
                return
            doc: ReportedState | StatusMessage | TelemetryMessage
            if channel is Channel.REPORTED:
                doc = decode(ReportedState, payload, channel=channel.value)
            elif channel is Channel.STATUS:
                doc = decode(StatusMessage, payload, channel=channel.value)
            elif channel is Channel.TELEMETRY:
                doc = decode(TelemetryMessage, payload, channel=channel.value)
            else:
                return
            seq = doc.birth_seq
            if seq < record.birth_seq:
                return  # from an earlier life of the device: stale
            record.birth_seq = seq
            record.last_seen = doc.ts
            if isinstance(doc, ReportedState):
                record.reported = doc
                self._changed.set()
            elif isinstance(doc, StatusMessage):
                record.status = doc
                self._changed.set()
            elif isinstance(doc, TelemetryMessage):
                record.telemetry = doc

    def wait_for_change(self, timeout: float) -> bool:
        """Block until a device's ``reported`` or ``status`` changes (True) or ``timeout``."""
        changed = self._changed.wait(max(0.0, timeout))
        self._changed.clear()
        return changed

    def snapshot(self) -> dict[str, DeviceRecord]:
        with self._lock:
            return {name: _copy(record) for name, record in self.devices.items()}

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

    def desire(self, device: str, desired: DesiredState) -> None:
        self.publish(device_topics(self.fleet, device).desired, desired.to_json(), retain=True)

    def desire_all(self, desired: Mapping[str, DesiredState]) -> None:
        """Publish each device's retained desired document, all in flight at once."""
        messages = [
            (device_topics(self.fleet, device).desired, document.to_json())
            for device, document in desired.items()
        ]
        self.publish_many(messages, retain=True)

    def command(self, device: str, command: Command) -> None:
        message = CommandMessage(command=command, request_id=uuid.uuid4().hex)
        self.publish(device_topics(self.fleet, device).cmd, message.to_json(), retain=False)


def _copy(record: DeviceRecord) -> DeviceRecord:
    return DeviceRecord(
        device=record.device,
        desired=record.desired,
        reported=record.reported,
        status=record.status,
        telemetry=record.telemetry,
        birth_seq=record.birth_seq,
        last_seen=record.last_seen,
    )


def fleet_snapshot(
    broker: BrokerEndpoint, fleet: str, *, settle: float = 1.0
) -> dict[str, DeviceRecord]:
    """Every device of ``fleet`` the broker holds retained state for, as of now."""
    with FleetClient(broker, fleet) as connection:
        time.sleep(settle)  # retained messages arrive right after the subscription
        return connection.snapshot()


def _carry_out(
    connection: FleetClient,
    action: Action,
    desired: DesiredState,
    previous: Mapping[str, DesiredState | None],
) -> None:
    if action.kind == "desire":
        connection.desire_all(dict.fromkeys(action.devices, desired))
    elif action.kind == "rollback":
        restore = {d: before for d in action.devices if (before := previous.get(d)) is not None}
        connection.desire_all(restore)
        for device in action.devices:
            if device not in restore:
                connection.command(device, Command.ROLLBACK)


def run_rollout(
    broker: BrokerEndpoint,
    fleet: str,
    desired: DesiredState,
    spec: RolloutSpec,
    *,
    devices: Iterable[str] | None = None,
    discover: float = 2.0,
    poll: float = 0.5,
    settle: float = 0.05,
    on_step: Callable[[RolloutState, list[Action]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> RolloutState:
    """Roll ``desired`` out to the fleet under ``spec``; returns the final state.

    ``devices`` defaults to every device of the fleet that has retained state on the broker
    after ``discover`` seconds (its status, or a reported document). The decision is taken again
    as soon as a device reports (at most every ``settle`` seconds, so a burst of reports from a
    large batch costs one decision, not one each), at the end of the soak, and at least every
    ``poll`` seconds (for the timeout).
    """
    with FleetClient(broker, fleet) as connection:
        time.sleep(discover)
        known = connection.snapshot()
        chosen = sorted(devices) if devices is not None else sorted(known)
        if not chosen:
            raise UsageError(f"fleet {fleet!r}: no devices known to the broker")
        previous = {d: known[d].desired if d in known else None for d in chosen}
        state = start_rollout(desired.deployment_id, chosen, spec, now=clock())
        while True:
            views = {name: record.view() for name, record in connection.snapshot().items()}
            stage = state.stage
            state, actions = decide(state, views, spec, now=clock())
            for action in actions:
                _carry_out(connection, action, desired, previous)
            if on_step is not None and (actions or state.finished):
                on_step(state, actions)
            if state.finished:
                return state
            if actions or state.stage == stage:  # a new stage is judged at once
                wait = poll
                if state.stage == "soak":
                    wait = min(wait, state.stage_started + spec.soak_time - clock())
                connection.wait_for_change(wait)
                time.sleep(settle)
