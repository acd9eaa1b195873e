"""The rollout decision (server/fleet/rollout.py): pure values in, state and actions out."""

from __future__ import annotations

from policies.rollout import RolloutSpec
from server.fleet.rollout import DeviceView, RolloutState, decide, health_problem, start_rollout

DEVICES = ["d3", "d1", "d2", "d0", "d4"]
SPEC = RolloutSpec.model_validate(
    {
        "canary": {"devices": 1},
        "health": {"maxErrorRate": 0.1, "maxP95LatencyMs": 100, "minSamples": 5},
        "soakTime": 30,
        "batchSize": 2,
        "timeout": 600,
    }
)


def ok(deployment: str = "dep-2", **kw: object) -> DeviceView:
    values: dict[str, object] = {
        "version": "2",
        "deployment_id": deployment,
        "phase": "SUCCEEDED",
        "error_rate": 0.0,
        "p95_latency_ms": 20.0,
        "samples": 10,
    }
    values.update(kw)
    return DeviceView(**values)  # type: ignore[arg-type]


def run_to_soak() -> tuple[RolloutState, dict[str, DeviceView]]:
    state = start_rollout("dep-2", DEVICES, SPEC, now=0.0)
    state, actions = decide(state, {}, SPEC, now=1.0)
    assert [(a.kind, a.devices) for a in actions] == [("desire", ("d0",))]
    views = {"d0": ok()}
    state, actions = decide(state, views, SPEC, now=2.0)
    assert state.stage == "soak" and actions == []
    return state, views


def test_canary_then_soak_then_batches_then_done() -> None:
    state, views = run_to_soak()
    state, actions = decide(state, views, SPEC, now=20.0)
    assert state.stage == "soak" and actions == [], "the soak time is not over"
    state, actions = decide(state, views, SPEC, now=33.0)
    assert state.stage == "batches"
    state, actions = decide(state, views, SPEC, now=34.0)
    assert [(a.kind, a.devices) for a in actions] == [("desire", ("d1", "d2"))]
    state, actions = decide(state, views, SPEC, now=35.0)
    assert actions == [], "the batch has not reported yet"
    views |= {"d1": ok(), "d2": ok()}
    state, actions = decide(state, views, SPEC, now=36.0)
    assert [(a.kind, a.devices) for a in actions] == [("desire", ("d3", "d4"))]
    views |= {"d3": ok(), "d4": ok()}
    state, actions = decide(state, views, SPEC, now=37.0)
    assert state.stage == "succeeded" and [a.kind for a in actions] == ["done"]
    assert decide(state, views, SPEC, now=38.0) == (state, [])


def test_a_failed_canary_halts_and_rolls_back() -> None:
    state = start_rollout("dep-2", DEVICES, SPEC, now=0.0)
    state, _ = decide(state, {}, SPEC, now=1.0)
    views = {"d0": DeviceView(deployment_id="dep-2", phase="FAILED", error="health check failed")}
    state, actions = decide(state, views, SPEC, now=2.0)
    assert state.stage == "halted" and state.rolled_back
    assert [(a.kind, a.devices) for a in actions] == [("rollback", ("d0",)), ("halt", ())]
    assert "health check failed" in actions[-1].reason


def test_bad_health_during_the_soak_halts() -> None:
    state, _ = run_to_soak()
    state, actions = decide(state, {"d0": ok(p95_latency_ms=250.0)}, SPEC, now=10.0)
    assert state.stage == "halted"
    assert actions[0].kind == "rollback" and "p95 latency 250.0 ms > 100 ms" in state.reason


def test_health_is_judged_only_after_enough_samples() -> None:
    assert health_problem(ok(error_rate=0.9, samples=4), SPEC) is None
    assert health_problem(ok(error_rate=0.9, samples=5), SPEC) == "error rate 0.900 > 0.1"


def test_reports_of_another_deployment_do_not_count() -> None:
    state = start_rollout("dep-2", DEVICES, SPEC, now=0.0)
    state, _ = decide(state, {}, SPEC, now=1.0)
    old = {"d0": ok(deployment="dep-1", phase="FAILED")}
    state, actions = decide(state, old, SPEC, now=2.0)
    assert state.stage == "canary" and actions == []


def test_without_rollback_a_failure_only_halts() -> None:
    spec = SPEC.model_copy(
        update={"rollback": SPEC.rollback.model_copy(update={"automatic": False})}
    )
    state = start_rollout("dep-2", DEVICES, spec, now=0.0)
    state, _ = decide(state, {}, spec, now=1.0)
    state, actions = decide(state, {"d0": ok(phase="FAILED")}, spec, now=2.0)
    assert [a.kind for a in actions] == ["halt"] and not state.rolled_back


def test_timeout_halts_and_no_canary_goes_straight_to_batches() -> None:
    state = start_rollout("dep-2", DEVICES, SPEC, now=0.0)
    state, _ = decide(state, {}, SPEC, now=1.0)
    state, actions = decide(state, {}, SPEC, now=601.0)
    assert state.stage == "halted" and "timed out" in state.reason
    no_canary = SPEC.model_copy(update={"canary": SPEC.canary.model_copy(update={"devices": 0})})
    state = start_rollout("dep-2", DEVICES, no_canary, now=0.0)
    assert state.stage == "batches"
    _, actions = decide(state, {}, no_canary, now=1.0)
    assert [(a.kind, a.devices) for a in actions] == [("desire", ("d0", "d1"))]
