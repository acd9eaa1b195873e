"""The fleet controller against a real mosquitto and real agents: ``fedge deploy`` end to end.

The operator's CLI runs as a user runs it (the installed ``fedge`` console script, the broker
password in a file); the agents run as separate processes (``python -m edge_agent.cli run``); a
test client with the operator's account watches every message, so the order in which the
controller published the ``desired`` documents can be checked against what the devices reported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.protocol import device_topics
from fedge.signing import KeyPair, generate_keypair
from tests.support import edge_agents, http_files, mqtt_broker
from tests.support.edge_agents import AgentProcess, spawn, write_agent_config
from tests.support.edge_artifacts import make_artifact, publish
from tests.support.http_files import FileServer
from tests.support.mqtt_broker import MosquittoBroker, Operator

agents = edge_agents.agents
files = http_files.files
broker_certs = mqtt_broker.broker_certs
mosquitto = mqtt_broker.mosquitto

pytestmark = pytest.mark.timeout(240)  # each test takes about 10 s

FLEET = "lab"
DEVICES = ["dev-1", "dev-2", "dev-3"]  # sorted: dev-1 is the canary


@pytest.fixture(scope="module")
def key() -> KeyPair:
    return generate_keypair()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, key: KeyPair) -> dict[str, Path]:
    """v1 answers positive, v2 negative; ``broken`` is a v2 whose logits have the wrong width,
    so it downloads and verifies but fails the agent's sample-inference health check."""
    root = tmp_path_factory.mktemp("artifacts")
    make_artifact(root / "v1", key, version="1.0.0", favour=1)
    make_artifact(root / "v2", key, version="2.0.0", favour=0)
    make_artifact(root / "broken", key, version="2.0.0", favour=0, logits_width=3)
    return {name: root / name for name in ("v1", "v2", "broken")}


class Fleet:
    """One test's broker, agents, file server and operator password file, and the CLI."""

    def __init__(
        self,
        broker: MosquittoBroker,
        files: FileServer,
        folder: Path,
        procs: dict[str, AgentProcess],
    ) -> None:
        self.broker = broker
        self.files = files
        self.folder = folder
        self.procs = procs
        self.password_file = folder / "operator.password"
        self.password_file.write_text(broker.operator[1], encoding="utf-8")
        self.password_file.chmod(0o600)

    def connection(self) -> list[str]:
        return [
            "--broker", f"127.0.0.1:{self.broker.port}", "--fleet", FLEET,
            "--ca", str(self.broker.certs.ca_cert), "--username", self.broker.operator[0],
            "--password-file", str(self.password_file),
        ]  # fmt: skip

    def policy(self, name: str, **spec: Any) -> Path:
        document = {
            "apiVersion": "fedge/v1",
            "kind": "RolloutPolicy",
            "metadata": {"name": name},
            "spec": {"canary": {"devices": 1}, "batchSize": 2, "timeout": "2m", **spec},
        }
        path = self.folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        return path

    def deploy_args(self, artifact: Path, policy: Path) -> list[str]:
        replica = publish(artifact, self.files.root, self.files.base_url)
        manifest = json.loads((artifact / "manifest.json").read_text(encoding="utf-8"))
        urls = self.folder / f"urls-{artifact.name}.json"
        urls.write_text(
            json.dumps(
                {
                    "artifact": manifest["name"],
                    "version": manifest["version"],
                    "replicas": [replica],
                }
            ),
            encoding="utf-8",
        )
        return [
            "deploy", "--artifact", str(artifact), "--urls", str(urls), "--rollout", str(policy),
            *self.connection(),
        ]  # fmt: skip

    def deploy(self, artifact: Path, policy: Path) -> subprocess.CompletedProcess[str]:
        return fedge(*self.deploy_args(artifact, policy))

    def status(self) -> dict[str, dict[str, Any]]:
        result = fedge("fleet", "status", "--json", *self.connection())
        assert result.returncode == 0, result.stderr
        return {row["device"]: row for row in json.loads(result.stdout)}


def fedge_exe() -> str:
    """The installed console script, as an operator runs it."""
    return shutil.which("fedge", path=str(Path(sys.executable).parent)) or "fedge"


