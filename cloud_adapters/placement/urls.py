"""Presigned, expiring download URLs for every intact replica of a version.

An edge device gets these and nothing else: it downloads ``manifest.sig`` and ``manifest.json``,
verifies the signature against its trusted keys, then fetches and hashes each listed file, with
plain HTTP(S) and no cloud credentials. S3 URLs are SigV4 query-signed (:mod:`.sigv4`), Azure
URLs carry a read-only service SAS for the one blob (:mod:`.sas`), local replicas are ``file://``
URLs (see :mod:`.local`). Signing needs the credentials but no network call. The shape of each
entry is :class:`fedge.replica_urls.ReplicaURLs`, the one the edge agent reads.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cloud_adapters.placement import layout
from cloud_adapters.placement.state import PlacementState
from cloud_adapters.stores.factory import StoreFactory
from cloud_adapters.stores.sigv4 import MAX_EXPIRES_S
from fedge.errors import UsageError
from fedge.manifest import MANIFEST_NAME, SIGNATURE_NAME
from fedge.replica_urls import ReplicaURLs
from policies.documents import CloudInventory

__all__ = ["replica_urls"]


def replica_urls(
    state: PlacementState,
    inventory: CloudInventory,
    artifact: str,
    version: str,
    *,
    open_store: StoreFactory,
    expires_s: int = 3600,
    now: datetime | None = None,
) -> list[ReplicaURLs]:
    """URLs for each intact replica, in the version's placement order (best first)."""
    if not 1 <= expires_s <= MAX_EXPIRES_S:
        raise UsageError(f"--expires must be between 1 second and 7 days, not {expires_s}s")
    record = state.version(artifact, version)
    if record is None:
        raise UsageError(f"{artifact} {version} has not been placed (run fedge place apply)")
    targets = {target.name: target for target in inventory.spec.targets}
    order = {name: index for index, name in enumerate(record.actual)}
    intact = [r for r in state.replicas(artifact, version) if r.status == "intact"]
    intact.sort(key=lambda r: (order.get(r.target, len(order)), r.target))
    moment = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    result = []
    for replica in intact:
        target = targets.get(replica.target)
        if target is None:
            continue  # no longer in the inventory: no credentials to sign with
        store = open_store(target)
        urls: dict[str, str] = {}
        for name in state.objects(artifact, version, replica.target):
            relative = layout.relative_name(artifact, version, name)
            if relative is not None:
                urls[relative] = store.presign(name, expires_s=expires_s)
        if MANIFEST_NAME not in urls or SIGNATURE_NAME not in urls:
            continue
        expires = (
            None
            if target.provider == "local"
            else (moment + timedelta(seconds=expires_s)).isoformat().replace("+00:00", "Z")
        )
        result.append(
            ReplicaURLs(
                target=target.name,
                provider=target.provider,
                region=target.region,
                residency=target.residency,
                expires=expires,
                manifest=urls.pop(MANIFEST_NAME),
                signature=urls.pop(SIGNATURE_NAME),
                files=urls,
            )
        )
    return result
