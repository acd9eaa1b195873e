"""``fedge enroll sync``: make the SuperLink's node list and the registry agree, both ways.

They drift apart: a SuperLink restarted on an in-memory database forgets every node, and anyone
on the coordinator's host can use the Control API behind fedge's back. Every change and every
disagreement is audited in the registry, and the report says what is left to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from fedge.errors import FederationError
from server.enrollment.control import UNREGISTERED, NodeControl
from server.enrollment.registry import Registry
from server.enrollment.rules import parse_node_public_key

__all__ = ["IN_FLIGHT", "SyncReport", "UnknownNode", "reconcile", "sync_nodes"]

# How long a claimed token may stay unrecorded before sync takes its node for an unknown one:
# the enrollment's `flwr` commands time out well before this.
IN_FLIGHT: Final = 300.0


@dataclass(frozen=True)
class UnknownNode:
    """A node the SuperLink admits that no data holder in the registry has."""

    node_id: int
    status: str


@dataclass
class SyncReport:
    """What :func:`sync_nodes` changed on the SuperLink, and what still disagrees."""

    changes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unknown: list[UnknownNode] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not self.problems


def _refusal_hint(name: str, reason: str) -> str:
    if "already in use" in reason:
        return (
            "the SuperLink keeps the key of a node that was unregistered outside fedge and "
            f"never takes it again: `fedge enroll rotate {name}` gives the holder a new key "
            f"(or, if it was being revoked, run `fedge enroll revoke {name}` again)"
        )
    return "run `fedge enroll sync` again once the SuperLink answers"


def sync_nodes(
    registry: Registry,
    control: NodeControl,
    *,
    actor: str,
    unregister_unknown: bool = False,
) -> SyncReport:
    """Make the SuperLink's node list agree with the registry, both ways; every action audited.

    From the registry to the SuperLink: an active holder whose node the SuperLink no longer
    admits (a SuperLink restarted on an in-memory database forgets every node) has its
    unchanged key registered again; a revoked holder whose node is still admitted is
    unregistered. A key the SuperLink refuses is a problem, reported and audited, and the other
    holders are still synced.

    From the SuperLink to the registry: a node the SuperLink admits that no holder has (someone
    used the Control API behind fedge's back) is reported and audited as ``node.unknown``; with
    ``unregister_unknown`` it is unregistered (``node.unregistered-unknown``), unless an
    enrollment is between registering its key and recording it (then it is left alone and
    reported, and the next sync decides).
    """
    nodes = control.nodes()
    holders = registry.holders()
    report = SyncReport()
    for holder in holders:
        node_id = holder.node_id
        admitted = node_id is not None and nodes.get(node_id, UNREGISTERED) != UNREGISTERED
        if holder.state == "revoked" and admitted and node_id is not None:
            control.unregister(node_id)
            registry.record(
                "node.unregistered",
                holder.name,
                actor=actor,
                detail=f"revoked holder's node {node_id} was still admitted",
            )
            report.changes.append(f"{holder.name}: revoked, unregistered node {node_id}")
        elif holder.state == "active" and not admitted and holder.public_key:
            key = parse_node_public_key(holder.public_key)
            try:
                new_id = control.register(key, name=holder.name)
            except FederationError as exc:
                registry.record(
                    "holder.reregister-failed",
                    holder.name,
                    actor=actor,
                    detail=f"key {key.fingerprint}: {exc}",
                )
                report.problems.append(
                    f"{holder.name}: the SuperLink refused key {key.fingerprint} ({exc}); "
                    + _refusal_hint(holder.name, str(exc))
                )
                continue
            registry.set_node_id(
                holder.name,
                new_id,
                actor=actor,
                detail=f"key {key.fingerprint}: node {node_id} -> {new_id}",
            )
            report.changes.append(
                f"{holder.name}: registered key {key.fingerprint} as node {new_id}"
            )
    known = {holder.node_id for holder in holders if holder.node_id is not None}
    strangers = sorted(
        (node_id, status)
        for node_id, status in nodes.items()
        if status != UNREGISTERED and node_id not in known
    )
    in_flight = registry.claims_in_flight(within=IN_FLIGHT) if strangers else []
    for node_id, status in strangers:
        subject = f"node {node_id}"
        if unregister_unknown and not in_flight:
            control.unregister(node_id)
            registry.record(
                "node.unregistered-unknown",
                subject,
                actor=actor,
                detail=f"was {status}; no data holder in the registry has this node",
            )
            report.changes.append(f"node {node_id}: unknown to the registry, unregistered")
            continue
        detail = f"{status} at the SuperLink; no data holder in the registry has this node"
        if in_flight:
            detail += f"; enrollment in progress: {', '.join(in_flight)}"
        registry.record("node.unknown", subject, actor=actor, detail=detail)
        report.unknown.append(UnknownNode(node_id, status))
        advice = (
            f"left alone while {', '.join(in_flight)} enroll(s); run sync again"
            if unregister_unknown
            else "`fedge enroll sync --unregister-unknown` removes it"
        )
        report.problems.append(
            f"node {node_id}: {status} at the SuperLink but no data holder in the registry has "
            f"it (not enrolled through fedge); {advice}"
        )
    return report


def reconcile(registry: Registry, control: NodeControl, *, actor: str) -> list[str]:
    """:func:`sync_nodes` without unregistering unknown nodes: its changes, then its problems."""
    report = sync_nodes(registry, control, actor=actor)
    return [*report.changes, *report.problems]
