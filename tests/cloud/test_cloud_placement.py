"""Placement end to end against real endpoints: moto (S3 API), Azurite (Azure Blob), LOCAL.

A signed artifact is planned and applied to all three, then fetched back through each replica's
presigned URL with urllib and its signature verified, as an edge device would. Then the hard
cases: residency, a refused policy, the S3 endpoint frozen in the middle of an apply (failover,
degraded state, nothing half-written visible, return once it answers), drift repair, retention
with a deployed version, and immutable versions.
"""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloud_adapters.placement.local_artifact import load_local_artifact
from cloud_adapters.placement.planner import plan_placement
from cloud_adapters.placement.reconciler import Reconciler
from cloud_adapters.placement.replicas import Event
from cloud_adapters.placement.state import PlacementState
from cloud_adapters.placement.urls import replica_urls
from cloud_adapters.stores.base import ArtifactStore
from cloud_adapters.stores.errors import PlacementRefusedError
from cloud_adapters.stores.factory import open_store
from cloud_adapters.stores.retry import RetryPolicy
from fedge.artifact import sign_artifact, verify_artifact
from fedge.errors import SignatureError, UsageError
from fedge.signing import KeyPair, generate_keypair
from policies.documents import CloudInventory, PlacementPolicy
from policies.inventory import Target
from tests.support.cloud_servers import (
    AzuriteServer,
    MotoServer,
    azure_target,
    azurite,  # noqa: F401 - pytest fixture
    inventory_document,
    local_target,
    moto,  # noqa: F401 - pytest fixture
    placement_document,
    s3_target,
    unique,
)

FAST = RetryPolicy(attempts=2, base_delay_s=0.05, max_delay_s=0.1, timeout_s=10.0)
FREEZE = RetryPolicy(attempts=2, base_delay_s=0.05, max_delay_s=0.1, timeout_s=1.0)
FILES = {
    "model.onnx": os.urandom(96 * 1024),
    "tokenizer/vocab.txt": b"[PAD]\n[UNK]\nhello\nworld\n",
    "extras/notes v1+2.txt": b"names with spaces and plus signs must survive presigning\n",
}


def make_artifact(
    folder: Path, keypair: KeyPair, *, version: str = "1.0", created: str | None = None
) -> Path:
    for relative, data in FILES.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    sign_artifact(
        folder,
        keypair,
        name="sentiment",
        version=version,
        format="onnx-int8",
        labels={"app": "sentiment"},
        created=created,
    )
    return folder


@dataclass
class World:
    """Four targets: three in the EU (one per provider) and one local store in the US."""

    moto: MotoServer
    azurite: AzuriteServer
    bucket: str
    container: str
    eu_local: Path
    us_local: Path
    inventory: CloudInventory
    keypair: KeyPair
    tmp: Path

    def policy(self, **spec: object) -> PlacementPolicy:
        base: dict[str, object] = {
            "artifacts": {"matchLabels": {"app": "sentiment"}},
            "residency": ["eu"],
            "replicas": {"min": 3, "max": 3},
            "spread": {"minProviders": 3},
            "strategy": {"type": "ordered", "preference": ["eu-s3", "eu-azure", "eu-local"]},
        }
        base.update(spec)
        return PlacementPolicy.model_validate(placement_document(base))

    def artifact(self, version: str = "1.0", created: str | None = None) -> Path:
        return make_artifact(
            self.tmp / f"artifact-{version}", self.keypair, version=version, created=created
        )

    def reconciler(
        self, policy: PlacementPolicy, state: PlacementState, events: list[Event] | None = None
    ) -> Reconciler:
        def sink(event: Event) -> None:
            if events is not None:
                events.append(event)

        return Reconciler(
            policy,
            self.inventory,
            state,
            open_store=lambda target: open_store(target, retry=FAST),
            on_event=sink,
        )

    def target(self, name: str) -> Target:
        return next(t for t in self.inventory.spec.targets if t.name == name)

    def azure_driver(self) -> Any:
        return self.azurite.driver()


@pytest.fixture
def world(moto: MotoServer, azurite: AzuriteServer, tmp_path: Path) -> World:  # noqa: F811
    bucket, container = unique("fedge-s3"), unique("fedge-az")
    moto.create_bucket(bucket)
    azurite.create_container(container)
    eu_local, us_local = tmp_path / "store-eu", tmp_path / "store-us"
    inventory = CloudInventory.model_validate(
        inventory_document(
            [
                s3_target(moto, bucket),
                azure_target(azurite, container),
                local_target(eu_local),
                local_target(us_local, name="us-local", residency="us", price=0.001),
            ]
        )
    )
    return World(
        moto,
        azurite,
        bucket,
        container,
        eu_local,
        us_local,
        inventory,
        generate_keypair(),
        tmp_path,
    )