def fedge(*argv: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [fedge_exe(), *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def fleet(
    mosquitto: Callable[..., MosquittoBroker],
    files: FileServer,
    agents: list[AgentProcess],
    key: KeyPair,
    tmp_path: Path,
) -> Fleet:
    broker = mosquitto([(FLEET, d) for d in DEVICES])
    procs = {}
    for device in DEVICES:
        config = write_agent_config(
            tmp_path / device, broker, fleet=FLEET, device=device, trusted=[key.public]
        )
        procs[device] = spawn(agents, config, name=device)
    return Fleet(broker, files, tmp_path, procs)


def wait_online(op: Operator, devices: list[str]) -> None:
    def online(topic: str) -> bool:
        message = op.latest.get(topic)
        return message is not None and message.json()["state"] == "online"

    for device in devices:
        topic = device_topics(FLEET, device).status
        op.wait_for(partial(online, topic), what=f"{device} online")


def desired_log(op: Operator) -> list[tuple[str, dict[str, Any]]]:
    """Every ``desired`` document the operator's client saw, in the broker's order."""
    seen = []
    for message in list(op.messages):
        if message.topic.endswith("/desired") and message.payload:
            seen.append((message.topic.split("/")[3], message.json()))
    return seen


def reported_log(op: Operator, device: str) -> list[dict[str, Any]]:
    topic = device_topics(FLEET, device).reported
    return [m.json() for m in list(op.messages) if m.topic == topic and m.payload]


def on(version: str, deployment_id: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def check(doc: dict[str, Any]) -> bool:
        return (
            doc["phase"] == "SUCCEEDED"
            and (doc.get("current") or {}).get("version") == version
            and (deployment_id is None or doc["deploymentId"] == deployment_id)
        )

    return check


def deployment_of(output: str) -> str:
    """The deployment id from the CLI's first line: ``deploying NAME VERSION as ID``."""
    first = output.splitlines()[0].split()
    assert first[0] == "deploying", output
    return first[-1]


def deploy_v1(fleet: Fleet, op: Operator, built: dict[str, Path]) -> str:
    result = fleet.deploy(built["v1"], fleet.policy("v1", soakTime="1ms"))
    assert result.returncode == 0, result.stdout + result.stderr
    deployment = deployment_of(result.stdout)
    for device in DEVICES:
        op.wait_reported(FLEET, device, on("1.0.0", deployment))
    return deployment


def halted_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if "halted" in line]


def test_a_healthy_rollout_reaches_every_device_canary_first(
    fleet: Fleet, built: dict[str, Path]
) -> None:
    with fleet.broker.client(*fleet.broker.operator) as op:
        wait_online(op, DEVICES)
        policy = fleet.policy("healthy", soakTime="1s")
        result = fleet.deploy(built["v2"], policy)
        assert result.returncode == 0, result.stdout + result.stderr
        deployment = deployment_of(result.stdout)
        assert "rollout succeeded" in result.stdout
        for device in DEVICES:
            doc = op.wait_reported(FLEET, device, on("2.0.0", deployment))
            assert doc["error"] is None
        ordered = [d for d, doc in desired_log(op) if doc["deploymentId"] == deployment]
        assert ordered[0] == "dev-1" and sorted(ordered) == DEVICES  # one publication each
        # The rest was published only after the canary had reported success on the new version.
        stream = [
            (m.topic.split("/")[3], m.topic.rsplit("/", 1)[1], m.json())
            for m in list(op.messages)
            if m.payload and m.topic.rsplit("/", 1)[1] in ("desired", "reported")
        ]
        canary_ok = next(
            i
            for i, (d, ch, doc) in enumerate(stream)
            if (d, ch) == ("dev-1", "reported") and on("2.0.0", deployment)(doc)
        )
        rest = [
            i
            for i, (d, ch, doc) in enumerate(stream)
            if ch == "desired" and d != "dev-1" and doc["deploymentId"] == deployment
        ]
        assert len(rest) == 2 and min(rest) > canary_ok
    for device, row in fleet.status().items():
        assert (row["desired"], row["reported"], row["phase"]) == ("2.0.0", "2.0.0", "SUCCEEDED")
        assert row["online"] is True, device
    assert set(fleet.status()) == set(DEVICES)
    for proc in fleet.procs.values():
        assert proc.classify("good")[1]["predictions"][0]["label"] == "negative"
    fleet.password_file.write_text("not-the-password", encoding="utf-8")
    refused = fedge("fleet", "status", *fleet.connection())
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        f"fedge: error: broker 127.0.0.1:{fleet.broker.port}: connection refused (Not authorized)"
    ]


def test_a_canary_whose_health_check_fails_halts_the_rollout_and_rolls_back(
    fleet: Fleet, built: dict[str, Path]
) -> None:
    """The broken v2 fails the agent's sample inference: the canary reports FAILED."""
    with fleet.broker.client(*fleet.broker.operator) as op:
        wait_online(op, DEVICES)
        v1 = deploy_v1(fleet, op, built)
        result = fleet.deploy(built["broken"], fleet.policy("broken", soakTime="1s"))
        assert result.returncode == 1, result.stdout + result.stderr
        deployment = deployment_of(result.stdout)
        lines = halted_lines(result)
        assert len(lines) == 1, lines
        assert lines[0].startswith("fedge: error: rollout halted: dev-1: FAILED (")
        assert "logits have shape" in lines[0]
        # The canary got the new deployment; nobody else ever did.
        got = {d for d, doc in desired_log(op) if doc["deploymentId"] == deployment}
        assert got == {"dev-1"}
        # The canary's retained desired names v1's deployment again, and it serves v1.
        doc = op.wait_reported(FLEET, "dev-1", on("1.0.0", v1))
        assert doc["error"] is None
        assert any(r["phase"] == "FAILED" for r in reported_log(op, "dev-1")
                   if r["deploymentId"] == deployment)  # fmt: skip
    rows = fleet.status()
    assert {d: (r["desired"], r["reported"]) for d, r in rows.items()} == {
        d: ("1.0.0", "1.0.0") for d in DEVICES
    }
    status, body = fleet.procs["dev-1"].classify("good")
    assert (status, body["version"], body["predictions"][0]["label"]) == (200, "1.0.0", "positive")
    # A fresh client sees the retained desired of the canary: v1's deployment again.
    with fleet.broker.client(*fleet.broker.operator) as fresh:
        topic = device_topics(FLEET, "dev-1").desired
        retained = fresh.wait_for(lambda: fresh.latest.get(topic), what="retained desired")
        assert retained.json()["deploymentId"] == v1


def test_a_canary_over_the_latency_threshold_halts_the_rollout_and_serves_v1_again(
    fleet: Fleet, built: dict[str, Path]
) -> None:
    """v2 installs fine, but its first inference is slower than the policy's (tiny) p95 bound."""
    with fleet.broker.client(*fleet.broker.operator) as op:
        wait_online(op, DEVICES)
        v1 = deploy_v1(fleet, op, built)
        policy = fleet.policy(
            "slow",
            soakTime="2m",  # the halt must come from health, long before the soak ends
            timeout="3m",
            health={"maxP95LatencyMs": 0.000001, "minSamples": 1},
        )
        cli = subprocess.Popen(
            [fedge_exe(), *fleet.deploy_args(built["v2"], policy)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            canary = op.wait_reported(FLEET, "dev-1", on("2.0.0"), timeout=90)
            deployment = canary["deploymentId"]
            status, body = fleet.procs["dev-1"].classify("good")
            assert (status, body["version"]) == (200, "2.0.0")
            stdout, stderr = cli.communicate(timeout=120)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.communicate()
        assert cli.returncode == 1, stdout + stderr
        lines = halted_lines(subprocess.CompletedProcess([], 1, stdout, stderr))
        assert len(lines) == 1, lines
        assert lines[0].startswith("fedge: error: rollout halted: dev-1: p95 latency ")
        got = {d for d, doc in desired_log(op) if doc["deploymentId"] == deployment}
        assert got == {"dev-1"}
        op.wait_reported(FLEET, "dev-1", on("1.0.0", v1))
        for device in ("dev-2", "dev-3"):
            assert all(r["deploymentId"] != deployment for r in reported_log(op, device))
    status, body = fleet.procs["dev-1"].classify("good")
    assert (status, body["version"], body["predictions"][0]["label"]) == (200, "1.0.0", "positive")
    rows = fleet.status()
    assert {d: (r["desired"], r["reported"]) for d, r in rows.items()} == {
        d: ("1.0.0", "1.0.0") for d in DEVICES
    }


def test_a_broker_restart_during_the_soak_does_not_stop_the_rollout(
    fleet: Fleet, built: dict[str, Path]
) -> None:
    """The broker is down when the controller publishes the next batch: it reconnects and
    publishes then, and the rollout still ends with every device on v2."""
    with fleet.broker.client(*fleet.broker.operator) as op:
        wait_online(op, DEVICES)
        policy = fleet.policy("restart", soakTime="2s")
        cli = subprocess.Popen(
            [fedge_exe(), *fleet.deploy_args(built["v2"], policy)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            canary = op.wait_reported(FLEET, "dev-1", on("2.0.0"), timeout=90)
            fleet.broker.restart(down_for=4.0)  # longer than what is left of the soak
            stdout, stderr = cli.communicate(timeout=150)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.communicate()
        assert cli.returncode == 0, stdout + stderr
        assert "rollout succeeded" in stdout
        for device in DEVICES:
            op.wait_reported(FLEET, device, on("2.0.0", canary["deploymentId"]), timeout=90)
    rows = fleet.status()
    assert {d: (r["desired"], r["reported"]) for d, r in rows.items()} == {
        d: ("2.0.0", "2.0.0") for d in DEVICES
    }
