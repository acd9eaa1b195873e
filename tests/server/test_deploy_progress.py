"""``fedge deploy`` progress, ``--detach`` with ``fedge deploy status``, and ``fedge fleet status``.

Against a real mosquitto (TLS, passwords, the per-device ACL) and real agents, with the operator's
CLI run as a user runs it (the installed ``fedge`` script, one process per terminal). Two devices,
a canary of one and a soak of a few seconds keep each test short.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from edge_agent.protocol import device_topics
from fedge.output_schemas import schema_for
from fedge.process import group_alive
from fedge.signing import KeyPair, generate_keypair
from server.fleet.progress import rollout_topic
from tests.server.test_fleet_rollout import fedge, fedge_exe, wait_online
from tests.support import edge_agents, http_files, mqtt_broker
from tests.support.edge_agents import AgentProcess, spawn, write_agent_config
from tests.support.edge_artifacts import make_artifact, publish
from tests.support.http_files import FileServer
from tests.support.mqtt_broker import MosquittoBroker

agents = edge_agents.agents
files = http_files.files
broker_certs = mqtt_broker.broker_certs
mosquitto = mqtt_broker.mosquitto

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

FLEET = "lab"
DEVICES = ["dev-1", "dev-2"]  # sorted: dev-1 is the canary, dev-2 the one batch


class Site:
    """A broker, two agents, the operator's password file and a placed v2, for one test."""

    def __init__(
        self, broker: MosquittoBroker, files: FileServer, folder: Path, key: KeyPair
    ) -> None:
        self.broker, self.folder = broker, folder
        self.password_file = folder / "operator.password"
        self.password_file.write_text(broker.operator[1], encoding="utf-8")
        self.artifact = folder / "v2"
        make_artifact(self.artifact, key, version="2.0.0", favour=0)
        replica = publish(self.artifact, files.root, files.base_url)
        self.urls = folder / "urls.json"
        document = {"artifact": "tiny-cls", "version": "2.0.0", "replicas": [replica]}
        self.urls.write_text(json.dumps(document), encoding="utf-8")

    def connection(self, *, fleet: str | None = FLEET) -> list[str]:
        flags = [
            "--broker", f"127.0.0.1:{self.broker.port}", "--ca", str(self.broker.certs.ca_cert),
            "--username", self.broker.operator[0], "--password-file", str(self.password_file),
        ]  # fmt: skip
        return flags + (["--fleet", fleet] if fleet else [])

    def deploy_args(self, *, soak: str = "4s") -> list[str]:
        policy = self.folder / "rollout.yaml"
        spec = {
            "canary": {"devices": 1},
            "health": {"minSamples": 0, "maxP95LatencyMs": 60000},
            "soakTime": soak,
            "batchSize": 1,
            "timeout": "2m",
        }
        document = {"apiVersion": "fedge/v1", "kind": "RolloutPolicy",
                    "metadata": {"name": "progress"}, "spec": spec}  # fmt: skip
        policy.write_text(yaml.safe_dump(document), encoding="utf-8")
        return ["deploy", "--artifact", str(self.artifact), "--urls", str(self.urls),
                "--rollout", str(policy), *self.connection()]  # fmt: skip


@pytest.fixture
def site(
    mosquitto: Callable[..., MosquittoBroker],
    files: FileServer,
    agents: list[AgentProcess],
    tmp_path: Path,
) -> Site:
    key = generate_keypair()
    broker = mosquitto([(FLEET, d) for d in DEVICES])
    for device in DEVICES:
        config = write_agent_config(
            tmp_path / device, broker, fleet=FLEET, device=device, trusted=[key.public]
        )
        spawn(agents, config, name=device)
    with broker.client(*broker.operator) as op:
        wait_online(op, DEVICES)
    return Site(broker, files, tmp_path, key)


@pytest.fixture
def background() -> Iterator[list[int]]:
    """The pids of detached rollouts a test started: stopped at the end if still running."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def timed_lines(process: subprocess.Popen[str]) -> list[tuple[float, str]]:
    """Read a process's stdout line by line, noting when each line arrived."""
    assert process.stdout is not None
    return [(time.monotonic(), line.rstrip("\n")) for line in process.stdout]


def index(lines: list[str], prefix: str) -> int:
    found = [i for i, line in enumerate(lines) if line.startswith(prefix)]
    assert found, f"no line starts with {prefix!r} in:\n" + "\n".join(lines)
    return found[0]