def download_replica(urls: dict[str, object], destination: Path) -> Path:
    """What an edge device does: plain HTTP(S) GETs of the presigned URLs, nothing else."""
    files = dict(urls["files"])  # type: ignore[call-overload]
    wanted = {"manifest.json": urls["manifest"], "manifest.sig": urls["signature"], **files}
    for relative, url in wanted.items():
        path = destination / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(str(url), timeout=10) as response:  # noqa: S310
            path.write_bytes(response.read())
    return destination


def test_a_signed_artifact_is_placed_on_all_three_and_verifies_from_each_presigned_url(
    world: World,
) -> None:
    policy = world.policy()
    folder = world.artifact()
    local = load_local_artifact(folder, trusted=[world.keypair.public])
    plan = plan_placement(policy, world.inventory, local.manifest)
    assert plan.selected == ("eu-s3", "eu-azure", "eu-local")
    assert plan.decision("us-local").decision == "rejected"
    assert "residency us not allowed" in plan.decision("us-local").reason

    with PlacementState(world.tmp / "state.sqlite") as state:
        report = world.reconciler(policy, state).apply(local)
        assert report.health == "ok"
        assert set(report.outcomes) == {"eu-s3", "eu-azure", "eu-local"}
        assert report.objects_uploaded == 3 * len(local.files)
        urls = replica_urls(
            state,
            world.inventory,
            "sentiment",
            "1.0",
            open_store=lambda target: open_store(target, retry=FAST),
            expires_s=600,
        )
    assert [u.target for u in urls] == ["eu-s3", "eu-azure", "eu-local"]
    assert (
        urls[0].manifest.startswith(world.moto.endpoint) and "X-Amz-Signature=" in urls[0].manifest
    )
    assert "sig=" in urls[1].manifest and "sp=r" in urls[1].manifest
    assert urls[2].manifest.startswith("file://") and urls[2].expires is None
    for entry in urls:
        fetched = download_replica(entry.to_dict(), world.tmp / f"device-{entry.target}")
        manifest = verify_artifact(fetched, [world.keypair.public])
        assert manifest.digest == local.manifest.digest
        assert (fetched / "extras/notes v1+2.txt").read_bytes() == FILES["extras/notes v1+2.txt"]
    # The residency rule held: nothing was written to the US store.
    assert not any(p.is_file() for p in world.us_local.rglob("*"))


def test_a_tampered_replica_fails_verification_on_the_device(world: World) -> None:
    policy = world.policy(replicas={"min": 1, "max": 1}, spread={"minProviders": 1})
    local = load_local_artifact(world.artifact())
    with PlacementState(world.tmp / "state.sqlite") as state:
        world.reconciler(policy, state).apply(local)
        urls = replica_urls(
            state, world.inventory, "sentiment", "1.0",
            open_store=lambda target: open_store(target, retry=FAST),
        )  # fmt: skip
    assert [u.target for u in urls] == ["eu-s3"]
    fetched = download_replica(urls[0].to_dict(), world.tmp / "device")
    other = generate_keypair()
    with pytest.raises(SignatureError):
        verify_artifact(fetched, [other.public])


def test_reapplying_uploads_nothing_that_is_intact(world: World) -> None:
    policy = world.policy()
    local = load_local_artifact(world.artifact())
    with PlacementState(world.tmp / "state.sqlite") as state:
        world.reconciler(policy, state).apply(local)
        events: list[Event] = []
        again = world.reconciler(policy, state, events).apply(local)
    assert again.objects_uploaded == 0
    assert again.health == "ok"
    assert not [e for e in events if e.kind == "upload"]
    assert {e.target for e in events if e.kind == "intact"} == {"eu-s3", "eu-azure", "eu-local"}


def test_a_fresh_state_adopts_intact_replicas_without_uploading(world: World) -> None:
    policy = world.policy()
    local = load_local_artifact(world.artifact())
    with PlacementState(world.tmp / "first.sqlite") as state:
        world.reconciler(policy, state).apply(local)
    with PlacementState(world.tmp / "second.sqlite") as state:
        report = world.reconciler(policy, state).apply(local)
    assert report.objects_uploaded == 0


