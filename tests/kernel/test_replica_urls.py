"""The replica-URL document (fedge.replica_urls): its bytes, a round trip, and that what placement
writes is what the edge agent reads, with the agent's refusals worded as before."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from edge_agent.protocol import DesiredState, ProtocolError, Replica, decode
from fedge.replica_urls import (
    FIELDS,
    LOCATION_FIELDS,
    URL_FIELDS,
    URL_MAX_LENGTH,
    URL_PATTERN,
    ReplicaURLs,
    urls_document,
)

SHA = "ab" * 32
S3 = ReplicaURLs(
    target="s3-eu", provider="s3", region="eu-west-1", residency="eu",
    expires="2030-01-01T00:00:00Z",
    manifest="https://s3.example/b/tiny-cls/1.0.0/manifest.json?X-Amz-Signature=a",
    signature="https://s3.example/b/tiny-cls/1.0.0/manifest.sig?X-Amz-Signature=b",
    files={
        "tokenizer.json": "https://s3.example/b/tiny-cls/1.0.0/tokenizer.json?sig=d",
        "model.onnx": "https://s3.example/b/tiny-cls/1.0.0/model.onnx?sig=c",
    },
)  # fmt: skip
LOCAL = ReplicaURLs(
    target="local-a", provider="local", region="a", residency="eu", expires=None,
    manifest="file:///srv/a/tiny-cls/1.0.0/manifest.json",
    signature="file:///srv/a/tiny-cls/1.0.0/manifest.sig",
    files={"model.onnx": "file:///srv/a/tiny-cls/1.0.0/model.onnx"},
)  # fmt: skip
# What `fedge place urls -o urls.json` wrote before the shape moved to the kernel, byte for byte.
URLS_JSON = """{
  "artifact": "tiny-cls",
  "version": "1.0.0",
  "replicas": [
    {
      "target": "s3-eu",
      "provider": "s3",
      "region": "eu-west-1",
      "residency": "eu",
      "expires": "2030-01-01T00:00:00Z",
      "manifest": "https://s3.example/b/tiny-cls/1.0.0/manifest.json?X-Amz-Signature=a",
      "signature": "https://s3.example/b/tiny-cls/1.0.0/manifest.sig?X-Amz-Signature=b",
      "files": {
        "model.onnx": "https://s3.example/b/tiny-cls/1.0.0/model.onnx?sig=c",
        "tokenizer.json": "https://s3.example/b/tiny-cls/1.0.0/tokenizer.json?sig=d"
      }
    },
    {
      "target": "local-a",
      "provider": "local",
      "region": "a",
      "residency": "eu",
      "expires": null,
      "manifest": "file:///srv/a/tiny-cls/1.0.0/manifest.json",
      "signature": "file:///srv/a/tiny-cls/1.0.0/manifest.sig",
      "files": {
        "model.onnx": "file:///srv/a/tiny-cls/1.0.0/model.onnx"
      }
    }
  ]
}
"""


def desired_with(*replicas: object) -> bytes:
    return json.dumps(
        {
            "schema": 1,
            "deploymentId": "d-1",
            "artifact": "tiny-cls",
            "version": "1.0.0",
            "manifestSha256": SHA,
            "replicas": list(replicas),
        }
    ).encode()


def test_the_document_keeps_its_bytes() -> None:
    document = urls_document("tiny-cls", "1.0.0", [S3, LOCAL])
    assert json.dumps(document, indent=2) + "\n" == URLS_JSON
    assert tuple(document["replicas"][0]) == FIELDS


@pytest.mark.parametrize("replica", [S3, LOCAL])
def test_an_entry_round_trips(replica: ReplicaURLs) -> None:
    back = ReplicaURLs.from_dict(json.loads(json.dumps(replica.to_dict())))
    assert back == replica
    assert back.to_dict() == replica.to_dict()


def test_only_the_urls_are_required() -> None:
    bare = {"manifest": LOCAL.manifest, "signature": LOCAL.signature, "files": LOCAL.files}
    entry = ReplicaURLs.from_dict(bare)
    assert all(getattr(entry, name) is None for name in LOCATION_FIELDS)
    assert decode(DesiredState, desired_with(bare)).replicas[0].files == LOCAL.files


def test_the_agents_reader_has_the_kernels_fields_and_url_rule() -> None:
    assert set(Replica.model_fields) == set(FIELDS)
    required = {name for name, info in Replica.model_fields.items() if info.is_required()}
    assert required == set(URL_FIELDS)
    rule = json.dumps(Replica.model_json_schema()["properties"]["manifest"])
    assert json.dumps(URL_PATTERN)[1:-1] in rule and str(URL_MAX_LENGTH) in rule


def test_placement_output_is_accepted_by_the_agent(tmp_path: Path) -> None:
    """A real placement on a local store, its ``urls.json``, each entry read by the agent."""
    from cloud_adapters.placement.local_artifact import load_local_artifact
    from cloud_adapters.placement.reconciler import Reconciler
    from cloud_adapters.placement.state import PlacementState
    from cloud_adapters.placement.urls import replica_urls
    from cloud_adapters.stores.factory import open_store
    from fedge.artifact import sign_artifact
    from fedge.signing import generate_keypair
    from policies.documents import CloudInventory, PlacementPolicy
    from tests.support.cloud_servers import inventory_document, local_target, placement_document

    keypair = generate_keypair()
    artifact = tmp_path / "artifact"
    (artifact / "tokenizer").mkdir(parents=True)
    (artifact / "model.onnx").write_bytes(b"\0" * 1024)
    (artifact / "tokenizer" / "vocab v1+2.txt").write_bytes(b"[PAD]\nhello\n")
    sign_artifact(
        artifact, keypair, name="tiny-cls", version="1.0.0", format="onnx-int8",
        labels={"app": "tiny"},
    )  # fmt: skip
    local = load_local_artifact(artifact, trusted=[keypair.public])
    inventory = CloudInventory.model_validate(inventory_document([local_target(tmp_path / "s")]))
    policy = PlacementPolicy.model_validate(
        placement_document(
            {
                "artifacts": {"matchLabels": {"app": "tiny"}},
                "residency": ["eu"],
                "replicas": {"min": 1, "max": 1},
            }
        )
    )
    with PlacementState(tmp_path / "state.sqlite") as state:
        Reconciler(policy, inventory, state, open_store=open_store).apply(local)
        found = replica_urls(state, inventory, "tiny-cls", "1.0.0", open_store=open_store)
    assert [entry.target for entry in found] == ["eu-local"]
    written = json.dumps(urls_document("tiny-cls", "1.0.0", found), indent=2) + "\n"
    replicas = json.loads(written)["replicas"]
    desired = decode(DesiredState, desired_with(*replicas), channel="desired")
    assert desired.replicas[0].model_dump() == found[0].to_dict()
    assert [ReplicaURLs.from_dict(entry) for entry in replicas] == found


GOOD: dict[str, Any] = {
    "manifest": "https://h/m.json",
    "signature": "https://h/m.sig",
    "files": {"model.onnx": "https://h/model.onnx"},
}


@pytest.mark.parametrize(
    ("entry", "agent", "kernel"),
    [
        (
            {k: v for k, v in GOOD.items() if k != "manifest"},
            "replicas.0.manifest: Field required",
            "manifest: missing",
        ),
        (
            {**GOOD, "files": {"model.onnx": "ftp://h/x"}},
            f"replicas.0.files.model.onnx: String should match pattern '{URL_PATTERN}'",
            "files.model.onnx: not an http(s):// or absolute file:// URL",
        ),
        (
            {**GOOD, "files": {}},
            "replicas.0.files: Dictionary should have at least 1 item after validation, not 0",
            "files: expected a non-empty object of path -> URL",
        ),
        (
            {**GOOD, "bucket": "x"},
            "replicas.0.bucket: Extra inputs are not permitted",
            "bucket: unknown field",
        ),
        (
            {**GOOD, "target": 5},
            "replicas.0.target: Input should be a valid string",
            "target: expected a string or null",
        ),
        (
            {**GOOD, "manifest": "https://h/" + "a" * 9000},
            "replicas.0.manifest: String should have at most 8192 characters",
            "manifest: URL longer than 8192 characters",
        ),
        ("x", "replicas.0: Input should be an object", "expected an object, got str"),
        (
            {**GOOD, "files": ["https://h/x"]},
            "replicas.0.files: Input should be an object",
            "files: expected a non-empty object of path -> URL",
        ),
    ],
)
def test_malformed_entries_are_refused_by_both_readers(
    entry: object, agent: str, kernel: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(DesiredState, desired_with(entry), channel="desired")
    assert str(info.value) == f"desired: {agent}"
    with pytest.raises(ValueError, match=f"^{re.escape(kernel)}$"):
        ReplicaURLs.from_dict(entry)
