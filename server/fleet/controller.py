"""The fleet controller: the operator's MQTT side of a rollout, and the fleet's status.

I/O only; the decisions are server/fleet/rollout.py's. The controller keeps the latest ``reported``,
``status`` and ``telemetry`` of every device of a fleet (messages from an earlier life of a
device, by its birth sequence, are dropped), publishes each device's retained ``desired``
document when the rollout says so, and, on a rollback, publishes again the desired document the
device had before the rollout (also retained, so a device that restarts converges to it), or,
when it had none, a ``rollback`` command. The topic and payload contract is
``edge_agent.protocol``, the one module of the agent the coordinator may import.

While it runs, the rollout reports progress line by line (``on_progress``) and keeps its state
retained on the operator-only ``fedge/v1/<fleet>/_rollout/<deployment id>`` topic
(:mod:`server.fleet.progress`), which is what ``fedge deploy status`` and ``--detach`` read; the
ten newest finished rollouts of a fleet are kept there, older ones are cleared. "Last seen" is
the newest of a device's own timestamps, not the time a retained copy reached this client.

The operator's broker account needs read and write on ``fedge/v1/<fleet>/#``; devices are
confined to their own subtree by the broker's ACL, so only the operator can set a device's
desired state.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from edge_agent.protocol import (
    DEPLOYMENT_ID,
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
from fedge.bounded import load_json, read_capped
from fedge.errors import EdgeError, UsageError
from fedge.logs import get_logger
from fedge.manifest import MAX_MANIFEST_BYTES
from fedge.replica_urls import DOCUMENT_FIELDS
from policies.rollout import RolloutSpec
from server.fleet.connection import BrokerConnection, BrokerEndpoint
from server.fleet.progress import (
    ControllerInfo,
    ProgressEvent,
    ProgressTracker,
    RolloutDocument,
    parse_rollout_topic,
    rollout_filter,
    rollout_topic,
)
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

KEEP_FINISHED_ROLLOUTS = 10  # retained rollout documents a fleet keeps for `fedge deploy status`


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

    def row(self) -> dict[str, Any]:
        """The device as ``fedge fleet status`` lists it (``-o json`` items, camelCase)."""
        reported = self.reported
        health = reported.health if reported else None
        return {
            "device": self.device,
            "online": self._online(),
            "desired": self.desired.version if self.desired else None,
            "reported": reported.current.version if reported and reported.current else None,
            "phase": reported.phase.value if reported and reported.phase else None,
            "error": reported.error if reported else None,
            "samples": health.samples if health else 0,
            "errorRate": health.error_rate if health else None,
            "p50Ms": health.p50_ms if health else None,
            "p95Ms": health.p95_ms if health else None,
            "lastSeen": self.last_seen.isoformat() if self.last_seen else None,
        }

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
    raw = read_capped(manifest_path, limit=MAX_MANIFEST_BYTES, what="a manifest")
    manifest = load_json(raw, source=str(manifest_path), max_depth=8)
    if not isinstance(manifest, dict):
        raise UsageError(f"{manifest_path}: not a JSON object")
    name, version = str(manifest.get("name", "")), str(manifest.get("version", ""))
    artifact_key, version_key, replicas_key = DOCUMENT_FIELDS
    if (urls.get(artifact_key), urls.get(version_key)) != (name, version):
        raise UsageError(
            f"--urls names {urls.get(artifact_key)} {urls.get(version_key)}, "
            f"but the artifact is {name} {version}"
        )
    if deployment_id is not None and not re.fullmatch(DEPLOYMENT_ID, deployment_id):
        raise UsageError(
            f"--deployment-id {deployment_id!r}: letters, digits, '_', '.', ':', '-' (up to 128)"
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


class FleetClient(BrokerConnection):
    """A connected operator client that mirrors one fleet's device shadows."""

    def __init__(self, broker: BrokerEndpoint, fleet: str, *, client_id: str | None = None) -> None:
        super().__init__(broker, client_id=client_id)
        self.fleet = fleet
        self.devices: dict[str, DeviceRecord] = {}
        self._lock = threading.Lock()
        self._changed = threading.Event()  # a device's reported or status document moved
        # the fleet's finished rollouts: deployment id -> when it started (for pruning)
        self.finished_rollouts: dict[str, datetime] = {}

    def __enter__(self) -> FleetClient:
        self.connect()
        return self

    def filters(self) -> list[str]:
        channels = (Channel.DESIRED, Channel.REPORTED, Channel.STATUS, Channel.TELEMETRY)
        return [fleet_filter(c, fleet=self.fleet) for c in channels] + [rollout_filter(self.fleet)]

    def handle(self, topic: str, payload: bytes) -> None:
        if (rollout := parse_rollout_topic(topic)) is not None:
            self._note_rollout(rollout[1], payload)
            return
        parsed = parse_topic(topic)
        if parsed is None or parsed[0] != self.fleet or not payload:
            return
        _, device, channel = parsed
        try:
            self._record(device, channel, payload)
        except ProtocolError as exc:
            log.warning("%s: ignoring a malformed message: %s", topic, exc)

    def _note_rollout(self, deployment_id: str, payload: bytes) -> None:
        with self._lock:
            self.finished_rollouts.pop(deployment_id, None)
            if not payload:
                return
            try:
                document = decode(RolloutDocument, payload, channel="rollout")
            except ProtocolError:
                return  # not ours to judge; a newer controller may have written it
            if document.finished or document.stopped is not None:
                self.finished_rollouts[deployment_id] = document.started_at

    def forget_rollouts(self, *, keep: int) -> list[str]:
        """Clear the retained documents of all but the ``keep`` newest finished rollouts."""
        with self._lock:
            ordered = sorted(self.finished_rollouts, key=self.finished_rollouts.__getitem__)
        old = ordered[: max(0, len(ordered) - keep)]
        self.publish_many([(rollout_topic(self.fleet, d), b"") for d in old], retain=True)
        return old

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
            if seq > record.birth_seq:
                record.last_seen = None  # a new life: its own clock may have been reset
            record.birth_seq = seq
            # The device's own latest timestamp, whatever order the retained documents arrive
            # in: an ``offline`` will carries the time of the connection it was set at, older
            # than the last ``reported``, and must not pull "last seen" back.
            if record.last_seen is None or doc.ts > record.last_seen:
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

    def record_rollout(self, document: RolloutDocument) -> None:
        """Publish a rollout's progress, retained, on the operator-only rollout topic."""
        topic = rollout_topic(self.fleet, document.deployment_id)
        self.publish(topic, document.to_json(), retain=True)


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


