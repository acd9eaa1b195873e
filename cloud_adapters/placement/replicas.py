"""Make one replica intact, or take one away, on one store; record each step in the state.

Ensuring a replica lists the version's prefix once and compares every object with what the state
recorded at its last read-back (size and fingerprint: no download); an object the state does not
know is compared with the local file by content (the store's MD5, or a download). Only objects
that are missing or differ are uploaded, so re-applying uploads nothing that is intact. When
anything must change, the commit marker (``manifest.sig``) is removed first and written last:
readers never see a replica that is half old, half new. Removing goes the same way round.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cloud_adapters.placement import layout
from cloud_adapters.placement.local_artifact import LocalArtifact, LocalFile
from cloud_adapters.placement.state import ObjectRecord, PlacementState, ReplicaRecord
from cloud_adapters.stores.base import ArtifactStore, RemoteObject
from fedge.errors import UsageError
from fedge.manifest import MANIFEST_NAME, Manifest

__all__ = ["Event", "EventSink", "ReplicaOutcome", "ensure_replica", "remove_replica"]

EventKind = Literal[
    "check",
    "create",
    "intact",
    "hide",
    "upload",
    "uploaded",
    "tidy",
    "down",
    "remove",
    "removed",
    "warn",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Progress for a caller to show; ``uploaded`` comes after each object's read-back."""

    kind: EventKind
    target: str
    detail: str = ""
    object_name: str | None = None
    size: int = 0


EventSink = Callable[[Event], None]


@dataclass(frozen=True, slots=True)
class ReplicaOutcome:
    target: str
    uploaded: tuple[str, ...]  # object names written this run
    bytes_uploaded: int
    seconds: float


def _ignore(_event: Event) -> None:
    return None


def _check_same_version(
    store: ArtifactStore, artifact: LocalArtifact, state: PlacementState, remote_manifest: str
) -> None:
    """A version is immutable: refuse to overwrite a different, valid manifest of it."""
    known = state.version(artifact.name, artifact.version)
    if known is not None and known.manifest_digest == artifact.manifest_digest:
        return  # the state vouches for our manifest: a different one there is damage to repair
    body = store.read_bytes(remote_manifest)
    if body is None:
        return
    try:
        theirs = Manifest.from_bytes(body)
    except Exception:  # noqa: BLE001 - an unreadable manifest is damage, not a rival version
        return
    if (theirs.name, theirs.version) == (artifact.name, artifact.version) and (
        theirs.digest != artifact.manifest.digest
    ):
        raise UsageError(
            f"{artifact.name} {artifact.version} already exists on {store.target} with a "
            f"different manifest (digest {theirs.digest[:12]}…); versions are immutable, "
            "sign the new files as a new version"
        )


@dataclass
class _Survey:
    kept: dict[str, RemoteObject]  # objects already right
    needed: list[str]  # objects to upload
    extras: list[str]  # objects under the prefix the manifest does not list


def _survey(
    store: ArtifactStore,
    artifact: LocalArtifact,
    state: PlacementState,
    wanted: dict[str, LocalFile],
) -> _Survey:
    name, version, target = artifact.name, artifact.version, store.target
    remote = store.list(layout.prefix(name, version))
    record = state.replica(name, version, target)
    recorded = state.objects(name, version, target) if record is not None else {}
    manifest_object = layout.object_name(name, version, MANIFEST_NAME)
    survey = _Survey({}, [], sorted(set(remote) - set(wanted)))
    for object_name, local in wanted.items():
        found = remote.get(object_name)
        if found is None:
            survey.needed.append(object_name)
            continue
        seen = recorded.get(object_name)
        same_as_recorded = seen is not None and (seen.size, seen.fingerprint) == (
            found.size,
            found.fingerprint,
        )
        if same_as_recorded or store.matches(found, local):
            survey.kept[object_name] = found
            continue
        if object_name == manifest_object:
            _check_same_version(store, artifact, state, manifest_object)
        survey.needed.append(object_name)
    return survey


