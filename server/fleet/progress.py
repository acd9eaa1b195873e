"""A rollout's progress: the lines an operator reads, and the retained document that carries them.

Why a document on the broker: ``fedge deploy`` may return at once (``--detach``) and a second
operator terminal must see the same progress, so the controller keeps its rollout's state where
everyone with the operator account already looks, retained on
``fedge/v1/<fleet>/_rollout/<deployment id>`` (an operator-only level, see
``edge_agent.protocol.ROLLOUT_LEVEL``). The document holds the stage, every device's phase and
health, the soak's end, who runs the rollout, and the last :data:`MAX_EVENTS` progress lines,
numbered, so a reader that joins late prints the history and then only what is new.

Pure: :class:`ProgressTracker` turns what the controller saw in one step (the rollout state, the
devices' views, the actions) into progress events and the document; it neither sleeps nor talks
to a broker, so it is tested with plain values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from pydantic import AwareDatetime, BaseModel, Field

from edge_agent.protocol import (
    ROLLOUT_LEVEL,
    TOPIC_ROOT,
    DesiredState,
    Payload,
    utc_now,
)
from policies.rollout import RolloutSpec
from server.fleet.rollout import SUCCEEDED, Action, DeviceView, RolloutState

__all__ = [
    "MAX_EVENTS",
    "ControllerInfo",
    "DeviceProgress",
    "ProgressEvent",
    "ProgressTracker",
    "RolloutDocument",
    "countdown_every",
    "health_figures",
    "parse_rollout_topic",
    "rollout_filter",
    "rollout_topic",
]

MAX_EVENTS = 200  # lines kept in the retained document for a reader that joins late
FAILED_PHASES = frozenset({"FAILED", "ROLLED_BACK"})


def rollout_topic(fleet: str, deployment_id: str) -> str:
    return f"{TOPIC_ROOT}/{fleet}/{ROLLOUT_LEVEL}/{deployment_id}"


def rollout_filter(fleet: str | None = None) -> str:
    """Every rollout document of ``fleet`` (or of every fleet)."""
    return f"{TOPIC_ROOT}/{fleet or '+'}/{ROLLOUT_LEVEL}/+"


def parse_rollout_topic(topic: str) -> tuple[str, str] | None:
    """``(fleet, deployment id)`` of a rollout topic, or None for any other topic."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != TOPIC_ROOT or parts[3] != ROLLOUT_LEVEL:
        return None
    return parts[2], parts[4]


class _Part(BaseModel):
    model_config = Payload.model_config


class DeviceProgress(_Part):
    """One device as the controller last saw it; ``phase`` is of this rollout's deployment."""

    phase: str | None = None
    version: str | None = None
    error: str | None = None
    error_rate: float | None = None
    p95_ms: float | None = None
    samples: int = 0
    online: bool = False


class ProgressEvent(_Part):
    """One progress line; ``seq`` counts from 1 over the whole rollout."""

    seq: int = Field(ge=1)
    at: AwareDatetime
    kind: str
    text: str


class ControllerInfo(_Part):
    """The process that carries the rollout out (a detached one logs to ``log``)."""

    pid: int
    host: str
    log: str | None = None


class RolloutDocument(Payload):
    """The retained state of one rollout (the operator's business only)."""

    fleet: str
    deployment_id: str
    artifact: str
    version: str
    stage: str
    reason: str = ""
    rolled_back: bool = False
    stopped: str | None = None  # why the controller ended before the rollout did
    devices: list[str]
    canary: list[str]
    updated: list[str]
    batch: int = 0
    batches: int = 0
    soak_seconds: float
    soak_ends_at: AwareDatetime | None = None
    timeout_seconds: float
    started_at: AwareDatetime
    updated_at: AwareDatetime
    controller: ControllerInfo
    device_states: dict[str, DeviceProgress] = Field(default_factory=dict)
    events: list[ProgressEvent] = Field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.stage in ("succeeded", "halted")

    @property
    def active(self) -> bool:
        """Whether a controller is (as far as the document says) still carrying it out."""
        return not self.finished and self.stopped is None

    def soak_left(self, now: datetime) -> float | None:
        if self.stage != "soak" or self.soak_ends_at is None:
            return None
        return max(0.0, (self.soak_ends_at - now).total_seconds())

    def silent_for(self, now: datetime) -> float:
        """Seconds since the controller last wrote the document."""
        return max(0.0, (now - self.updated_at).total_seconds())

    def succeeded_devices(self) -> int:
        return sum(1 for s in self.device_states.values() if s.phase == SUCCEEDED)

    def state_text(self, now: datetime, *, stale_after: float) -> str:
        """The stage in words: ``soak (4 s left)``, ``batches (2/3)``, ``halted``, ``stopped``."""
        if self.stopped is not None:
            return f"stopped in {self.stage}"
        text = self.stage
        if (left := self.soak_left(now)) is not None:
            text += f" ({math.ceil(left)} s left)"
        elif self.stage == "batches" and self.batches:
            text += f" ({self.batch}/{self.batches})"
        if self.active and self.silent_for(now) > stale_after:
            text += f", controller silent for {self.silent_for(now):.0f} s"
        return text


