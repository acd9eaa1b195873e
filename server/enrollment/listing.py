"""The registry as documents: what ``fedge enroll list/audit -o json`` print and the console serves.

One builder per listing, so a script reading the CLI's JSON and a dashboard reading the console's
API see the same fields.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from server.enrollment.rules import AuditEntry, Holder

__all__ = ["audit_items", "holder_items", "iso_time"]


def iso_time(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).isoformat()


def holder_items(
    holders: Sequence[Holder], nodes: Mapping[int, str] | None = None
) -> list[dict[str, Any]]:
    """``HolderList`` items; ``nodes`` (node id -> status at the SuperLink) when it was asked."""
    return [
        {
            "name": holder.name,
            "state": holder.state,
            "fingerprint": holder.fingerprint,
            "publicKey": holder.public_key,
            "nodeId": holder.node_id,
            "atSuperLink": None
            if nodes is None or holder.node_id is None
            else nodes.get(holder.node_id),
            "createdAt": iso_time(holder.created_at),
            "updatedAt": iso_time(holder.updated_at),
        }
        for holder in holders
    ]


def audit_items(entries: Sequence[AuditEntry]) -> list[dict[str, Any]]:
    """``AuditLog`` items, oldest first."""
    return [
        {
            "seq": entry.seq,
            "at": iso_time(entry.at),
            "action": entry.action,
            "subject": entry.subject,
            "detail": entry.detail,
            "actor": entry.actor,
        }
        for entry in entries
    ]