def ensure_replica(
    store: ArtifactStore,
    artifact: LocalArtifact,
    state: PlacementState,
    *,
    on_event: EventSink = _ignore,
) -> ReplicaOutcome:
    """Leave an intact replica of ``artifact`` on ``store``; raise CloudError if it cannot."""
    started = time.perf_counter()
    name, version, target = artifact.name, artifact.version, store.target
    on_event(Event("check", target, layout.prefix(name, version)))
    if store.create_container and store.ensure_container():
        on_event(Event("create", target, f"container {store.container} created"))
    wanted = {layout.object_name(name, version, f.relative): f for f in artifact.files}
    survey = _survey(store, artifact, state, wanted)
    kept = survey.kept
    if not survey.needed and not survey.extras:
        _record(state, store, artifact, kept, status="intact")
        on_event(Event("intact", target, f"{len(kept)} object(s) verified, nothing to upload"))
        return ReplicaOutcome(target, (), 0, time.perf_counter() - started)
    state.put_replica(_replica(store, artifact, "partial"))
    marker = layout.object_name(name, version, layout.COMMIT_MARKER)
    needed = list(survey.needed)
    if marker in kept:
        on_event(Event("hide", target, "commit marker removed before repair", marker))
        store.delete(marker)
        del kept[marker]
        needed.append(marker)
    uploaded: list[str] = []
    sent = 0
    for relative in layout.upload_order([n[len(layout.prefix(name, version)) :] for n in needed]):
        object_name = layout.object_name(name, version, relative)
        if relative == layout.COMMIT_MARKER:
            for extra in survey.extras:  # leftovers the manifest does not list go first
                on_event(Event("tidy", target, "not in the manifest", extra))
                store.delete(extra)
        local = wanted[object_name]
        on_event(Event("upload", target, relative, object_name, local.size))
        kept[object_name] = store.put(local, object_name)
        uploaded.append(object_name)
        sent += local.size
        on_event(Event("uploaded", target, relative, object_name, local.size))
        _record(
            state, store, artifact, kept, status="intact" if object_name == marker else "partial"
        )
    return ReplicaOutcome(target, tuple(uploaded), sent, time.perf_counter() - started)


def _replica(store: ArtifactStore, artifact: LocalArtifact, status: str) -> ReplicaRecord:
    return ReplicaRecord(
        artifact=artifact.name,
        version=artifact.version,
        target=store.target,
        provider=store.provider,
        container=store.container,
        status=status,  # type: ignore[arg-type]
    )


def _record(
    state: PlacementState,
    store: ArtifactStore,
    artifact: LocalArtifact,
    kept: dict[str, RemoteObject],
    *,
    status: str,
) -> None:
    state.put_replica(_replica(store, artifact, status))
    state.put_objects(
        artifact.name,
        artifact.version,
        store.target,
        [ObjectRecord(o.name, o.size, o.fingerprint) for o in kept.values()],
    )


def remove_replica(
    store: ArtifactStore,
    state: PlacementState,
    artifact: str,
    version: str,
    *,
    why: str,
    on_event: EventSink = _ignore,
) -> int:
    """Delete every object of the version on ``store``, commit marker first; forget the replica.

    The caller decides whether removing is allowed (see the reconciler's last-replica guard).
    """
    prefix = layout.prefix(artifact, version)
    marker = layout.object_name(artifact, version, layout.COMMIT_MARKER)
    on_event(Event("remove", store.target, why, prefix))
    record = state.replica(artifact, version, store.target)
    if record is not None and record.status == "intact":
        state.put_replica(
            ReplicaRecord(
                artifact, version, store.target, record.provider, record.container, "partial"
            )
        )
    removed = int(store.delete(marker))
    for name in sorted(store.list(prefix)):
        removed += int(store.delete(name))
    state.forget_replica(artifact, version, store.target)
    on_event(Event("removed", store.target, f"{removed} object(s)", prefix))
    return removed