def test_a_residency_policy_never_places_outside_the_eu_even_when_eu_targets_are_down(
    world: World,
) -> None:
    policy = world.policy(
        replicas={"min": 1, "max": 2},
        spread={"minProviders": 1},
        strategy={"type": "anyOf"},
    )
    local = load_local_artifact(world.artifact())
    everything_down = {"eu-s3": "down", "eu-azure": "down", "eu-local": "down"}
    plan = plan_placement(policy, world.inventory, local.manifest, down=everything_down)
    assert plan.selected == ()
    assert plan.decision("us-local").decision == "rejected"  # cheapest, yet never chosen
    with PlacementState(world.tmp / "state.sqlite") as state:
        report = world.reconciler(policy, state).apply(local)
    assert "us-local" not in report.plan.selected
    assert set(report.plan.selected) <= {"eu-s3", "eu-azure", "eu-local"}
    assert not any(p.is_file() for p in world.us_local.rglob("*"))


def test_an_unsatisfiable_policy_is_refused_before_any_upload(world: World) -> None:
    policy = world.policy(replicas={"min": 4, "max": 4}, spread={"minProviders": 1})
    local = load_local_artifact(world.artifact())
    events: list[Event] = []
    with PlacementState(world.tmp / "state.sqlite") as state:
        with pytest.raises(PlacementRefusedError, match="replicas.min is 4") as refused:
            world.reconciler(policy, state, events).apply(local)
        assert state.versions() == []
    assert refused.value.exit_code == 2
    assert events == []  # not even a listing
    assert not any(p.is_file() for p in world.eu_local.rglob("*"))
    assert (
        world.azure_driver().list_container_objects(
            world.azure_driver().get_container(world.container)
        )
        == []
    )


def test_the_s3_endpoint_stopping_mid_apply_fails_over_and_comes_back(world: World) -> None:
    """moto is frozen with SIGSTOP after the first object lands on S3: connections hang, as
    with a dead host, while its data survives to be inspected once it answers again."""
    policy = world.policy(replicas={"min": 2, "max": 2}, spread={"minProviders": 2})
    folder = world.artifact()
    big = folder / "model.onnx"
    big.write_bytes(os.urandom(9 * 1024 * 1024))  # multipart on S3
    sign_artifact(
        folder, world.keypair, name="sentiment", version="1.0", format="onnx-int8",
        labels={"app": "sentiment"},
    )  # fmt: skip
    local = load_local_artifact(folder)
    events: list[Event] = []

    def freeze_after_first_s3_object(event: Event) -> None:
        events.append(event)
        if event.kind == "uploaded" and event.target == "eu-s3" and not world.moto.paused:
            world.moto.pause()

    def stores(target: Target) -> ArtifactStore:
        # A short timeout for the frozen endpoint only: a loaded test machine must not make
        # the healthy ones look down.
        return open_store(target, retry=FREEZE if target.name == "eu-s3" else FAST)

    with PlacementState(world.tmp / "state.sqlite") as state:
        reconciler = Reconciler(
            policy, world.inventory, state, open_store=stores, on_event=freeze_after_first_s3_object
        )
        try:
            report = reconciler.apply(local)
        finally:
            world.moto.resume()
        assert report.health == "degraded"
        assert report.plan.preferred == ("eu-s3", "eu-azure")
        assert report.plan.selected == ("eu-azure", "eu-local")
        assert "eu-s3" in report.down
        assert not [e for e in events if e.kind == "remove"]  # a down target is left alone
        record = state.version("sentiment", "1.0")
        assert record is not None and record.health == "degraded"
        assert "eu-s3 down" in record.detail
        replicas = {r.target: r.status for r in state.replicas("sentiment", "1.0")}
        assert replicas == {"eu-s3": "partial", "eu-azure": "intact", "eu-local": "intact"}
        # Nothing half-written is visible: no commit marker on S3, and no URL for it.
        s3 = open_store(world.target("eu-s3"), retry=FAST)
        leftovers = s3.list("sentiment/1.0/")
        assert leftovers, "the first object should have landed before the freeze"
        assert "sentiment/1.0/manifest.sig" not in leftovers
        shared = replica_urls(
            state, world.inventory, "sentiment", "1.0",
            open_store=lambda target: open_store(target, retry=FAST),
        )  # fmt: skip
        assert [u.target for u in shared] == ["eu-azure", "eu-local"]

        # S3 answers again: the next apply moves the replica back and drops the stand-in.
        back = world.reconciler(policy, state).apply(local)
        assert back.health == "ok"
        assert back.plan.selected == ("eu-s3", "eu-azure")
        assert ("1.0", "eu-local", back.removed[0][2]) in back.removed
        assert {r.target for r in state.replicas("sentiment", "1.0")} == {"eu-s3", "eu-azure"}
        assert "sentiment/1.0/manifest.sig" in s3.list("sentiment/1.0/")
        assert not (world.eu_local / "sentiment" / "1.0").exists()
    assert [e for e in events if e.kind == "down" and e.target == "eu-s3"]