class _Recorder:
    """Keeps the rollout's retained document current without publishing at every decision:
    at once for a new stage, a published action or the end; at most every ``every`` seconds for
    device events; and every ``heartbeat`` seconds regardless, so a reader can tell a live
    controller (a fresh ``updatedAt``) from one that is gone."""

    def __init__(
        self,
        connection: FleetClient,
        tracker: ProgressTracker,
        clock: Callable[[], float],
        *,
        every: float = 0.5,
        heartbeat: float = 5.0,
    ) -> None:
        self.connection = connection
        self.tracker = tracker
        self.clock = clock
        self.every = every
        self.heartbeat = heartbeat
        self._last: float | None = None
        self._pending = False

    def step(self, state: RolloutState, *, events: bool, urgent: bool) -> None:
        now = self.clock()
        self._pending = self._pending or events
        since = float("inf") if self._last is None else now - self._last
        if urgent or (self._pending and since >= self.every) or since >= self.heartbeat:
            self.connection.record_rollout(self.tracker.document(state))
            self._last, self._pending = now, False

    def stopped(self, state: RolloutState, why: str) -> None:
        """Best effort: say in the document that this controller ended before the rollout."""
        try:
            document = self.tracker.document(state, stopped=why)
            self.connection.publish(
                rollout_topic(self.connection.fleet, document.deployment_id),
                document.to_json(),
                retain=True,
                timeout=5.0,
            )
        except EdgeError as exc:
            log.warning("could not record that the rollout stopped: %s", exc)


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
    on_progress: Callable[[ProgressEvent], None] | None = None,
    controller: ControllerInfo | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> RolloutState:
    """Roll ``desired`` out to the fleet under ``spec``; returns the final state.

    ``devices`` defaults to every device of the fleet that has retained state on the broker
    after ``discover`` seconds (its status, or a reported document). The decision is taken again
    as soon as a device reports (at most every ``settle`` seconds, so a burst of reports from a
    large batch costs one decision, not one each), at the end of the soak, and at least every
    ``poll`` seconds (for the timeout and the soak countdown).

    Progress (stages, each device's phase, the health figures judged, the soak countdown) goes
    to ``on_progress`` line by line, and, with the rollout's state, into the retained rollout
    document (:mod:`server.fleet.progress`), where ``fedge deploy status`` reads it. If this
    function ends early (Ctrl-C, a broker that stays away), the document says so.
    """
    info = controller or ControllerInfo(pid=os.getpid(), host=socket.gethostname())
    tracker = ProgressTracker(fleet, desired, spec, controller=info)
    with FleetClient(broker, fleet) as connection:
        time.sleep(discover)
        known = connection.snapshot()
        chosen = sorted(devices) if devices is not None else sorted(known)
        if not chosen:
            raise UsageError(f"fleet {fleet!r}: no devices known to the broker")
        previous = {d: known[d].desired if d in known else None for d in chosen}
        connection.forget_rollouts(keep=KEEP_FINISHED_ROLLOUTS)
        state = start_rollout(desired.deployment_id, chosen, spec, now=clock())
        recorder = _Recorder(connection, tracker, clock)
        try:
            while True:
                views = {name: record.view() for name, record in connection.snapshot().items()}
                stage = state.stage
                state, actions = decide(state, views, spec, now=clock())
                events = tracker.observe(state, views, actions, now=clock())
                if on_progress is not None:
                    for event in events:
                        on_progress(event)
                for action in actions:
                    _carry_out(connection, action, desired, previous)
                urgent = bool(actions) or state.stage != stage or state.finished
                recorder.step(state, events=bool(events), urgent=urgent)
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
        except KeyboardInterrupt:
            recorder.stopped(state, "the controller was interrupted")
            raise
        except Exception as exc:
            recorder.stopped(state, f"the controller failed: {exc}")
            raise
