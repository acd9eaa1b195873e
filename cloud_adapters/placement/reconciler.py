"""Apply a placement plan and keep the clouds matching it, run after run.

One run, for one artifact version:

1. Plan with every target assumed healthy; a plan the policy refuses stops here, before any
   upload (:class:`~cloud_adapters.stores.errors.PlacementRefusedError`).
2. Ensure a replica on each selected target, the targets in parallel (one thread and one store
   each). A target whose store fails with a transient error (after its retries) is marked down
   and the plan is made again without it: the next allowed target by policy takes the replica.
   An error retrying cannot fix (credentials, missing bucket) stops the run with that error.
3. Record the outcome: ``ok``, ``degraded`` (failover in effect; a later run moves the replica
   back once the preferred target answers again) or ``short`` (fewer than ``replicas.min``;
   :class:`~cloud_adapters.stores.errors.PlacementError`).
4. Remove this version's replicas on targets the plan no longer selects, once every selected
   one is intact; then the versions beyond ``retention.keepVersions``.

One guard holds over every removal: the last intact replica of a deployed version stays.

A run holds the state file's lock (:class:`~cloud_adapters.placement.lock.StateLock`) from before
it first reads the state until retention is done, so two applies on one state never interleave;
the second is refused at once (:class:`~cloud_adapters.placement.lock.PlacementBusyError`) or,
with ``lock_wait_s``, waits that long for the first.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cloud_adapters.placement.local_artifact import LocalArtifact
from cloud_adapters.placement.lock import StateLock
from cloud_adapters.placement.planner import Plan, plan_placement
from cloud_adapters.placement.replicas import (
    Event,
    EventSink,
    ReplicaOutcome,
    ensure_replica,
    remove_replica,
)
from cloud_adapters.placement.state import PlacementState, VersionHealth, VersionRecord
from cloud_adapters.stores.base import ArtifactStore
from cloud_adapters.stores.errors import PlacementError, PlacementRefusedError
from cloud_adapters.stores.factory import StoreFactory
from fedge.errors import CloudError, FedgeError, UsageError
from policies.documents import CloudInventory, PlacementPolicy

__all__ = ["ApplyReport", "Reconciler"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApplyReport:
    plan: Plan  # the final plan, with the targets found down
    outcomes: dict[str, ReplicaOutcome]
    health: VersionHealth
    removed: tuple[tuple[str, str, str], ...] = ()  # (version, target, why)
    warnings: tuple[str, ...] = ()
    down: dict[str, str] = field(default_factory=dict)

    @property
    def bytes_uploaded(self) -> int:
        return sum(outcome.bytes_uploaded for outcome in self.outcomes.values())

    @property
    def objects_uploaded(self) -> int:
        return sum(len(outcome.uploaded) for outcome in self.outcomes.values())


def _ignore(_event: Event) -> None:
    return None


class Reconciler:
    """Applies one policy over one inventory, keeping its memory in a :class:`PlacementState`."""

    def __init__(
        self,
        policy: PlacementPolicy,
        inventory: CloudInventory,
        state: PlacementState,
        *,
        open_store: StoreFactory,
        on_event: EventSink | None = None,
        parallel: bool = True,
        lock_wait_s: float = 0.0,
    ) -> None:
        self.policy = policy
        self.inventory = inventory
        self.state = state
        self._open_store = open_store
        self._on_event = on_event or _ignore
        self._parallel = parallel
        self._lock_wait_s = lock_wait_s
        self._targets = {target.name: target for target in inventory.spec.targets}
        self._stores: dict[str, ArtifactStore] = {}
        self._warnings: list[str] = []

    # -- the run --------------------------------------------------------------------------------

    def apply(self, artifact: LocalArtifact) -> ApplyReport:
        """One run, under the state file's lock (refused, or waited for, while another holds it)."""
        with StateLock(self.state.path, wait_s=self._lock_wait_s):
            return self._apply(artifact)

    def _apply(self, artifact: LocalArtifact) -> ApplyReport:
        self._warnings = []
        static = self._plan(artifact, {})
        if static.refused:
            raise PlacementRefusedError(
                f"policy {static.policy} cannot place {artifact.name} {artifact.version}: "
                f"{'; '.join(static.policy_violations)}; nothing was uploaded"
            )
        known = self.state.version(artifact.name, artifact.version)
        if known is not None and known.manifest_digest != artifact.manifest_digest:
            raise UsageError(
                f"{artifact.name} {artifact.version} was placed with a different manifest "
                f"(digest {known.manifest_digest[:12]}…); versions are immutable, sign the new "
                "files as a new version"
            )
        down: dict[str, str] = {}
        outcomes: dict[str, ReplicaOutcome] = {}
        while True:
            plan = self._plan(artifact, down)
            todo = [name for name in plan.selected if name not in outcomes]
            if not todo:
                break
            done, failed = self._ensure_all(artifact, todo)
            outcomes.update(done)
            for name, error in failed.items():
                down[name] = _short(error)
                self._on_event(Event("down", name, down[name]))
        short = len(plan.selected) < self.policy.spec.replicas.min
        health: VersionHealth = "short" if short else "degraded" if plan.degraded else "ok"
        detail = "; ".join(f"{name} down: {why}" for name, why in sorted(down.items()))
        self.state.put_version(
            VersionRecord(
                artifact=artifact.name,
                version=artifact.version,
                manifest_digest=artifact.manifest_digest,
                created=artifact.manifest.created,
                size_bytes=artifact.total_size,
                policy=plan.policy,
                preferred=plan.preferred,
                actual=plan.selected,
                health=health,
                detail=detail,
            )
        )
        removed: list[tuple[str, str, str]] = []
        if plan.selected:
            removed += self._remove_surplus(
                artifact.name, artifact.version, plan.selected, skip=set(down)
            )
            removed += self._retention(artifact.name, artifact.version)
        report = ApplyReport(
            plan=plan,
            outcomes=outcomes,
            health=health,
            removed=tuple(removed),
            warnings=tuple(self._warnings) + plan.warnings,
            down=down,
        )
        if short and (self.policy.spec.enforcement == "Enforce" or not plan.selected):
            raise PlacementError(
                f"{artifact.name} {artifact.version}: {len(plan.selected)} intact replica(s), "
                f"replicas.min is {self.policy.spec.replicas.min}"
                + (f" ({detail})" if detail else "")
            )
        return report

    def _plan(self, artifact: LocalArtifact, down: dict[str, str]) -> Plan:
        return plan_placement(
            self.policy,
            self.inventory,
            artifact.manifest,
            down=down,
            size_bytes=artifact.total_size,
        )

    def _store(self, target: str) -> ArtifactStore:
        if target not in self._stores:
            self._stores[target] = self._open_store(self._targets[target])
        return self._stores[target]

    def _ensure_all(
        self, artifact: LocalArtifact, targets: Sequence[str]
    ) -> tuple[dict[str, ReplicaOutcome], dict[str, CloudError]]:
        stores = {name: self._store(name) for name in targets}  # UsageError: before any upload

        def one(name: str) -> ReplicaOutcome:
            return ensure_replica(stores[name], artifact, self.state, on_event=self._on_event)

        done: dict[str, ReplicaOutcome] = {}
        failed: dict[str, CloudError] = {}
        fatal: list[FedgeError] = []
        if self._parallel and len(targets) > 1:
            with concurrent.futures.ThreadPoolExecutor(max_workers=len(targets)) as pool:
                futures = {name: pool.submit(one, name) for name in targets}
                results = {name: _outcome(future) for name, future in futures.items()}
        else:
            results = {name: _outcome_of(one, name) for name in targets}
        for name in targets:
            result = results[name]
            if isinstance(result, ReplicaOutcome):
                done[name] = result
            elif isinstance(result, CloudError) and result.transient:
                failed[name] = result
            else:
                fatal.append(result)
        if fatal:
            raise fatal[0]
        return done, failed

    # -- removals -------------------------------------------------------------------------------

    def _may_remove(self, record: VersionRecord | None, target: str) -> bool:
        """The guard: never the last intact replica of a deployed version."""
        if record is None or not record.deployed:
            return True
        others = [
            replica
            for replica in self.state.replicas(record.artifact, record.version)
            if replica.status == "intact" and replica.target != target
        ]
        return bool(others)

    def _remove(self, artifact: str, version: str, target: str, why: str) -> bool:
        record = self.state.version(artifact, version)
        if not self._may_remove(record, target):
            self._warn(f"kept {artifact} {version} on {target}: last intact replica, deployed")
            return False
        if target not in self._targets:
            self._warn(f"cannot remove {artifact} {version} from {target}: not in the inventory")
            return False
        try:
            remove_replica(
                self._store(target), self.state, artifact, version, why=why,
                on_event=self._on_event,
            )  # fmt: skip
        except CloudError as exc:
            if not exc.transient:
                raise
            self._warn(f"could not remove {artifact} {version} from {target} yet: {_short(exc)}")
            return False
        return True

    def _remove_surplus(
        self, artifact: str, version: str, selected: Sequence[str], *, skip: set[str]
    ) -> list[tuple[str, str, str]]:
        """Replicas the plan no longer wants; a target down this run is left for a later one."""
        removed = []
        for replica in self.state.replicas(artifact, version):
            if replica.target in selected or replica.target in skip:
                continue
            why = "not selected by the plan (failover ended or policy changed)"
            if self._remove(artifact, version, replica.target, why):
                removed.append((version, replica.target, why))
        return removed

    def _retention(self, artifact: str, current: str) -> list[tuple[str, str, str]]:
        keep = self.policy.spec.retention.keep_versions
        versions = self.state.versions(artifact)
        kept = {record.version for record in versions[:keep]} | {current}
        removed = []
        for record in versions:
            if record.version in kept:
                continue
            why = f"retention: beyond the newest {keep} version(s)"
            replicas = self.state.replicas(artifact, record.version)
            order = {name: index for index, name in enumerate(record.actual)}
            # Partial ones first, then the least preferred: what a deployed version keeps is
            # its most preferred intact replica.
            replicas.sort(key=lambda r: (r.status == "intact", -order.get(r.target, 1 << 30)))
            for replica in replicas:
                if self._remove(artifact, record.version, replica.target, why):
                    removed.append((record.version, replica.target, why))
            if not self.state.replicas(artifact, record.version):
                self.state.forget_version(artifact, record.version)
        return removed

    def _warn(self, message: str) -> None:
        _log.warning("%s", message)
        self._warnings.append(message)
        self._on_event(Event("warn", "", message))


def _outcome(future: concurrent.futures.Future[ReplicaOutcome]) -> ReplicaOutcome | FedgeError:
    try:
        return future.result()
    except FedgeError as exc:
        return exc


def _outcome_of(one: Callable[[str], ReplicaOutcome], name: str) -> ReplicaOutcome | FedgeError:
    try:
        return one(name)
    except FedgeError as exc:
        return exc


def _short(error: CloudError) -> str:
    """The error without its provider prefix (the target is named beside it)."""
    text = str(error)
    head = f"{error.provider}: "
    return text[len(head) :] if text.startswith(head) else text