def test_a_replica_deleted_or_corrupted_behind_fedges_back_is_restored(world: World) -> None:
    policy = world.policy()
    local = load_local_artifact(world.artifact())
    with PlacementState(world.tmp / "state.sqlite") as state:
        world.reconciler(policy, state).apply(local)
        # Delete the Azure replica's model and corrupt the S3 one's vocabulary, out of band.
        azure = world.azure_driver()
        azure.delete_object(azure.get_object(world.container, "sentiment/1.0/model.onnx"))
        s3 = open_store(world.target("eu-s3"), retry=FAST)
        tampered = world.tmp / "tampered.txt"
        tampered.write_bytes(b"[PAD]\n[UNK]\nhellO\nworld\n")  # same size, other bytes
        behind = world.moto.driver()
        behind.upload_object(
            str(tampered), behind.get_container(world.bucket), "sentiment/1.0/tokenizer/vocab.txt"
        )
        (world.eu_local / "sentiment" / "1.0" / "manifest.sig").unlink()

        events: list[Event] = []
        report = world.reconciler(policy, state, events).apply(local)
    repaired = {(e.target, e.detail) for e in events if e.kind == "upload"}
    assert ("eu-azure", "model.onnx") in repaired
    assert ("eu-s3", "tokenizer/vocab.txt") in repaired
    assert ("eu-local", "manifest.sig") in repaired
    assert ("eu-s3", "model.onnx") not in repaired  # intact objects are left alone
    assert {e.target for e in events if e.kind == "hide"} == {"eu-azure", "eu-s3"}
    assert report.health == "ok"
    s3_after = s3.stat("sentiment/1.0/tokenizer/vocab.txt")
    assert s3_after is not None and s3.matches(s3_after, local.file("tokenizer/vocab.txt"))


def test_retention_removes_old_versions_but_keeps_a_deployed_ones_last_replica(
    world: World,
) -> None:
    policy = world.policy(
        replicas={"min": 2, "max": 2}, spread={"minProviders": 2}, retention={"keepVersions": 1}
    )
    with PlacementState(world.tmp / "state.sqlite") as state:
        reconciler = world.reconciler(policy, state)
        v1 = load_local_artifact(world.artifact("1.0", created="2026-01-01T00:00:00Z"))
        reconciler.apply(v1)
        state.set_deployed("sentiment", "1.0")
        v2 = load_local_artifact(world.artifact("2.0", created="2026-02-01T00:00:00Z"))
        events: list[Event] = []
        report = world.reconciler(policy, state, events).apply(v2)
        # 1.0 is deployed: it keeps its most preferred intact replica, loses the other.
        assert [(v, t) for v, t, _ in report.removed] == [("1.0", "eu-azure")]
        assert [r.target for r in state.replicas("sentiment", "1.0")] == ["eu-s3"]
        assert any("last intact replica" in w for w in report.warnings)

        state.set_deployed("sentiment", "1.0", deployed=False)
        v3 = load_local_artifact(world.artifact("3.0", created="2026-03-01T00:00:00Z"))
        report = world.reconciler(policy, state).apply(v3)
    removed = sorted((v, t) for v, t, _ in report.removed)
    assert removed == [("1.0", "eu-s3"), ("2.0", "eu-azure"), ("2.0", "eu-s3")]
    s3 = open_store(world.target("eu-s3"), retry=FAST)
    assert s3.list("sentiment/1.0/") == {} and s3.list("sentiment/2.0/") == {}
    assert "sentiment/3.0/manifest.sig" in s3.list("sentiment/3.0/")


def test_a_version_is_immutable(world: World) -> None:
    policy = world.policy(replicas={"min": 1, "max": 1}, spread={"minProviders": 1})
    with PlacementState(world.tmp / "state.sqlite") as state:
        world.reconciler(policy, state).apply(load_local_artifact(world.artifact()))
        changed = world.artifact()
        (changed / "model.onnx").write_bytes(b"a different model")
        sign_artifact(
            changed, world.keypair, name="sentiment", version="1.0", format="onnx-int8",
            labels={"app": "sentiment"},
        )  # fmt: skip
        with pytest.raises(UsageError, match="versions are immutable"):
            world.reconciler(policy, state).apply(load_local_artifact(changed))
    # Without the state, the store's own manifest tells the same story.
    with (
        PlacementState(world.tmp / "fresh.sqlite") as state,
        pytest.raises(UsageError, match="already exists on eu-s3 with a different manifest"),
    ):
        world.reconciler(policy, state).apply(load_local_artifact(changed))