def health_figures(view: DeviceView | DeviceProgress) -> str:
    """``error rate 0.000, p95 3.1 ms, 12 samples``: the figures the rollout judges."""
    rate = view.error_rate
    p95 = view.p95_latency_ms if isinstance(view, DeviceView) else view.p95_ms
    return ", ".join(
        (
            f"error rate {rate:.3f}" if rate is not None else "error rate n/a",
            f"p95 {p95:.1f} ms" if p95 is not None else "p95 n/a",
            f"{view.samples} samples",
        )
    )


def countdown_every(soak_time: float) -> float:
    """Seconds between soak countdown lines: a few per soak, at most every 5 s, at least 1 s."""
    return min(5.0, max(1.0, soak_time / 3))


def _seconds(value: float) -> str:
    return f"{value:g} s" if value < 120 else f"{value / 60:g} min"


class ProgressTracker:
    """Turns each step of a rollout into progress events, and the rollout's document."""

    def __init__(
        self,
        fleet: str,
        desired: DesiredState,
        spec: RolloutSpec,
        *,
        controller: ControllerInfo,
        wall: Callable[[], datetime] = utc_now,
    ) -> None:
        self.fleet = fleet
        self.desired = desired
        self.spec = spec
        self.controller = controller
        self._wall = wall
        self.events: list[ProgressEvent] = []
        self._seq = 0
        self._stage: str | None = None
        self._batch = 0
        self._batches = 0
        self._seen: dict[str, tuple[str | None, bool]] = {}
        self._views: dict[str, DeviceView] = {}
        self._started_at = wall()
        self._soak_ends_at: datetime | None = None
        self._next_tick = 0.0

    def _emit(self, kind: str, text: str) -> ProgressEvent:
        self._seq += 1
        event = ProgressEvent(seq=self._seq, at=self._wall(), kind=kind, text=text)
        self.events.append(event)
        del self.events[:-MAX_EVENTS]
        return event

    def observe(
        self,
        state: RolloutState,
        views: Mapping[str, DeviceView],
        actions: Sequence[Action],
        *,
        now: float,
    ) -> list[ProgressEvent]:
        """The events of one step: ``views`` is what :func:`decide` judged, ``actions`` its
        answer, ``state`` the state after it, ``now`` the controller's (monotonic) clock."""
        first = len(self.events)
        version = self.desired.version
        if self._stage is None:
            rest = len(state.devices) - len(state.canary)
            self._batches = math.ceil(rest / self.spec.batch_size) if rest > 0 else 0
            canary = ", ".join(state.canary) or "none"
            self._emit(
                "start",
                f"rollout {state.deployment_id}: {self.desired.artifact} {version} to "
                f"{len(state.devices)} device(s); canary {canary}, soak "
                f"{_seconds(self.spec.soak_time)}, then batches of {self.spec.batch_size}",
            )
        self._views = {d: views[d] for d in state.devices if d in views}
        self._device_changes(state)
        if self._stage is not None and state.stage != self._stage:
            self._stage_change(self._stage, state, now)
        self._stage = state.stage
        for action in actions:
            self._action(action, state)
        if state.stage == "soak" and now >= self._next_tick:
            self._countdown(state, now)
        return self.events[first:] if first < len(self.events) else []

    def _device_changes(self, state: RolloutState) -> None:
        for device in state.devices:
            view = self._views.get(device)
            if view is None:
                continue
            ours = view.deployment_id == state.deployment_id
            key = (view.phase if ours else None, view.online)
            before = self._seen.get(device)
            self._seen[device] = key
            if before is None or before == key:
                continue
            if before[1] != key[1]:
                self._emit("device", f"{device}: {'online' if key[1] else 'offline'}")
            if before[0] != key[0] and key[0] is not None:
                self._emit("phase", f"{device}: {self._phase_text(view)}")

    def _phase_text(self, view: DeviceView) -> str:
        phase = view.phase or "?"
        if phase == SUCCEEDED:
            return f"{phase} on {view.version} ({health_figures(view)})"
        if phase in FAILED_PHASES and view.error:
            return f"{phase} ({view.error})"
        return phase

    def _figures(self, devices: Sequence[str]) -> str:
        parts = []
        for device in devices:
            view = self._views.get(device)
            parts.append(f"{device} {health_figures(view) if view else 'not reporting'}")
        return "; ".join(parts)

    def _stage_change(self, before: str, state: RolloutState, now: float) -> None:
        health = self.spec.health
        if state.stage == "soak":
            self._soak_ends_at = self._wall() + timedelta(seconds=self.spec.soak_time)
            self._next_tick = now
            self._emit(
                "stage",
                f"canary on {self.desired.version}: soak for {_seconds(self.spec.soak_time)} "
                f"(limits: error rate <= {health.max_error_rate:g}, p95 <= "
                f"{health.max_p95_latency_ms:g} ms, judged from {health.min_samples} samples)",
            )
        elif before == "soak" and state.stage == "batches":
            self._soak_ends_at = None
            self._emit("stage", f"soak over, canary healthy: {self._figures(state.canary)}")

    def _countdown(self, state: RolloutState, now: float) -> None:
        left = max(0.0, state.stage_started + self.spec.soak_time - now)
        self._emit("soak", f"soak: {math.ceil(left)} s left; {self._figures(state.canary)}")
        self._next_tick = now + countdown_every(self.spec.soak_time)

    def _action(self, action: Action, state: RolloutState) -> None:
        devices = ", ".join(action.devices)
        if action.kind == "desire":
            if self._batch == 0 and set(action.devices) <= set(state.canary):
                self._emit("canary", f"canary: {devices} -> {self.desired.version}")
            else:
                self._batch += 1
                self._emit(
                    "batch",
                    f"batch {self._batch}/{self._batches}: {devices} -> {self.desired.version}",
                )
        elif action.kind == "rollback":
            self._emit("rollback", f"rollback: {devices}")
        elif action.kind == "halt":
            undone = f"; rolled back {', '.join(state.updated)}" if state.rolled_back else ""
            self._emit("halted", f"rollout halted: {action.reason}{undone}")
        elif action.kind == "done":
            self._emit("succeeded", f"rollout succeeded: {state.reason}")

    def document(self, state: RolloutState, *, stopped: str | None = None) -> RolloutDocument:
        """The retained document as of the last :meth:`observe`."""
        states = {}
        for device in state.devices:
            view = self._views.get(device)
            if view is None:
                states[device] = DeviceProgress()
                continue
            ours = view.deployment_id == state.deployment_id
            states[device] = DeviceProgress(
                phase=view.phase if ours else None,
                version=view.version,
                error=view.error if ours else None,
                error_rate=view.error_rate,
                p95_ms=view.p95_latency_ms,
                samples=view.samples,
                online=view.online,
            )
        return RolloutDocument(
            fleet=self.fleet,
            deployment_id=state.deployment_id,
            artifact=self.desired.artifact,
            version=self.desired.version,
            stage=state.stage,
            reason=state.reason,
            rolled_back=state.rolled_back,
            stopped=stopped,
            devices=list(state.devices),
            canary=list(state.canary),
            updated=list(state.updated),
            batch=self._batch,
            batches=self._batches,
            soak_seconds=self.spec.soak_time,
            soak_ends_at=self._soak_ends_at if state.stage == "soak" else None,
            timeout_seconds=self.spec.timeout,
            started_at=self._started_at,
            updated_at=self._wall(),
            controller=self.controller,
            device_states=states,
            events=list(self.events),
        )
