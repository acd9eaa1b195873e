"""The placement state as documents: place status JSON and the console's placement view.

One builder, so the CLI's JSON and the console's API carry the same fields.
"""

from __future__ import annotations

from typing import Any

from cloud_adapters.placement.state import PlacementState

__all__ = ["placement_items"]


def placement_items(store: PlacementState, artifact: str | None = None) -> list[dict[str, Any]]:
    """``PlacementStatus`` items: every recorded version (of ``artifact``) with its replicas."""
    return [
        {
            "artifact": record.artifact,
            "version": record.version,
            "health": record.health,
            "deployed": record.deployed,
            "detail": record.detail,
            "policy": record.policy,
            "created": record.created,
            "updated": record.updated,
            "sizeBytes": record.size_bytes,
            "manifestDigest": record.manifest_digest,
            "preferred": list(record.preferred),
            "actual": list(record.actual),
            "replicas": [
                {
                    "target": replica.target,
                    "provider": replica.provider,
                    "container": replica.container,
                    "status": replica.status,
                    "updated": replica.updated,
                }
                for replica in store.replicas(record.artifact, record.version)
            ],
        }
        for record in store.versions(artifact)
    ]
