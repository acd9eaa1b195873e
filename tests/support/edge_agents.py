"""Edge agents as real processes for the integration tests (so SIGKILL mid-download is real).

:func:`write_agent_config` writes the AgentConfig YAML a device would have (TLS CA, username, a
``passwordRef`` file, inline trusted key, state directory, HTTP input on a free port, a watched
folder); :class:`AgentProcess` runs ``python -m edge_agent.cli -vv run --config ...`` with its log
in the test's folder, and stops it at the end (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.protocol import device_topics
from fedge.process import ManagedProcess
from fedge.signing import KeyPair, PublicKey
from tests.conftest import REPO
from tests.support.edge_artifacts import desired_doc, publish
from tests.support.http_files import FileServer
from tests.support.mqtt_broker import LOOPBACK, MosquittoBroker, Operator

FLEET = "lab"  # the fleet the edge tests' devices belong to


def write_agent_config(
    folder: Path,
    broker: MosquittoBroker,
    *,
    fleet: str,
    device: str,
    trusted: list[PublicKey],
    telemetry_interval: str = "1s",
    publish_results: bool = False,
    password: str | None = None,
    download: dict[str, Any] | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    username, real_password = broker.credentials(fleet, device)
    (folder / "device.password").write_text(password or real_password, encoding="utf-8")
    document: dict[str, Any] = {
        "apiVersion": "fedge/v1",
        "kind": "AgentConfig",
        "metadata": {"name": device.lower()},
        "spec": {
            "deviceId": device,
            "fleet": fleet,
            "broker": {
                "host": LOOPBACK,
                "port": broker.port,
                "tls": {"enabled": True, "caFile": str(broker.certs.ca_cert)},
                "username": username,
                "passwordRef": {"file": "device.password"},
                "keepalive": "10s",
            },
            "trustedKeys": [key.inline for key in trusted],
            "stateDir": "state",
            "input": {"folder": "inbox", "http": {"port": 0}},
            "telemetry": {"interval": telemetry_interval, "publishResults": publish_results},
        },
    }
    if download is not None:
        document["spec"]["download"] = download
    path = folder / "agent.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class AgentProcess:
    config: Path
    log: Path
    process: ManagedProcess | None = None

    @property
    def folder(self) -> Path:
        return self.config.parent

    @property
    def state(self) -> Path:
        return self.folder / "state"

    def start(self) -> AgentProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.process = ManagedProcess(
            [sys.executable, "-m", "edge_agent.cli", "-vv", "run", "--config",
             str(self.config), "--threads", "1"],
            log_path=self.log,
            name="fedge-agent",
            cwd=REPO,
            env=env,
            grace=15.0,
        ).start()  # fmt: skip
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.running()

    def kill(self) -> None:
        """SIGKILL: no clean disconnect, no chance to save anything."""
        if self.process is not None:
            self.process.kill()

    def stop(self) -> int | None:
        return self.process.stop() if self.process is not None else None

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def http_port(self, *, timeout: float = 30.0) -> int:
        """The port of the agent's HTTP input (written by the running process)."""
        deadline = time.monotonic() + timeout
        path = self.state / "http.json"
        while time.monotonic() < deadline:
            if not self.alive:
                raise AssertionError(f"agent exited:\n{self.tail()}")
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                doc = None
            if doc and self.process is not None and doc.get("pid") == self.process.pid:
                return int(doc["port"])
            time.sleep(0.05)
        raise AssertionError(f"agent did not open its HTTP input:\n{self.tail()}")

    def classify(self, text: str) -> tuple[int, dict[str, Any]]:
        """POST one text to the agent's local endpoint; (status, JSON body)."""
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{self.http_port()}/v1/classify",
            data=json.dumps({"text": text}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[AgentProcess]]:
    """Collects the agent processes a test starts, and stops them all at the end."""
    started: list[AgentProcess] = []
    try:
        yield started
    finally:
        for agent in started:
            agent.stop()


def spawn(started: list[AgentProcess], config: Path, *, name: str | None = None) -> AgentProcess:
    agent = AgentProcess(config=config, log=config.parent / f"{name or 'agent'}.log")
    started.append(agent)
    return agent.start()


def eventually(predicate: Callable[[], Any], *, timeout: float = 30.0, what: str = "") -> Any:
    """Poll until ``predicate()`` is truthy (and return it); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def start_agent(
    agents: list[AgentProcess],
    broker: MosquittoBroker,
    tmp_path: Path,
    device: str,
    key: KeyPair,
    **options: Any,
) -> AgentProcess:
    """An agent process for ``device`` of :data:`FLEET`, trusting ``key``."""
    config = write_agent_config(
        tmp_path / device, broker, fleet=FLEET, device=device, trusted=[key.public], **options
    )
    return spawn(agents, config, name=device)


def reported_topic(device: str) -> str:
    return device_topics(FLEET, device).reported


def deploy(
    op: Operator,
    devices: list[str],
    artifact: Path,
    files_server: FileServer,
    deployment_id: str,
    **settings: Any,
) -> None:
    """Publish (retained) a desired document for ``artifact``, served by ``files_server``."""
    replica = publish(artifact, files_server.root, files_server.base_url)
    doc = desired_doc(artifact, [replica], deployment_id=deployment_id, **settings)
    for device in devices:
        op.publish(device_topics(FLEET, device).desired, doc, retain=True).wait_for_publish(10)


def on_version(version: str, deployment_id: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def check(doc: dict[str, Any]) -> bool:
        return (
            doc["phase"] == "SUCCEEDED"
            and (doc.get("current") or {}).get("version") == version
            and (deployment_id is None or doc["deploymentId"] == deployment_id)
        )

    return check


def phase_is(phase: str, deployment_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda doc: doc["phase"] == phase and doc["deploymentId"] == deployment_id
