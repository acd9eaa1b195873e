"""The rollout decision: canary first, soak, then batches; halt and roll back on bad health.

Pure logic, as Flower keeps strategies apart from the network: :func:`decide` takes the rollout's
state, what every device last reported and the time, and returns the new state and the actions
the fleet controller (server/fleet/controller.py) must carry out over MQTT. Nothing here waits,
sleeps or talks to a broker, so every branch is tested with plain values.

The stages follow AWS IoT Greengrass's and Azure IoT Edge's deployments: the canary group gets the
new desired state first; once every canary reports ``SUCCEEDED`` on the new version, its health is
watched for the soak time (error rate and p95 latency against the RolloutPolicy, judged only once
a device has served ``minSamples`` inferences); then the rest follows in batches, each waiting for
success and health before the next. A canary that fails (phase ``FAILED`` or ``ROLLED_BACK``, or
health over a threshold) halts the rollout, and with automatic rollback every device that got the
new version is pointed back at the previous deployment. The overall timeout halts too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from policies.rollout import RolloutSpec

__all__ = [
    "Action",
    "DeviceView",
    "RolloutState",
    "decide",
    "health_problem",
    "start_rollout",
]

Stage = Literal["canary", "soak", "batches", "succeeded", "halted"]
SUCCEEDED = "SUCCEEDED"
FAILED_PHASES = frozenset({"FAILED", "ROLLED_BACK"})


@dataclass(frozen=True)
class DeviceView:
    """What a device last said about itself (its retained ``reported`` plus telemetry)."""

    version: str | None = None
    deployment_id: str | None = None
    phase: str | None = None
    error: str | None = None
    error_rate: float | None = None
    p95_latency_ms: float | None = None
    samples: int = 0
    online: bool = True


@dataclass(frozen=True)
class Action:
    """``desire``: publish ``deployment`` as the device's desired state; ``halt``: stop here."""

    kind: Literal["desire", "rollback", "halt", "done"]
    devices: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class RolloutState:
    deployment_id: str
    devices: tuple[str, ...]
    canary: tuple[str, ...]
    stage: Stage = "canary"
    started: float = 0.0
    stage_started: float = 0.0
    updated: tuple[str, ...] = ()  # devices whose desired state names the new deployment
    reason: str = ""
    rolled_back: bool = False

    @property
    def finished(self) -> bool:
        return self.stage in ("succeeded", "halted")


def start_rollout(
    deployment_id: str, devices: Sequence[str], spec: RolloutSpec, *, now: float
) -> RolloutState:
    """The initial state: the first ``canary.devices`` devices (sorted by id) are the canary."""
    ordered = tuple(sorted(set(devices)))
    canary = ordered[: min(spec.canary.devices, len(ordered))]
    stage: Stage = "canary" if canary else "batches"
    return RolloutState(
        deployment_id=deployment_id,
        devices=ordered,
        canary=canary,
        stage=stage,
        started=now,
        stage_started=now,
    )


def health_problem(view: DeviceView, spec: RolloutSpec) -> str | None:
    """Why a device's health fails the policy, or None (also None before enough samples)."""
    health = spec.health
    if view.samples < health.min_samples:
        return None
    if view.error_rate is not None and view.error_rate > health.max_error_rate:
        return f"error rate {view.error_rate:.3f} > {health.max_error_rate:g}"
    if view.p95_latency_ms is not None and view.p95_latency_ms > health.max_p95_latency_ms:
        return f"p95 latency {view.p95_latency_ms:.1f} ms > {health.max_p95_latency_ms:g} ms"
    return None


def _on_new(view: DeviceView | None, deployment_id: str) -> bool:
    return view is not None and view.deployment_id == deployment_id and view.phase == SUCCEEDED


def _failure(
    devices: Sequence[str],
    views: Mapping[str, DeviceView],
    deployment_id: str,
    spec: RolloutSpec,
) -> str | None:
    for device in devices:
        view = views.get(device)
        if view is None or view.deployment_id != deployment_id:
            continue
        if view.phase in FAILED_PHASES:
            return f"{device}: {view.phase}" + (f" ({view.error})" if view.error else "")
        if view.phase == SUCCEEDED and (problem := health_problem(view, spec)):
            return f"{device}: {problem}"
    return None


def _halt(state: RolloutState, spec: RolloutSpec, reason: str) -> tuple[RolloutState, list[Action]]:
    actions = [Action("halt", reason=reason)]
    rolled_back = bool(spec.rollback.automatic and state.updated)
    if rolled_back:
        actions.insert(0, Action("rollback", devices=state.updated, reason=reason))
    return replace(state, stage="halted", reason=reason, rolled_back=rolled_back), actions


Step = tuple[RolloutState, list[Action]]


def _canary(
    state: RolloutState, views: Mapping[str, DeviceView], spec: RolloutSpec, now: float
) -> Step:
    if not state.updated:
        return replace(state, updated=state.canary), [Action("desire", devices=state.canary)]
    if all(_on_new(views.get(d), state.deployment_id) for d in state.canary):
        return replace(state, stage="soak", stage_started=now), []
    return state, []


def _soak(
    state: RolloutState, views: Mapping[str, DeviceView], spec: RolloutSpec, now: float
) -> Step:
    if now - state.stage_started >= spec.soak_time:
        return replace(state, stage="batches", stage_started=now), []
    return state, []


def _batches(
    state: RolloutState, views: Mapping[str, DeviceView], spec: RolloutSpec, now: float
) -> Step:
    # the devices already updated first, then the next batch
    if not all(_on_new(views.get(d), state.deployment_id) for d in state.updated):
        return state, []
    rest = [d for d in state.devices if d not in state.updated]
    if not rest:
        done = replace(state, stage="succeeded", reason="every device runs the new version")
        return done, [Action("done")]
    batch = tuple(rest[: spec.batch_size])
    return replace(state, updated=state.updated + batch, stage_started=now), [
        Action("desire", devices=batch)
    ]


_STAGES = {"canary": _canary, "soak": _soak, "batches": _batches}


def decide(
    state: RolloutState,
    views: Mapping[str, DeviceView],
    spec: RolloutSpec,
    *,
    now: float,
) -> Step:
    """One step of the rollout: the next state and what to publish now."""
    if state.finished:
        return state, []
    if now - state.started > spec.timeout:
        return _halt(state, spec, f"timed out after {spec.timeout:g} s in stage {state.stage}")
    if (reason := _failure(state.updated, views, state.deployment_id, spec)) is not None:
        return _halt(state, spec, reason)
    return _STAGES[state.stage](state, views, spec, now)
