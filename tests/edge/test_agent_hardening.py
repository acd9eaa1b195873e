"""Attacks on the device's update path, each one first seen working against an earlier agent.

Real parts throughout: a real HTTP replica server on loopback that drips, stalls or serves forged
manifests (tests/support/http_files.py), artifacts signed with real Ed25519 keys, and, for the
restart cases, real agent processes against a real mosquitto. What each test pins down:

- the manifest's signature is checked before a single payload byte is asked for, so sizes and
  file names a forger writes are never believed (an earlier agent wrote 300 MB of a declared
  10^12-byte model before failing);
- a replica that drips a byte every two seconds is abandoned at its deadline and the next replica
  (or a newer deployment) wins; the deployment as a whole has a deadline too;
- files that are not regular files (a FIFO, a device) are refused at once, never read;
- a lost or damaged ``active.json`` heals on restart from the signed store, and a SUCCEEDED record
  no longer stops the retained ``desired`` from being carried out again when the model is gone;
- failed downloads leave nothing behind, and a ``desired`` whose hash names the installed
  manifest but another version fails instead of reporting SUCCEEDED.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.download import Downloader, DownloadError, DownloadLimits
from edge_agent.install import Installer
from edge_agent.protocol import DesiredState, device_topics
from edge_agent.store import StateDir
from fedge.artifact import SIGNATURE_SCHEMA
from fedge.errors import ArtifactError, SignatureError
from fedge.manifest import MANIFEST_NAME, SIGNATURE_NAME, FileEntry, Manifest
from fedge.signing import KeyPair, generate_keypair
from tests.support import edge_agents, http_files, mqtt_broker
from tests.support.edge_agents import (
    FLEET,
    AgentProcess,
    deploy,
    eventually,
    on_version,
    spawn,
    start_agent,
)
from tests.support.edge_artifacts import desired_doc, make_artifact, publish
from tests.support.http_files import Fault, FileServer
from tests.support.mqtt_broker import MosquittoBroker

agents = edge_agents.agents
files = http_files.files
broker_certs = mqtt_broker.broker_certs
mosquitto = mqtt_broker.mosquitto

pytestmark = pytest.mark.timeout(120)

DRIP = Fault(bytes_per_second=0.5, step=1)  # one byte every two seconds


@pytest.fixture(scope="module")
def key() -> KeyPair:
    return generate_keypair()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, key: KeyPair) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("artifacts")
    make_artifact(root / "v1", key, version="1.0.0", favour=1)
    make_artifact(root / "v2", key, version="2.0.0", favour=0)
    return {name: root / name for name in ("v1", "v2")}


def desired(artifact: Path, replicas: list[dict[str, Any]], dep: str = "d1") -> DesiredState:
    return DesiredState.from_json(json.dumps(desired_doc(artifact, replicas, deployment_id=dep)))


def forged(root: Path, base_url: str, signer: KeyPair, *, size: int) -> DesiredState:
    """A manifest declaring a ``size``-byte model, signed by ``signer``, and a desired for it."""
    manifest = Manifest.create(
        name="tiny-cls",
        version="6.6.6",
        format="onnx-fp32",
        files=[FileEntry(path="model.onnx", sha256="0" * 64, size=size)],
    )
    body = manifest.canonical_bytes()
    signature = {
        "schema": SIGNATURE_SCHEMA,
        "alg": "ed25519",
        "keyId": signer.public.key_id,
        "signature": base64.b64encode(signer.sign(body)).decode(),
    }
    folder = root / "tiny-cls" / "6.6.6"
    folder.mkdir(parents=True)
    (folder / MANIFEST_NAME).write_bytes(body)
    (folder / SIGNATURE_NAME).write_text(json.dumps(signature))
    prefix = f"{base_url}/tiny-cls/6.6.6"
    doc = {
        "schema": 1,
        "deploymentId": "forged",
        "artifact": "tiny-cls",
        "version": "6.6.6",
        "manifestSha256": hashlib.sha256(body).hexdigest(),
        "replicas": [
            {
                "target": "evil",
                "manifest": f"{prefix}/{MANIFEST_NAME}",
                "signature": f"{prefix}/{SIGNATURE_NAME}",
                "files": {"model.onnx": f"{prefix}/model.onnx"},
            }
        ],
    }
    return DesiredState.from_json(json.dumps(doc))


# -- verify before download ---------------------------------------------------------------------


def test_a_manifest_signed_by_an_untrusted_key_is_refused_before_any_payload_byte(
    files: FileServer, key: KeyPair, tmp_path: Path
) -> None:
    state = StateDir(tmp_path / "state")
    doc = forged(files.root, files.base_url, generate_keypair(), size=10**12)
    with pytest.raises(SignatureError, match="not among the trusted keys"):
        Installer(state, [key.public]).prepare(
            doc, on_phase=lambda *_: None, cancel=threading.Event()
        )
    assert files.requests_for("model.onnx") == []
    assert not state.staging(doc.manifest_sha256).exists()  # not a byte written


def test_a_signed_manifest_over_the_devices_limit_is_refused_before_download(
    files: FileServer, key: KeyPair, tmp_path: Path
) -> None:
    doc = forged(files.root, files.base_url, key, size=10**12)  # signed by a trusted key
    with pytest.raises(ArtifactError, match="over this device's limit"):
        Downloader([key.public], limits=DownloadLimits(max_artifact_bytes=1 << 30)).download(
            doc, tmp_path / "s"
        )
    assert files.requests_for("model.onnx") == []
    assert not (tmp_path / "s").exists()


# -- bounded in time ----------------------------------------------------------------------------


def test_a_dripping_replica_is_abandoned_at_its_deadline_and_the_next_one_wins(
    files: FileServer, built: dict[str, Path], key: KeyPair, tmp_path: Path
) -> None:
    slow = publish(built["v1"], files.root / "slow", files.base_url + "/slow", target="slow")
    good = publish(built["v1"], files.root / "good", files.base_url + "/good", target="good")
    files.fault("slow/tiny-cls/1.0.0/model.onnx", DRIP)
    limits = DownloadLimits(timeout=10, replica_deadline=1.5)
    began = time.monotonic()
    Downloader([key.public], limits=limits).download(
        desired(built["v1"], [slow, good]), tmp_path / "s"
    )
    took = time.monotonic() - began
    assert (tmp_path / "s" / "model.onnx").read_bytes() == (built["v1"] / "model.onnx").read_bytes()
    assert took < 8, took
    asked = [r for r in files.requests_for("model.onnx") if r.path.startswith("slow/")]
    assert len(asked) == 1  # moved on, not retried on the same slow replica


def test_a_dripping_manifest_is_abandoned_too(
    files: FileServer, built: dict[str, Path], key: KeyPair, tmp_path: Path
) -> None:
    slow = publish(built["v1"], files.root / "slow", files.base_url + "/slow", target="slow")
    good = publish(built["v1"], files.root / "good", files.base_url + "/good", target="good")
    files.fault(f"slow/tiny-cls/1.0.0/{MANIFEST_NAME}", DRIP)
    began = time.monotonic()
    Downloader([key.public], limits=DownloadLimits(replica_deadline=1.5)).download(
        desired(built["v1"], [slow, good]), tmp_path / "s"
    )
    assert time.monotonic() - began < 8
    assert (tmp_path / "s" / "model.onnx").is_file()


def test_the_deployment_deadline_ends_a_download_every_replica_drips(
    files: FileServer, built: dict[str, Path], key: KeyPair, tmp_path: Path
) -> None:
    replicas = [
        publish(built["v1"], files.root / name, f"{files.base_url}/{name}", target=name)
        for name in ("a", "b")
    ]
    for name in ("a", "b"):
        files.fault(f"{name}/tiny-cls/1.0.0/model.onnx", DRIP)
    limits = DownloadLimits(replica_deadline=30, deployment_deadline=3)
    began = time.monotonic()
    with pytest.raises(DownloadError, match="deadline") as info:
        Installer(StateDir(tmp_path / "state"), [key.public], limits=limits).prepare(
            desired(built["v1"], replicas), on_phase=lambda *_: None, cancel=threading.Event()
        )
    assert not info.value.transient  # final: the installer does not retry past the deadline
    assert time.monotonic() - began < 10


# -- only regular files -------------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_manifest_that_is_a_fifo_or_a_device_is_refused_at_once(
    kind: str, built: dict[str, Path], key: KeyPair, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    replica = publish(built["v1"], store, store.as_uri())
    manifest = store / "tiny-cls" / "1.0.0" / MANIFEST_NAME
    manifest.unlink()
    if kind == "fifo":
        os.mkfifo(manifest)  # no writer: an open without O_NONBLOCK would hang here
    else:
        manifest.symlink_to("/dev/zero")  # an endless file
    with pytest.raises(DownloadError, match="not a regular file"):
        Downloader([key.public]).download(desired(built["v1"], [replica]), tmp_path / "s")


# -- real agents: healing and leftovers ---------------------------------------------------------


def start(
    agents: list[AgentProcess],
    broker: MosquittoBroker,
    tmp_path: Path,
    key: KeyPair,
    **options: Any,
) -> AgentProcess:
    return start_agent(agents, broker, tmp_path, "dev-1", key, **options)


def serves(proc: AgentProcess, version: str) -> bool:
    status, body = proc.classify("good")
    return status == 200 and body.get("version") == version


@pytest.mark.parametrize("damage", ["garbage", "missing", "wrong-folder"])
def test_a_damaged_active_record_heals_on_restart_from_the_store(
    damage: str,
    mosquitto: Callable[..., MosquittoBroker],
    files: FileServer,
    agents: list[AgentProcess],
    built: dict[str, Path],
    key: KeyPair,
    tmp_path: Path,
) -> None:
    broker = mosquitto([(FLEET, "dev-1")])
    proc = start(agents, broker, tmp_path, key)
    with broker.client(*broker.operator) as op:
        deploy(op, ["dev-1"], built["v1"], files, "dep-1")
        op.wait_reported(FLEET, "dev-1", on_version("1.0.0", "dep-1"))
    proc.kill()
    active = proc.state / "active.json"
    if damage == "garbage":
        active.write_bytes(b"\x00{not json")
    elif damage == "missing":
        active.unlink()
    else:
        doc = json.loads(active.read_text())
        doc["current"]["path"] = "models/tiny-cls/nowhere"
        active.write_text(json.dumps(doc))
    files.clear_faults()
    shutil.rmtree(files.root / "tiny-cls")  # nothing to download again: the store must do
    began = time.monotonic()
    again = spawn(agents, proc.config, name="dev-1-again")
    eventually(lambda: serves(again, "1.0.0"), timeout=20, what="serving 1.0.0 after restart")
    assert time.monotonic() - began < 20
    assert json.loads(active.read_text())["current"]["ref"]["version"] == "1.0.0"
    assert "from the store" in again.tail(20_000) or damage == "wrong-folder"


def test_a_lost_model_is_installed_again_from_the_retained_desired(
    mosquitto: Callable[..., MosquittoBroker],
    files: FileServer,
    agents: list[AgentProcess],
    built: dict[str, Path],
    key: KeyPair,
    tmp_path: Path,
) -> None:
    broker = mosquitto([(FLEET, "dev-1")])
    proc = start(agents, broker, tmp_path, key)
    with broker.client(*broker.operator) as op:
        deploy(op, ["dev-1"], built["v1"], files, "dep-1")
        op.wait_reported(FLEET, "dev-1", on_version("1.0.0", "dep-1"))
        proc.kill()
        shutil.rmtree(proc.state / "models")
        (proc.state / "active.json").unlink()
        before = len(files.requests_for("model.onnx"))
        again = spawn(agents, proc.config, name="dev-1-again")
        eventually(lambda: serves(again, "1.0.0"), timeout=30, what="1.0.0 installed again")
    assert len(files.requests_for("model.onnx")) > before  # fetched again, not "SUCCEEDED" as-is


def test_a_failed_download_leaves_nothing_behind(
    mosquitto: Callable[..., MosquittoBroker],
    files: FileServer,
    agents: list[AgentProcess],
    built: dict[str, Path],
    key: KeyPair,
    tmp_path: Path,
) -> None:
    broker = mosquitto([(FLEET, "dev-1")])
    proc = start(agents, broker, tmp_path, key)
    tampered = tmp_path / "tampered"
    shutil.copytree(built["v2"], tampered)
    model = tampered / "model.onnx"
    model.write_bytes(b"\x01" + model.read_bytes()[1:])
    with broker.client(*broker.operator) as op:
        deploy(op, ["dev-1"], tampered, files, "dep-bad")
        doc = op.wait_reported(
            FLEET, "dev-1", lambda d: d["phase"] == "FAILED" and d["deploymentId"] == "dep-bad"
        )
        assert "does not match" in doc["error"]
    partial = proc.state / "partial"
    eventually(
        lambda: not partial.exists() or not any(partial.iterdir()),
        timeout=10,
        what="the failed download removed",
    )


def test_a_desired_naming_another_version_with_the_installed_hash_fails(
    mosquitto: Callable[..., MosquittoBroker],
    files: FileServer,
    agents: list[AgentProcess],
    built: dict[str, Path],
    key: KeyPair,
    tmp_path: Path,
) -> None:
    broker = mosquitto([(FLEET, "dev-1")])
    proc = start(agents, broker, tmp_path, key)
    with broker.client(*broker.operator) as op:
        deploy(op, ["dev-1"], built["v1"], files, "dep-1")
        op.wait_reported(FLEET, "dev-1", on_version("1.0.0", "dep-1"))
        liar = desired_doc(
            built["v1"],
            [publish(built["v1"], files.root, files.base_url)],
            deployment_id="dep-liar",
        )
        liar["version"] = "9.9.9"  # the installed manifest's hash, another version
        op.publish(device_topics(FLEET, "dev-1").desired, liar, retain=True).wait_for_publish(10)
        doc = op.wait_reported(
            FLEET, "dev-1", lambda d: d["deploymentId"] == "dep-liar" and d["phase"] == "FAILED"
        )
        assert "9.9.9" in doc["error"] and "1.0.0" in doc["error"]
        assert doc["current"]["version"] == "1.0.0"
    assert serves(proc, "1.0.0")


def test_a_newer_deployment_wins_over_a_replica_dripping_its_manifest(
    mosquitto: Callable[..., MosquittoBroker],
    files: FileServer,
    agents: list[AgentProcess],
    built: dict[str, Path],
    key: KeyPair,
    tmp_path: Path,
) -> None:
    broker = mosquitto([(FLEET, "dev-1")])
    proc = start(agents, broker, tmp_path, key)
    files.fault(f"tiny-cls/2.0.0/{MANIFEST_NAME}", DRIP)
    with broker.client(*broker.operator) as op:
        deploy(op, ["dev-1"], built["v2"], files, "dep-slow")
        op.wait_reported(
            FLEET,
            "dev-1",
            lambda d: d["deploymentId"] == "dep-slow" and d["phase"] == "DOWNLOADING",
        )
        began = time.monotonic()
        deploy(op, ["dev-1"], built["v1"], files, "dep-now")
        op.wait_reported(FLEET, "dev-1", on_version("1.0.0", "dep-now"))
        assert time.monotonic() - began < 15
    assert serves(proc, "1.0.0")


def test_the_agents_config_sets_the_replica_deadline(
    mosquitto: Callable[..., MosquittoBroker],
    files: FileServer,
    agents: list[AgentProcess],
    built: dict[str, Path],
    key: KeyPair,
    tmp_path: Path,
) -> None:
    broker = mosquitto([(FLEET, "dev-1")])
    proc = start(agents, broker, tmp_path, key, download={"replicaDeadline": "2s"})
    slow = publish(built["v1"], files.root / "slow", files.base_url + "/slow", target="slow")
    good = publish(built["v1"], files.root / "good", files.base_url + "/good", target="good")
    files.fault("slow/tiny-cls/1.0.0/model.onnx", DRIP)
    doc = desired_doc(built["v1"], [slow, good], deployment_id="dep-1")
    with broker.client(*broker.operator) as op:
        op.publish(device_topics(FLEET, "dev-1").desired, doc, retain=True).wait_for_publish(10)
        began = time.monotonic()
        op.wait_reported(FLEET, "dev-1", on_version("1.0.0", "dep-1"))
        assert time.monotonic() - began < 20
    assert "too slow for model.onnx" in proc.tail(50_000)
    assert serves(proc, "1.0.0")
