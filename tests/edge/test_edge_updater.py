"""The device-side updater without a broker: download with resume, verify, install, infer.

A real HTTP server (tests/support/http_files.py) plays the presigned URLs, with Range support and faults
on demand; artifacts are real ONNX models signed with real Ed25519 keys.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from edge_agent.download import (
    Cancelled,
    Downloader,
    DownloadError,
    DownloadLimits,
    fetch_file,
    redact_url,
)
from edge_agent.inference import InferenceEngine
from edge_agent.install import Installer, ref_of
from edge_agent.protocol import DesiredState, Phase
from edge_agent.store import StateDir
from edge_agent.telemetry import InferenceStats, percentile, summarize
from fedge.errors import ArtifactError, EdgeError, SignatureError
from fedge.signing import KeyPair, generate_keypair
from tests.support import http_files
from tests.support.edge_artifacts import desired_doc, make_artifact, publish
from tests.support.http_files import Fault, FileServer

files = http_files.files  # the shared fixture, under the name the tests ask for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def key() -> KeyPair:
    return generate_keypair()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory, key: KeyPair) -> Path:
    folder = tmp_path_factory.mktemp("artifact") / "tiny"
    make_artifact(folder, key, version="1.0.0", embedding_dim=256)
    return folder


def desired(artifact: Path, replicas: list[dict[str, Any]], dep: str = "d1") -> DesiredState:
    return DesiredState.from_json(json.dumps(desired_doc(artifact, replicas, deployment_id=dep)))


def test_engine_classifies_with_the_artifact_labels(
    artifact: Path, tmp_path: Path, key: KeyPair
) -> None:
    engine = InferenceEngine(artifact, threads=1)
    predictions = engine.classify(["a good movie", "", "x " * 200])
    assert [p.label for p in predictions] == ["positive"] * 3  # favour=1 biases every answer
    assert all(abs(sum(p.scores.values()) - 1) < 1e-5 for p in predictions)
    engine.health_check()
    other = tmp_path / "neg"
    make_artifact(other, key, version="2.0.0", favour=0)
    assert InferenceEngine(other).classify(["a good movie"])[0].label == "negative"


def test_an_int8_artifact_installs_and_an_unknown_format_is_refused(
    files: FileServer, tmp_path: Path, key: KeyPair
) -> None:
    state = StateDir(tmp_path / "state")
    make_artifact(tmp_path / "q", key, version="8.0.0", int8=True)
    replica = publish(tmp_path / "q", files.root, files.base_url)
    prepared = Installer(state, [key.public]).prepare(
        desired(tmp_path / "q", [replica]), on_phase=lambda *_: None, cancel=threading.Event()
    )
    assert prepared.engine.classify(["good"])[0].label == "positive"
    make_artifact(tmp_path / "pt", key, version="9.0.0", fmt="pytorch")
    replica = publish(tmp_path / "pt", files.root, files.base_url)
    with pytest.raises(EdgeError, match="format 'pytorch' is not one this agent runs"):
        Installer(state, [key.public]).prepare(
            desired(tmp_path / "pt", [replica]), on_phase=lambda *_: None, cancel=threading.Event()
        )
    assert not state.model_dir(ref_of(desired(tmp_path / "pt", [replica]))).exists()


def test_health_check_refuses_logits_that_do_not_match_the_labels(
    tmp_path: Path, key: KeyPair
) -> None:
    make_artifact(tmp_path / "bad", key, logits_width=3)
    with pytest.raises(EdgeError, match=r"logits have shape \[1, 3\]"):
        InferenceEngine(tmp_path / "bad").health_check()


def test_fetch_resumes_a_cut_download_with_a_range_request(
    files: FileServer, artifact: Path, tmp_path: Path
) -> None:
    replica = publish(artifact, files.root, files.base_url)
    url = replica["files"]["model.onnx"]
    size = (artifact / "model.onnx").stat().st_size
    files.fault("tiny-cls/1.0.0/model.onnx", Fault(cut_after=10_000))
    part = tmp_path / "model.onnx.part"
    with pytest.raises(DownloadError) as info:
        fetch_file(url, part, size=size, timeout=10)
    assert info.value.transient
    assert part.stat().st_size == 10_000  # what arrived is kept
    fetch_file(url, part, size=size, timeout=10)
    assert part.read_bytes() == (artifact / "model.onnx").read_bytes()
    ranges = [r.range for r in files.requests_for("model.onnx")]
    assert ranges == [None, "bytes=10000-"]


def test_downloader_skips_a_replica_with_bad_bytes_and_uses_the_next(
    files: FileServer, artifact: Path, tmp_path: Path, key: KeyPair
) -> None:
    good = publish(artifact, files.root / "good", files.base_url + "/good", target="good")
    bad = publish(artifact, files.root / "bad", files.base_url + "/bad", target="bad")
    model = files.root / "bad" / "tiny-cls" / "1.0.0" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    down = {
        **good,
        "target": "down",
        "manifest": "http://127.0.0.1:9/m",
        "signature": "http://127.0.0.1:9/s",
    }
    # The unreachable replica is skipped for the manifest; the bad one serves it, fails on the
    # model's hash, and the good one finishes.
    staging = tmp_path / "staging"
    manifest = Downloader(
        [key.public], limits=DownloadLimits(timeout=5), retry_pause=0.01
    ).download(desired(artifact, [down, bad, good]), staging)
    assert (staging / "model.onnx").read_bytes() == (artifact / "model.onnx").read_bytes()
    assert sorted(p.name for p in staging.iterdir()) == sorted(
        [e.path for e in manifest.files] + ["manifest.json", "manifest.sig"]
    )


def test_bad_bytes_on_every_replica_is_an_integrity_error(
    files: FileServer, artifact: Path, tmp_path: Path, key: KeyPair
) -> None:
    replica = publish(artifact, files.root, files.base_url)
    model = files.root / "tiny-cls" / "1.0.0" / "model.onnx"
    model.write_bytes(b"\x00" + model.read_bytes()[1:])
    with pytest.raises(ArtifactError, match=r"model.onnx: sha256 .* does not match"):
        Downloader([key.public], limits=DownloadLimits(timeout=5)).download(
            desired(artifact, [replica]), tmp_path / "s"
        )
    assert not (tmp_path / "s" / "model.onnx.part").exists()


def test_a_manifest_other_than_the_deployment_names_is_refused_before_any_model_byte(
    files: FileServer, artifact: Path, tmp_path: Path, key: KeyPair
) -> None:
    replica = publish(artifact, files.root, files.base_url)
    doc = desired_doc(artifact, [replica], deployment_id="d1")
    doc["manifestSha256"] = "0" * 64
    with pytest.raises(ArtifactError, match="manifest.json: sha256 .* differs"):
        Downloader([key.public], limits=DownloadLimits(timeout=5)).download(
            DesiredState.from_json(json.dumps(doc)), tmp_path / "s"
        )
    assert files.requests_for("model.onnx") == []


def test_unreachable_replicas_are_a_transient_failure(
    artifact: Path, tmp_path: Path, key: KeyPair
) -> None:
    replica = {
        "manifest": "http://127.0.0.1:9/m.json",
        "signature": "http://127.0.0.1:9/m.sig",
        "files": {"model.onnx": "http://127.0.0.1:9/model.onnx"},
    }
    with pytest.raises(DownloadError) as info:
        Downloader([key.public], limits=DownloadLimits(timeout=2)).download(
            desired(artifact, [replica]), tmp_path / "s"
        )
    assert info.value.transient


def test_a_download_can_be_cancelled_midway_and_keeps_its_bytes(
    files: FileServer, artifact: Path, tmp_path: Path, key: KeyPair
) -> None:
    replica = publish(artifact, files.root, files.base_url)
    files.fault("tiny-cls/1.0.0/model.onnx", Fault(bytes_per_second=40_000))
    cancel = threading.Event()
    seen: list[int] = []

    def progress(done: int, _total: int) -> None:
        seen.append(done)
        if done > 20_000:
            cancel.set()

    with pytest.raises(Cancelled):
        Downloader(
            [key.public], limits=DownloadLimits(timeout=5), cancel=cancel, on_progress=progress
        ).download(desired(artifact, [replica]), tmp_path / "s")
    assert (tmp_path / "s" / "model.onnx.part").stat().st_size > 20_000
    assert seen == sorted(seen)


def test_file_urls_serve_the_demo_local_stores(
    artifact: Path, tmp_path: Path, key: KeyPair
) -> None:
    from tests.support.edge_artifacts import publish as publish_to

    replica = publish_to(artifact, tmp_path / "store", (tmp_path / "store").as_uri())
    manifest = Downloader([key.public]).download(desired(artifact, [replica]), tmp_path / "s")
    assert (tmp_path / "s" / "model.onnx").stat().st_size == next(
        e.size for e in manifest.files if e.path == "model.onnx"
    )


def test_presigned_signatures_never_reach_the_logs() -> None:
    url = "https://bucket.s3.example/a/model.onnx?X-Amz-Signature=deadbeef&X-Amz-Credential=AK"
    assert redact_url(url) == "https://bucket.s3.example/a/model.onnx"


def test_installer_installs_a_verified_artifact_and_refuses_an_untrusted_signer(
    files: FileServer, artifact: Path, tmp_path: Path, key: KeyPair
) -> None:
    state = StateDir(tmp_path / "state")
    phases: list[Phase] = []
    on_phase = lambda phase, _error, _progress: phases.append(phase)  # noqa: E731
    replica = publish(artifact, files.root, files.base_url)
    prepared = Installer(state, [key.public]).prepare(
        desired(artifact, [replica]), on_phase=on_phase, cancel=threading.Event()
    )
    assert prepared.folder == state.model_dir(prepared.ref)
    assert prepared.engine.classify(["good"])[0].label == "positive"
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == [
        Phase.DOWNLOADING, Phase.VERIFYING, Phase.ACTIVATING,
    ]  # fmt: skip
    assert list(state.partial_root.iterdir()) == []  # the staging folder became the install

    stranger = generate_keypair()
    other = tmp_path / "other"
    make_artifact(other, stranger, version="6.6.6")
    replica = publish(other, files.root, files.base_url)
    with pytest.raises(SignatureError, match="not among the trusted keys"):
        Installer(state, [key.public]).prepare(
            desired(other, [replica], "d2"), on_phase=on_phase, cancel=threading.Event()
        )
    assert not (state.models_root / "tiny-cls" / "6.6.6").exists()


def test_state_dir_birth_sequence_grows_and_one_agent_holds_the_lock(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    assert state.birth_seq == 0
    assert [state.next_birth_seq() for _ in range(3)] == [1, 2, 3]
    assert StateDir(tmp_path / "s").birth_seq == 3
    state.lock()
    with pytest.raises(EdgeError, match="another agent"):
        StateDir(tmp_path / "s").lock()
    state.unlock()
    StateDir(tmp_path / "s").lock()


def test_corrupt_state_records_are_treated_as_absent(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    (state.root / "active.json").write_text("{broken", encoding="utf-8")
    (state.root / "deployment.json").write_text('{"schema": 9}', encoding="utf-8")
    assert state.read_active() is None
    assert state.read_deployment() is None


def test_percentiles_and_windows() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0
    summary = summarize([(1.0, True), (9.0, True), (100.0, False)])
    assert (summary.count, summary.errors, summary.p50_ms) == (3, 1, 1.0)
    assert summary.error_rate == pytest.approx(1 / 3)
    stats = InferenceStats(health_window=2)
    for latency in (5.0, 6.0, 7.0):
        stats.record(latency, ok=True)
    window, _seconds = stats.take_window()
    assert window.count == 3
    assert stats.take_window()[0].count == 0
    assert stats.health().count == 2  # the health window keeps only the latest
    stats.reset_health()
    assert stats.health().count == 0 and stats.total_count == 3
