"""Rollout progress (server/fleet/progress.py) and "last seen" (the controller), with plain values.

The tracker turns each step of the rollout decision into the lines ``fedge deploy`` prints and
into the retained document ``fedge deploy status`` reads; the controller's device record keeps
the device's own newest timestamp whatever order the broker delivers retained documents in.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from edge_agent.protocol import (
    DesiredState,
    Health,
    Presence,
    Replica,
    ReportedState,
    StatusMessage,
    TelemetryMessage,
    parse_topic,
)
from policies.rollout import RolloutSpec
from server.fleet.connection import BrokerEndpoint
from server.fleet.controller import FleetClient
from server.fleet.progress import (
    ControllerInfo,
    ProgressTracker,
    RolloutDocument,
    parse_rollout_topic,
    rollout_filter,
    rollout_topic,
)
from server.fleet.rollout import DeviceView, decide, start_rollout

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
SPEC = RolloutSpec.model_validate(
    {
        "canary": {"devices": 1},
        "health": {"maxErrorRate": 0.1, "maxP95LatencyMs": 100, "minSamples": 2},
        "soakTime": 9,
        "batchSize": 2,
        "timeout": 600,
    }
)
DESIRED = DesiredState(
    deployment_id="dep-2",
    artifact="tiny-cls",
    version="2.0.0",
    manifest_sha256="0" * 64,
    replicas=[Replica(manifest="https://x/m", signature="https://x/s", files={"a": "https://x/a"})],
)


class Clock:
    """One clock for the rollout (monotonic seconds) and the wall (for the document)."""

    def __init__(self) -> None:
        self.t = 0.0

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.t)


def view(phase: str | None, *, deployment: str = "dep-2", samples: int = 3) -> DeviceView:
    return DeviceView(
        version="2.0.0" if phase == "SUCCEEDED" else "1.0.0",
        deployment_id=deployment,
        phase=phase,
        error_rate=0.0 if samples else None,
        p95_latency_ms=4.25 if samples else None,
        samples=samples,
    )


def test_the_tracker_reports_stages_phases_countdown_health_and_batches() -> None:
    clock = Clock()
    tracker = ProgressTracker(
        "lab", DESIRED, SPEC, controller=ControllerInfo(pid=1, host="h"), wall=clock.wall
    )
    devices = ["d1", "d2", "d3"]
    state = start_rollout("dep-2", devices, SPEC, now=0.0)
    lines: list[str] = []
    views = {d: view("SUCCEEDED", deployment="dep-1") for d in devices}

    def step(t: float) -> None:
        nonlocal state
        clock.t = t
        state, actions = decide(state, views, SPEC, now=t)
        lines.extend(e.text for e in tracker.observe(state, views, actions, now=t))

    step(0.0)
    assert lines == [
        "rollout dep-2: tiny-cls 2.0.0 to 3 device(s); canary d1, soak 9 s, then batches of 2",
        "canary: d1 -> 2.0.0",
    ]
    views["d1"] = view("DOWNLOADING")
    step(0.5)
    views["d1"] = view("SUCCEEDED")
    step(1.0)  # -> soak, judged at once
    step(1.0)
    assert lines[2:] == [
        "d1: DOWNLOADING",
        "d1: SUCCEEDED on 2.0.0 (error rate 0.000, p95 4.2 ms, 3 samples)",
        "canary on 2.0.0: soak for 9 s (limits: error rate <= 0.1, p95 <= 100 ms, "
        "judged from 2 samples)",
        "soak: 9 s left; d1 error rate 0.000, p95 4.2 ms, 3 samples",
    ]
    document = tracker.document(state)
    assert document.stage == "soak"
    assert document.soak_left(T0 + timedelta(seconds=4)) == 6.0
    assert document.state_text(T0 + timedelta(seconds=4), stale_after=15) == "soak (6 s left)"
    del lines[:]
    for t in (2.0, 3.0, 4.5, 7.0, 10.5):  # a countdown line every 3 s (a third of the soak)
        step(t)
    assert [line.split(";")[0] for line in lines] == [
        "soak: 6 s left",
        "soak over, canary healthy: d1 error rate 0.000, p95 4.2 ms, 3 samples",
    ]
    del lines[:]
    step(10.5)
    assert lines == ["batch 1/1: d2, d3 -> 2.0.0"]
    views["d2"] = views["d3"] = view("SUCCEEDED")
    step(11.0)
    assert lines[1:] == [
        "d2: SUCCEEDED on 2.0.0 (error rate 0.000, p95 4.2 ms, 3 samples)",
        "d3: SUCCEEDED on 2.0.0 (error rate 0.000, p95 4.2 ms, 3 samples)",
        "rollout succeeded: every device runs the new version",
    ]
    final = tracker.document(state)
    assert final.finished and not final.active and final.succeeded_devices() == 3
    assert [e.seq for e in final.events] == list(range(1, len(final.events) + 1))
    # The document survives its own wire format: what `fedge deploy status` reads back.
    again = RolloutDocument.from_json(final.to_json())
    assert again == final and again.batch == again.batches == 1


def test_a_failing_canary_is_one_halted_event_and_the_document_says_rolled_back() -> None:
    clock = Clock()
    tracker = ProgressTracker(
        "lab", DESIRED, SPEC, controller=ControllerInfo(pid=1, host="h"), wall=clock.wall
    )
    state = start_rollout("dep-2", ["d1", "d2"], SPEC, now=0.0)
    views = {"d1": view(None, deployment="dep-1"), "d2": view(None, deployment="dep-1")}
    state, actions = decide(state, views, SPEC, now=0.0)
    tracker.observe(state, views, actions, now=0.0)
    views["d1"] = DeviceView(deployment_id="dep-2", phase="FAILED", error="logits have shape")
    state, actions = decide(state, views, SPEC, now=1.0)
    events = tracker.observe(state, views, actions, now=1.0)
    assert [(e.kind, e.text) for e in events] == [
        ("phase", "d1: FAILED (logits have shape)"),
        ("rollback", "rollback: d1"),
        ("halted", "rollout halted: d1: FAILED (logits have shape); rolled back d1"),
    ]
    document = tracker.document(state)
    assert (document.stage, document.rolled_back, document.updated) == ("halted", True, ["d1"])
    stopped = tracker.document(state, stopped="the controller was interrupted")
    assert stopped.state_text(clock.wall(), stale_after=15) == "stopped in halted"


def test_a_silent_controller_shows_in_the_state_text() -> None:
    clock = Clock()
    tracker = ProgressTracker(
        "lab", DESIRED, SPEC, controller=ControllerInfo(pid=1, host="h"), wall=clock.wall
    )
    state = start_rollout("dep-2", ["d1", "d2"], SPEC, now=0.0)
    state, actions = decide(state, {}, SPEC, now=0.0)
    tracker.observe(state, {}, actions, now=0.0)
    document = tracker.document(state)
    assert document.state_text(T0 + timedelta(seconds=5), stale_after=15) == "canary"
    late = document.state_text(T0 + timedelta(seconds=40), stale_after=15)
    assert late == "canary, controller silent for 40 s"


def test_rollout_topics_are_under_the_fleet_and_never_a_device_topic() -> None:
    topic = rollout_topic("lab", "tiny-cls-2.0.0-ab12")
    assert topic == "fedge/v1/lab/_rollout/tiny-cls-2.0.0-ab12"
    assert parse_rollout_topic(topic) == ("lab", "tiny-cls-2.0.0-ab12")
    assert parse_topic(topic) is None  # no device is called "_rollout"
    assert parse_topic("fedge/v1/lab/_rollout/desired") is None
    assert parse_rollout_topic("fedge/v1/lab/dev-1/desired") is None
    assert rollout_filter() == "fedge/v1/+/_rollout/+"


def test_last_seen_is_the_devices_newest_timestamp_in_any_arrival_order() -> None:
    """Retained documents arrive in the broker's order: an ``offline`` will (stamped when its
    connection was made), the last ``reported``, maybe a telemetry message. "last seen" is the
    newest device time among them, whichever came last, and a new life starts it afresh."""
    connected, reported_at, telemetry_at = T0, T0 + timedelta(minutes=5), T0 + timedelta(minutes=4)
    status = StatusMessage(device_id="d1", state=Presence.OFFLINE, birth_seq=3, ts=connected)
    reported = ReportedState(
        device_id="d1", fleet="lab", birth_seq=3, ts=reported_at, health=Health(samples=1)
    )
    telemetry = TelemetryMessage(
        device_id="d1", birth_seq=3, ts=telemetry_at, window_s=1.0, count=1, errors=0,
        total_count=1, total_errors=0,
    )  # fmt: skip
    messages = {"status": status, "reported": reported, "telemetry": telemetry}
    orders = [
        ["status", "reported", "telemetry"],
        ["reported", "status", "telemetry"],
        ["telemetry", "reported", "status"],
        ["reported", "telemetry", "status"],
    ]
    broker = BrokerEndpoint(host="127.0.0.1", port=1)
    for order in orders:
        client = FleetClient(broker, "lab")
        for channel in order:
            client.handle(f"fedge/v1/lab/d1/{channel}", messages[channel].to_json())
        assert client.snapshot()["d1"].last_seen == reported_at, order
    reborn = StatusMessage(device_id="d1", state=Presence.ONLINE, birth_seq=4, ts=telemetry_at)
    client.handle("fedge/v1/lab/d1/status", reborn.to_json())
    assert client.snapshot()["d1"].last_seen == telemetry_at  # the new life's own clock
    client.handle("fedge/v1/lab/d1/reported", reported.to_json())  # from the old life: stale
    assert client.snapshot()["d1"].last_seen == telemetry_at
