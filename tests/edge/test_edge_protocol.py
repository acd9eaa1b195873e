"""The MQTT contract (edge_agent.protocol): topics, payload round trips, refusals, import weight."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.protocol import (
    RETAINED,
    ArtifactRef,
    Channel,
    Command,
    CommandMessage,
    DesiredState,
    Phase,
    Presence,
    ProtocolError,
    ReportedState,
    StatusMessage,
    TelemetryMessage,
    decode,
    device_topics,
    fleet_filter,
    parse_topic,
    utc_now,
)
from tests.conftest import REPO

SHA = "ab" * 32


def desired_dict(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": 1,
        "deploymentId": "rollout-7",
        "artifact": "tiny-cls",
        "version": "1.2.0",
        "manifestSha256": SHA,
        "replicas": [
            {
                "target": "s3-eu",
                "provider": "s3",
                "region": "eu-west-1",
                "residency": "eu",
                "expires": "2030-01-01T00:00:00Z",
                "manifest": "https://s3.example/b/tiny-cls/1.2.0/manifest.json?X-Amz-Signature=x",
                "signature": "https://s3.example/b/tiny-cls/1.2.0/manifest.sig?X-Amz-Signature=y",
                "files": {"model.onnx": "https://s3.example/b/tiny-cls/1.2.0/model.onnx?sig=z"},
            }
        ],
        "settings": {"publishResults": True, "telemetryInterval": 5},
    }
    doc.update(overrides)
    return doc


def test_topics_form_one_subtree_per_device() -> None:
    topics = device_topics("clinics", "clinic-a-01")
    assert topics.desired == "fedge/v1/clinics/clinic-a-01/desired"
    assert topics.cmd == "fedge/v1/clinics/clinic-a-01/cmd"
    assert topics.subtree == "fedge/v1/clinics/clinic-a-01/#"
    assert all(topics.of(channel).startswith(topics.subtree[:-1]) for channel in Channel)
    assert fleet_filter(Channel.REPORTED, fleet="clinics") == "fedge/v1/clinics/+/reported"
    assert fleet_filter(Channel.STATUS) == "fedge/v1/+/+/status"
    assert {Channel.DESIRED, Channel.REPORTED, Channel.STATUS} == RETAINED
    assert parse_topic(topics.reported) == ("clinics", "clinic-a-01", Channel.REPORTED)
    for other in ("fedge/v1/clinics/x/unknown", "fedge/v2/a/b/desired", "fedge/v1/a/b", "x"):
        assert parse_topic(other) is None


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "a b", "-lead", "x" * 65])
def test_topic_ids_refuse_what_would_break_a_topic_or_an_acl(bad: str) -> None:
    with pytest.raises(ValueError, match="topic-safe"):
        device_topics("fleet", bad)


def test_desired_round_trips_with_camel_case_and_a_schema_field() -> None:
    raw = json.dumps(desired_dict()).encode()
    desired = DesiredState.from_json(raw)
    assert desired.deployment_id == "rollout-7"
    assert desired.replicas[0].files["model.onnx"].endswith("sig=z")
    assert desired.settings.publish_results is True
    dumped = json.loads(desired.to_json())
    assert dumped["schema"] == 1
    assert dumped["manifestSha256"] == SHA
    assert DesiredState.from_json(desired.to_json()) == desired


def test_reported_status_and_telemetry_round_trip() -> None:
    now = utc_now()
    ref = ArtifactRef(name="tiny-cls", version="1.2.0", manifest_sha256=SHA)
    messages = [
        ReportedState(
            device_id="d", fleet="f", phase=Phase.FAILED, error="x", birth_seq=3, ts=now,
            current=ref,
        ),
        StatusMessage(device_id="d", state=Presence.OFFLINE, birth_seq=3, ts=now),
        TelemetryMessage(
            device_id="d", birth_seq=3, ts=now, window_s=1.0, count=2, errors=0, p50_ms=1.5,
            p95_ms=2.0, total_count=9, total_errors=1, current=ref,
        ),
        CommandMessage(command=Command.ROLLBACK, request_id="r1"),
    ]  # fmt: skip
    for message in messages:
        again = type(message).from_json(message.to_json())
        assert again == message
        assert json.loads(message.to_json())["schema"] == 1
    assert Phase.ROLLED_BACK.is_terminal and not Phase.DOWNLOADING.is_terminal


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty payload"),
        (b"{not json", "not a JSON document"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"deploymentId": "x"}', "no 'schema' field"),
        (json.dumps(desired_dict(schema=2)).encode(), "schema 2 is not supported"),
        (json.dumps(desired_dict(schema=True)).encode(), "schema true is not supported"),
        (json.dumps(desired_dict(manifestSha256="nothex")).encode(), "manifestSha256"),
        (json.dumps(desired_dict(replicas=[])).encode(), "replicas"),
        (json.dumps(desired_dict(extra=1)).encode(), "extra"),
        (json.dumps(desired_dict(deploymentId=5)).encode(), "deploymentId"),
        (b"\xff\xfe", "not a JSON document"),
    ],
)
def test_malformed_desired_is_one_line_protocol_error(payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        decode(DesiredState, payload, channel="desired")
    assert str(info.value).startswith("desired: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    ["ftp://host/x", "javascript:alert(1)", "http://", "file://relative/path", "http://h/a b"],
)
def test_replica_urls_are_http_https_or_absolute_file(url: str) -> None:
    doc = desired_dict()
    doc["replicas"][0]["files"]["model.onnx"] = url
    with pytest.raises(ProtocolError, match="replicas"):
        decode(DesiredState, json.dumps(doc).encode(), channel="desired")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
).map(lambda value: json.dumps(value).encode())))  # fmt: skip
def test_any_bytes_decode_or_raise_protocol_error(payload: bytes) -> None:
    for model in (DesiredState, CommandMessage, ReportedState):
        try:
            decode(model, payload, channel="x")
        except ProtocolError as exc:
            assert "\n" not in str(exc)


def test_protocol_imports_neither_paho_nor_onnxruntime() -> None:
    """The controller imports edge_agent.protocol; it must stay values-only."""
    code = (
        "import json, sys, edge_agent.protocol\n"
        "print(json.dumps([m for m in ('paho', 'onnxruntime', 'tokenizers', 'numpy', 'torch') "
        "if m in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert json.loads(result.stdout) == []


def test_no_edge_module_loads_a_heavy_library() -> None:
    """Every edge_agent module, imported in a fresh interpreter where torch and flwr exist."""
    modules = sorted(
        "edge_agent." + path.stem
        for path in (REPO / "edge_agent").glob("*.py")
        if path.stem != "__init__"
    )
    assert "edge_agent.agent" in modules and "edge_agent.link" in modules
    heavy = ["torch", "flwr", "opacus", "transformers", "libcloud", "tenseal", "peft", "ray"]
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(json.dumps([h for h in {heavy!r} if h in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert json.loads(result.stdout) == []


def test_a_placement_replica_is_a_desired_replica(tmp_path: Path) -> None:
    """The controller passes ``fedge place urls`` output on unchanged (contract with placement)."""
    from fedge.replica_urls import ReplicaURLs

    local = (tmp_path / "region a" / "tiny-cls" / "1.0.0").as_uri()
    for urls in (
        ReplicaURLs(
            target="s3-eu", provider="s3", region="eu-west-1", residency="eu",
            expires="2030-01-01T00:00:00Z",
            manifest="http://127.0.0.1:9000/b/tiny-cls/1.0.0/manifest.json?X-Amz-Signature=a",
            signature="http://127.0.0.1:9000/b/tiny-cls/1.0.0/manifest.sig?X-Amz-Signature=b",
            files={"model.onnx": "http://127.0.0.1:9000/b/tiny-cls/1.0.0/model.onnx?sig=c"},
        ),
        ReplicaURLs(
            target="local-a", provider="local", region="a", residency="eu", expires=None,
            manifest=f"{local}/manifest.json", signature=f"{local}/manifest.sig",
            files={"model.onnx": f"{local}/model.onnx"},
        ),
    ):  # fmt: skip
        doc = desired_dict(replicas=[urls.to_dict()])
        desired = decode(DesiredState, json.dumps(doc).encode(), channel="desired")
        assert desired.replicas[0].files == urls.files
