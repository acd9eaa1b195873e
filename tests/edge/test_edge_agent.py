"""Edge agents against a real mosquitto (TLS, passwords, per-device ACL) and a real HTTP store.

Agents run as separate processes (``python -m edge_agent.cli run``), so a SIGKILL mid-download
is a real crash; the test plays the operator with its own MQTT client, publishing ``desired``
documents and watching ``reported`` and ``status``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.protocol import device_topics
from fedge.signing import KeyPair, generate_keypair
from tests.conftest import REPO
from tests.support import edge_agents, http_files, mqtt_broker
from tests.support.edge_agents import (
    FLEET,
    AgentProcess,
    deploy,
    eventually,
    on_version,
    phase_is,
    reported_topic,
    spawn,
    start_agent,
)
from tests.support.edge_artifacts import make_artifact
from tests.support.http_files import Fault, FileServer
from tests.support.mqtt_broker import MosquittoBroker, Operator

# The shared fixtures, under the names the tests ask for.
agents = edge_agents.agents
files = http_files.files
broker_certs = mqtt_broker.broker_certs
mosquitto = mqtt_broker.mosquitto

pytestmark = pytest.mark.timeout(180)

ORDER = ["QUEUED", "DOWNLOADING", "VERIFYING", "ACTIVATING", "SUCCEEDED"]


@pytest.fixture(scope="module")
def key() -> KeyPair:
    return generate_keypair()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, key: KeyPair) -> dict[str, Path]:
    """v1 answers positive, v2 negative (and is large enough to download slowly);
    v3 is tampered after signing; v4 is signed by a key no device trusts."""
    root = tmp_path_factory.mktemp("artifacts")
    make_artifact(root / "v1", key, version="1.0.0", favour=1)
    make_artifact(root / "v2", key, version="2.0.0", favour=0, embedding_dim=1024)
    make_artifact(root / "v3", key, version="3.0.0", favour=0)
    model = root / "v3" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    make_artifact(root / "v4", generate_keypair(), version="4.0.0", favour=0)
    return {name: root / name for name in ("v1", "v2", "v3", "v4")}


def status_of(op: Operator, device: str) -> dict[str, Any] | None:
    message = op.latest.get(device_topics(FLEET, device).status)
    return None if message is None else message.json()


def wait_status(op: Operator, device: str, state: str, *, min_seq: int = 0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        doc = status_of(op, device)
        return doc if doc and doc["state"] == state and doc["birthSeq"] >= min_seq else None

    found: dict[str, Any] = op.wait_for(
        check, timeout=60, what=f"{device} {state} (birthSeq >= {min_seq})"
    )
    return found


def test_two_agents_receive_a_deployment_and_report_it(
    mosquitto: Callable[..., MosquittoBroker],
    files: FileServer,
    agents: list[AgentProcess],
    built: dict[str, Path],
    key: KeyPair,
    tmp_path: Path,
) -> None:
    devices = ["dev-1", "dev-2"]
    broker = mosquitto([(FLEET, d) for d in devices])
    procs = [start_agent(agents, broker, tmp_path, d, key, publish_results=True) for d in devices]
    with broker.client(*broker.operator) as op:
        for device in devices:
            assert wait_status(op, device, "online")["birthSeq"] == 1
        deploy(op, devices, built["v1"], files, "dep-1")
        for device in devices:
            doc = op.wait_reported(FLEET, device, on_version("1.0.0", "dep-1"))
            assert doc["error"] is None and doc["target"] == doc["current"]
            assert doc["birthSeq"] == 1 and doc["schema"] == 1
            phases = [m.json()["phase"] for m in op.messages if m.topic == reported_topic(device)]
            seen = [p for p in ORDER if p in phases]
            assert seen == ORDER, phases
            assert [p for p in phases if p in ORDER] == sorted(
                (p for p in phases if p in ORDER), key=ORDER.index
            )
        # Both serve it: on the local HTTP endpoint and from the watched folder.
        for proc in procs:
            status, body = proc.classify("a lovely film")
            assert status == 200
            assert (body["version"], body["predictions"][0]["label"]) == ("1.0.0", "positive")
        inbox = procs[0].folder / "inbox"
        (inbox / ".note.tmp").write_text("the plot was fine", encoding="utf-8")
        (inbox / ".note.tmp").rename(inbox / "note.txt")
        assert eventually((inbox / "results" / "note.json").exists, what="the folder result")
        answer = json.loads((inbox / "results" / "note.json").read_text())
        assert (answer["version"], answer["label"]) == ("1.0.0", "positive")
        assert (inbox / "processed" / "note.txt").exists() and not (inbox / "note.txt").exists()
        # Results (enabled in this AgentConfig) and telemetry reach the operator.
        results = device_topics(FLEET, "dev-1").results
        telemetry = device_topics(FLEET, "dev-1").telemetry
        op.wait_for(
            lambda: (
                {m.json()["source"] for m in op.messages if m.topic == results}
                >= {"http", "folder"}
            ),
            what="results from both inputs",
        )
        counted = op.wait_for(
            lambda: [m.json() for m in op.messages if m.topic == telemetry
                     and m.json()["totalCount"] >= 2],
            what="telemetry counting the inferences",
        )  # fmt: skip
        assert counted[-1]["p95Ms"] is not None and counted[-1]["current"]["version"] == "1.0.0"
        health = op.wait_reported(FLEET, "dev-1", lambda d: d["health"]["samples"] >= 2)
        assert health["health"]["errorRate"] == 0.0 and health["health"]["p50Ms"] > 0


def test_a_device_cannot_read_or_write_another_devices_topics(
    mosquitto: Callable[..., MosquittoBroker],
) -> None:
    broker = mosquitto([(FLEET, "dev-a"), (FLEET, "dev-b")], use_passwd_tool=False)
    a_topics, b_topics = device_topics(FLEET, "dev-a"), device_topics(FLEET, "dev-b")
    with (
        broker.client(*broker.operator) as op,
        Operator(
            broker,
            *broker.credentials(FLEET, "dev-a"),
            subscribe=[b_topics.reported, "fedge/v1/#", a_topics.cmd],
        ) as device_a,
    ):
        op.wait_for(lambda: len(op.suback) >= 1, what="operator subscribed")
        device_a.wait_for(lambda: len(device_a.suback) >= 3, what="device subscriptions")
        # Write: a QoS 1 publish into B's subtree is refused with "Not authorized".
        info = device_a.publish(b_topics.desired, b'{"schema": 1}', retain=True)
        info.wait_for_publish(10)
        reason = device_a.wait_for(lambda: device_a.puback.get(info.mid), what="the PUBACK")
        assert reason.is_failure and reason.getName() == "Not authorized"
        # Its own subtree works.
        own = device_a.publish(a_topics.reported, b"{}", retain=False)
        own.wait_for_publish(10)
        assert not device_a.wait_for(lambda: device_a.puback.get(own.mid)).is_failure
        # Read: the operator writes to B, then to A; A gets its own message and nothing of B's.
        op.publish(b_topics.reported, b"secret", retain=True).wait_for_publish(10)
        op.publish(a_topics.cmd, b"mine").wait_for_publish(10)
        device_a.wait_for(lambda: a_topics.cmd in device_a.latest, what="A's own command")
        leaked = [m.topic for m in device_a.messages if m.topic.startswith(b_topics.base)]
        assert leaked == []
        op.wait_for(lambda: b_topics.reported in op.latest, what="operator sees B")
        assert b_topics.desired not in op.latest  # A's write never landed
    with pytest.raises(RuntimeError, match="Not authorized"):
        Operator(broker, broker.credentials(FLEET, "dev-a")[0], "wrong-password").__enter__()
    assert plaintext_connect_is_refused(broker.port)


def plaintext_connect_is_refused(port: int) -> bool:
    """An MQTT CONNECT without TLS gets no CONNACK: the listener speaks TLS only."""
    connect = bytes.fromhex("100d00044d5154540402003c000178")  # v3.1.1, client id "x"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(connect)
        try:
            answer = sock.recv(4)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    return not answer.startswith(b"\x20")


def test_tampered_and_untrusted_artifacts_are_refused_while_the_old_model_serves(
    mosquitto: Callable[..., MosquittoBroker],
    files: FileServer,
    agents: list[AgentProcess],
    built: dict[str, Path],
    key: KeyPair,
    tmp_path: Path,
) -> None:
    broker = mosquitto([(FLEET, "dev-1")])
    proc = start_agent(agents, broker, tmp_path, "dev-1", key)
    with broker.client(*broker.operator) as op:
        deploy(op, ["dev-1"], built["v1"], files, "dep-1")
        op.wait_reported(FLEET, "dev-1", on_version("1.0.0"))
        deploy(op, ["dev-1"], built["v3"], files, "dep-tampered")
        doc = op.wait_reported(FLEET, "dev-1", phase_is("FAILED", "dep-tampered"))
        assert "model.onnx: sha256" in doc["error"] and "does not match" in doc["error"]
        assert doc["current"]["version"] == "1.0.0"
        assert proc.classify("good")[1]["version"] == "1.0.0"
        deploy(op, ["dev-1"], built["v4"], files, "dep-untrusted")
        doc = op.wait_reported(FLEET, "dev-1", phase_is("FAILED", "dep-untrusted"))
        assert "not among the trusted keys" in doc["error"]
        assert doc["current"]["version"] == "1.0.0"
        status, body = proc.classify("good")
        assert (status, body["version"], body["predictions"][0]["label"]) == (
            200, "1.0.0", "positive",
        )  # fmt: skip
        assert proc.alive
    installed = sorted(p.name for p in (proc.state / "models" / "tiny-cls").iterdir())
    assert [name.split("-")[0] for name in installed] == ["1.0.0"]


def test_a_malformed_desired_is_reported_and_the_agent_stays_up(
    mosquitto: Callable[..., MosquittoBroker],
    files: FileServer,
    agents: list[AgentProcess],
    built: dict[str, Path],
    key: KeyPair,
    tmp_path: Path,
) -> None:
    broker = mosquitto([(FLEET, "dev-1")])
    proc = start_agent(agents, broker, tmp_path, "dev-1", key)
    desired = device_topics(FLEET, "dev-1").desired
    with broker.client(*broker.operator) as op:
        deploy(op, ["dev-1"], built["v1"], files, "dep-1")
        op.wait_reported(FLEET, "dev-1", on_version("1.0.0"))
        bad: list[tuple[bytes, str]] = [
            (b"{not json", "desired: not a JSON document"),
            (b'{"schema": 2, "deploymentId": "dep-future"}', "schema 2 is not supported"),
            (b'{"schema": 1, "deploymentId": "dep-half"}', "artifact: Field required"),
            (b"\xff\x00\xfe", "not a JSON document"),
        ]
        for payload, message in bad:
            op.publish(desired, payload, retain=True).wait_for_publish(10)

            def refused(doc: dict[str, Any], message: str = message) -> bool:
                return doc["phase"] == "FAILED" and message in (doc["error"] or "")

            doc = op.wait_reported(FLEET, "dev-1", refused, what=f"the report of {payload!r}")
            assert doc["rejected"]["channel"] == "desired"
            assert doc["current"]["version"] == "1.0.0"
            assert proc.alive
        assert doc["deploymentId"] is None
        half = json.loads(
            next(m.payload for m in reversed(op.messages) if b"dep-half" in m.payload
                 and m.topic == reported_topic("dev-1"))
        )  # fmt: skip
        assert half["deploymentId"] == "dep-half"
        # A bad command is reported the same way; the agent still follows the next deployment.
        op.publish(device_topics(FLEET, "dev-1").cmd, b'{"schema": 1, "command": "dance"}')
        op.wait_reported(FLEET, "dev-1", lambda d: (d["rejected"] or {}).get("channel") == "cmd")
        deploy(op, ["dev-1"], built["v2"], files, "dep-2")
        doc = op.wait_reported(FLEET, "dev-1", on_version("2.0.0", "dep-2"))
        assert doc["error"] is None and doc["rejected"] is None
        assert proc.classify("good")[1]["predictions"][0]["label"] == "negative"


def test_agents_started_after_the_deployment_converge_from_the_retained_state(
    mosquitto: Callable[..., MosquittoBroker],
    files: FileServer,
    agents: list[AgentProcess],
    built: dict[str, Path],
    key: KeyPair,
    tmp_path: Path,
) -> None:
    broker = mosquitto([(FLEET, "dev-1"), (FLEET, "dev-new")])
    first = start_agent(agents, broker, tmp_path, "dev-1", key)
    with broker.client(*broker.operator) as op:
        deploy(op, ["dev-1"], built["v1"], files, "dep-1")
        op.wait_reported(FLEET, "dev-1", on_version("1.0.0"))
        assert first.stop() == 0
        offline = wait_status(op, "dev-1", "offline")
        # While dev-1 is offline, v2 is deployed to it and to a device that never ran yet.
        deploy(op, ["dev-1", "dev-new"], built["v2"], files, "dep-2")
    with broker.client(*broker.operator) as op:  # a fresh operator: no memory but the retained
        assert op.wait_reported(FLEET, "dev-1", lambda d: True)["current"]["version"] == "1.0.0"
        spawn(agents, first.config, name="dev-1-again")
        start_agent(agents, broker, tmp_path, "dev-new", key)
        for device in ("dev-1", "dev-new"):
            op.wait_reported(FLEET, device, on_version("2.0.0", "dep-2"))
        online = wait_status(op, "dev-1", "online")
        assert online["birthSeq"] == offline["birthSeq"] + 1 == 2


def test_restarting_the_broker_mid_rollout_ends_with_every_agent_on_the_new_version(
    mosquitto: Callable[..., MosquittoBroker],
    files: FileServer,
    agents: list[AgentProcess],
    built: dict[str, Path],
    key: KeyPair,
    tmp_path: Path,
) -> None:
    devices = ["dev-1", "dev-2"]
    broker = mosquitto([(FLEET, d) for d in devices])
    for device in devices:
        start_agent(agents, broker, tmp_path, device, key)
    with broker.client(*broker.operator) as op:
        deploy(op, devices, built["v1"], files, "dep-1")
        for device in devices:
            op.wait_reported(FLEET, device, on_version("1.0.0"))
        files.fault("tiny-cls/2.0.0/model.onnx", Fault(bytes_per_second=40_000))
        deploy(op, devices, built["v2"], files, "dep-2")
        for device in devices:
            op.wait_reported(FLEET, device, phase_is("DOWNLOADING", "dep-2"))
        broker.restart(down_for=1.0)
        for device in devices:
            doc = op.wait_reported(FLEET, device, on_version("2.0.0", "dep-2"), timeout=90)
            assert doc["error"] is None
            assert wait_status(op, device, "online", min_seq=2)["birthSeq"] >= 2


def test_killing_an_agent_mid_download_and_restarting_it_completes_the_install(
    mosquitto: Callable[..., MosquittoBroker],
    files: FileServer,
    agents: list[AgentProcess],
    built: dict[str, Path],
    key: KeyPair,
    tmp_path: Path,
) -> None:
    broker = mosquitto([(FLEET, "dev-1")])
    proc = start_agent(agents, broker, tmp_path, "dev-1", key)
    model = "tiny-cls/2.0.0/model.onnx"
    size = (built["v2"] / "model.onnx").stat().st_size
    files.fault(model, Fault(bytes_per_second=30_000))
    with broker.client(*broker.operator) as op:
        wait_status(op, "dev-1", "online")
        deploy(op, ["dev-1"], built["v2"], files, "dep-2")
        part = eventually(
            lambda: next(
                (p for p in (proc.state / "partial").glob("*/model.onnx.part")
                 if p.stat().st_size >= 16_384), None,
            ),
            what="a partial model download",
        )  # fmt: skip
        proc.kill()
        kept = part.stat().st_size
        assert 0 < kept < size
        assert wait_status(op, "dev-1", "offline")["birthSeq"] == 1  # the broker sent the will
        files.clear_faults()
        again = spawn(agents, proc.config, name="dev-1-again")
        doc = op.wait_reported(FLEET, "dev-1", on_version("2.0.0", "dep-2"))
        assert doc["birthSeq"] == 2 and doc["error"] is None
        assert again.classify("good")[1]["version"] == "2.0.0"
    ranges = [r.range for r in files.requests_for("model.onnx") if "2.0.0" in r.path]
    resumed = [int(r.split("=")[1].rstrip("-")) for r in ranges if r is not None]
    assert resumed and resumed[0] >= kept, ranges  # the rest only, not the whole file again
    assert not (proc.state / "partial").exists() or not any((proc.state / "partial").iterdir())


def test_a_newer_desired_replaces_a_deployment_in_progress(
    mosquitto: Callable[..., MosquittoBroker],
    files: FileServer,
    agents: list[AgentProcess],
    built: dict[str, Path],
    key: KeyPair,
    tmp_path: Path,
) -> None:
    broker = mosquitto([(FLEET, "dev-1")])
    start_agent(agents, broker, tmp_path, "dev-1", key)
    files.fault("tiny-cls/2.0.0/model.onnx", Fault(bytes_per_second=20_000))
    with broker.client(*broker.operator) as op:
        deploy(op, ["dev-1"], built["v2"], files, "dep-slow")
        op.wait_reported(FLEET, "dev-1", phase_is("DOWNLOADING", "dep-slow"))
        deploy(op, ["dev-1"], built["v1"], files, "dep-now")
        doc = op.wait_reported(FLEET, "dev-1", on_version("1.0.0", "dep-now"))
        assert doc["error"] is None
        phases = [
            (d["deploymentId"], d["phase"])
            for d in (m.json() for m in op.messages if m.topic == reported_topic("dev-1"))
        ]
        assert ("dep-slow", "SUCCEEDED") not in phases
        assert ("dep-slow", "FAILED") not in phases  # cancelled, not failed


def test_rollback_command_serves_the_previous_version_and_sticks(
    mosquitto: Callable[..., MosquittoBroker],
    files: FileServer,
    agents: list[AgentProcess],
    built: dict[str, Path],
    key: KeyPair,
    tmp_path: Path,
) -> None:
    broker = mosquitto([(FLEET, "dev-1")])
    proc = start_agent(agents, broker, tmp_path, "dev-1", key)
    cmd = device_topics(FLEET, "dev-1").cmd
    with broker.client(*broker.operator) as op:
        deploy(op, ["dev-1"], built["v1"], files, "dep-1")
        op.wait_reported(FLEET, "dev-1", on_version("1.0.0"))
        deploy(op, ["dev-1"], built["v2"], files, "dep-2")
        op.wait_reported(FLEET, "dev-1", on_version("2.0.0"))
        op.publish(cmd, {"schema": 1, "command": "rollback", "requestId": "r-1"})
        doc = op.wait_reported(FLEET, "dev-1", phase_is("ROLLED_BACK", "dep-2"))
        assert doc["current"]["version"] == "1.0.0"
        assert proc.classify("good")[1]["predictions"][0]["label"] == "positive"
        assert proc.stop() == 0
        # The retained desired still names dep-2; a restarted agent does not redo it.
        again = spawn(agents, proc.config, name="dev-1-again")
        wait_status(op, "dev-1", "online", min_seq=2)
        op.publish(cmd, {"schema": 1, "command": "report"})
        doc = op.wait_reported(FLEET, "dev-1", lambda d: d["birthSeq"] == 2)
        assert (doc["phase"], doc["current"]["version"]) == ("ROLLED_BACK", "1.0.0")
        assert again.classify("good")[1]["version"] == "1.0.0"
        assert again.stop() == 0
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "status", "--config", str(proc.config),
         "--json"],
        capture_output=True, text=True, cwd=REPO, check=True,
    )  # fmt: skip
    status = json.loads(result.stdout)
    assert status["running"] is False
    assert status["current"]["version"] == "1.0.0" and status["previous"]["version"] == "2.0.0"
    assert status["deployment"]["phase"] == "ROLLED_BACK" and status["birthSeq"] == 2


def test_many_agents_run_as_threads_of_one_process(
    mosquitto: Callable[..., MosquittoBroker],
    files: FileServer,
    built: dict[str, Path],
    key: KeyPair,
    tmp_path: Path,
) -> None:
    """The in-process Agent class (what a fleet benchmark would start a hundred of)."""
    from edge_agent.agent import Agent
    from edge_agent.config import AgentSettings, BrokerSettings

    devices = [f"thread-{i}" for i in range(4)]
    broker = mosquitto([(FLEET, d) for d in devices])
    fleet = []
    for device in devices:
        username, password = broker.credentials(FLEET, device)
        settings = AgentSettings(
            device_id=device,
            fleet=FLEET,
            broker=BrokerSettings(
                host="127.0.0.1", port=broker.port, ca_file=broker.certs.ca_cert,
                username=username, password=password,
            ),
            trusted_keys=(key.public,),
            state_dir=tmp_path / device,
        )  # fmt: skip
        fleet.append(Agent(settings, inference_threads=1))
    try:
        for agent in fleet:
            agent.start()
        with broker.client(*broker.operator) as op:
            deploy(op, devices, built["v1"], files, "dep-1")
            for device in devices:
                op.wait_reported(FLEET, device, on_version("1.0.0"))
        answers = {
            agent.classify(["good"], source="http", input_ids=["x"]).version for agent in fleet
        }
        assert answers == {"1.0.0"}
    finally:
        for agent in fleet:
            agent.stop()
    assert all(agent.current is not None for agent in fleet)
    left = [t.name for t in threading.enumerate() if "thread-" in t.name]
    assert left == []  # stop() joined every agent thread