def fleet_rows(site: Site, *extra: str) -> dict[str, dict[str, Any]]:
    result = fedge("fleet", "status", "-o", "json", *site.connection(), *extra)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, schema_for("DeviceList"))
    assert (doc["apiVersion"], doc["kind"], doc["fleet"]) == ("fedge/v1", "DeviceList", FLEET)
    return {row["device"]: row for row in doc["items"]}


def test_deploy_prints_its_progress_as_it_goes_and_fleet_status_is_stable(
    site: Site, agents: list[AgentProcess]
) -> None:
    cli = subprocess.Popen(
        [fedge_exe(), *site.deploy_args()], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        timed = timed_lines(cli)
        stderr = cli.communicate(timeout=120)[1]
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    ended = time.monotonic()
    lines = [line for _at, line in timed]
    assert cli.returncode == 0, "\n".join(lines) + stderr
    assert lines[0].startswith("deploying tiny-cls 2.0.0 as tiny-cls-2.0.0-")
    order = [
        index(lines, "rollout tiny-cls-2.0.0-"),
        index(lines, "canary: dev-1 -> 2.0.0"),
        index(lines, "dev-1: SUCCEEDED on 2.0.0 (error rate "),
        index(lines, "canary on 2.0.0: soak for 4 s (limits: error rate <= "),
        index(lines, "soak: 4 s left; dev-1 error rate "),
        index(lines, "soak over, canary healthy: dev-1 error rate "),
        index(lines, "batch 1/1: dev-2 -> 2.0.0"),
        index(lines, "dev-2: SUCCEEDED on 2.0.0"),
        index(lines, "rollout succeeded: every device runs the new version"),
    ]
    assert order == sorted(order), "\n".join(lines)
    assert "p95 " in lines[order[2]] and " samples)" in lines[order[2]]
    # Printed while the rollout ran, not at its end: the soak began 4 s before the batch.
    soak_seen = timed[order[3]][0]
    assert ended - soak_seen > 3.0, "progress lines arrived only when the command ended"

    # "last seen" comes from the devices' own clocks: never backwards, and a stopped device's
    # value stays put between two reads of the retained state.
    first = fleet_rows(site)
    assert {d: (r["desired"], r["reported"]) for d, r in first.items()} == {
        d: ("2.0.0", "2.0.0") for d in DEVICES
    }
    agents[1].stop()  # dev-2 says "offline" itself on a clean stop
    with site.broker.client(*site.broker.operator) as op:
        topics = device_topics(FLEET, "dev-2")
        op.wait_for(
            lambda: (m := op.latest.get(topics.status)) and m.json()["state"] == "offline"
            and topics.reported in op.latest
        )  # fmt: skip
        own = max(
            datetime.fromisoformat(op.latest[topic].json()["ts"])
            for topic in (topics.status, topics.reported)
        )
    second = fleet_rows(site)
    time.sleep(1.5)
    third = fleet_rows(site)
    assert second["dev-2"]["online"] is False
    assert second["dev-2"]["lastSeen"] == third["dev-2"]["lastSeen"]
    assert datetime.fromisoformat(third["dev-2"]["lastSeen"]) == own
    seen = [datetime.fromisoformat(r["dev-1"]["lastSeen"]) for r in (first, second, third)]
    assert seen == sorted(seen)

    # --watch: one document per refresh until Ctrl-C, which ends it cleanly.
    watch = subprocess.Popen(
        [fedge_exe(), "fleet", "status", "--watch", "--interval", "0.5", "-o", "json",
         *site.connection()],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert watch.stdout is not None
        docs = [json.loads(watch.stdout.readline()) for _ in range(3)]
        watch.send_signal(signal.SIGINT)
        _out, err = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    assert watch.returncode == 0, err
    assert all(set(d["items"][0]) >= {"device", "lastSeen", "phase"} for d in docs)

    # --json keeps its old shape (a bare list of the same rows).
    legacy = fedge("fleet", "status", "--json", *site.connection())
    assert [row["device"] for row in json.loads(legacy.stdout)] == DEVICES

    unknown = fedge("fleet", "status", *site.connection(fleet="no-such-fleet"))
    assert unknown.returncode == 2
    assert unknown.stderr.splitlines() == [
        "fedge: error: --fleet no-such-fleet: no device of this fleet has reported to the broker"
    ]


def test_a_detached_rollout_is_followed_from_another_terminal(
    site: Site, background: list[int]
) -> None:
    log = site.folder / "rollout.log"
    started = time.monotonic()
    detached = fedge(*site.deploy_args(), "--detach", "--log", str(log), timeout=90)
    took = time.monotonic() - started
    assert detached.returncode == 0, detached.stdout + detached.stderr
    deployment = detached.stdout.splitlines()[0].split()[-1]
    started_line = detached.stdout.splitlines()[1]
    assert started_line.startswith(f"rollout {deployment} runs in the background (pid ")
    pid = int(started_line.split("(pid ")[1].split(")")[0])
    background.append(pid)
    assert took < 30, "--detach waited for the rollout instead of returning"

    # A second terminal: the stage, the controller, and its log, from the broker alone.
    listed = fedge("deploy", "status", "-o", "json", *site.connection())
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    jsonschema.validate(doc, schema_for("RolloutList"))
    assert doc["kind"] == "RolloutList"
    [item] = doc["items"]
    assert item["deploymentId"] == deployment
    assert item["stage"] in ("canary", "soak", "batches")
    assert (item["controller"]["pid"], item["controller"]["log"]) == (pid, str(log))
    assert item["devices"] == DEVICES and item["canary"] == ["dev-1"]

    # A device's account can neither read nor overwrite the rollout's state.
    topic = rollout_topic(FLEET, deployment)
    with site.broker.client(*site.broker.credentials(FLEET, "dev-2")) as device:
        device.client.subscribe(topic, qos=1)
        device.wait_for(lambda: len(device.suback) >= 2, what="SUBACK")  # granted, but...
        info = device.publish(topic, b'{"schema": 1, "stage": "succeeded"}', retain=True)
        refused = device.wait_for(lambda: device.puback.get(info.mid), what="PUBACK")
        assert refused.is_failure, refused
        time.sleep(1.0)  # ...the retained document would have arrived by now
        assert topic not in device.latest

    follow = fedge(
        "deploy", "status", "--deployment", deployment, "--watch", *site.connection(), timeout=120
    )
    assert follow.returncode == 0, follow.stdout + follow.stderr
    lines = follow.stdout.splitlines()
    order = [
        index(lines, f"rollout {deployment} (fleet lab): tiny-cls 2.0.0"),
        index(lines, f"rollout {deployment}: tiny-cls 2.0.0 to 2 device(s)"),
        index(lines, "canary: dev-1 -> 2.0.0"),
        index(lines, "soak: "),
        index(lines, "batch 1/1: dev-2 -> 2.0.0"),
        index(lines, "rollout succeeded"),
    ]
    assert order == sorted(order), follow.stdout

    table = fedge("deploy", "status", *site.connection())
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if deployment in line)
    assert "succeeded" in row and "2/2" in row
    deadline = time.monotonic() + 20
    while group_alive(pid) and time.monotonic() < deadline:  # its own session: pgid == pid
        time.sleep(0.2)
    assert not group_alive(pid), "the background rollout did not exit"
    assert "rollout succeeded" in log.read_text(encoding="utf-8")

    # A detached rollout whose process is stopped (SIGTERM: kill, systemd) says so on the broker.
    again = fedge(*site.deploy_args(soak="60s"), "--detach", "--log", str(log), timeout=90)
    assert again.returncode == 0, again.stdout + again.stderr
    second = again.stdout.splitlines()[0].split()[-1]
    background.append(int(again.stdout.split("(pid ")[1].split(")")[0]))
    os.kill(background[-1], signal.SIGTERM)
    ended = fedge("deploy", "status", "--deployment", second, "--watch", *site.connection())
    assert ended.returncode == 1, ended.stdout + ended.stderr
    [line] = ended.stderr.splitlines()
    assert line.startswith(f"fedge: error: rollout {second} stopped in ")
    assert line.endswith(": the controller was interrupted")

    unknown = fedge("deploy", "status", "--deployment", "nope", *site.connection())
    assert (unknown.returncode, unknown.stderr.count("\n")) == (2, 1)
    assert "--deployment nope: no such rollout of fleet lab" in unknown.stderr
    other = fedge("deploy", "status", *site.connection(fleet="other"))
    assert other.returncode == 2, other.stderr
