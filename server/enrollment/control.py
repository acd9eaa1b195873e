"""fedge's hands on the SuperLink's node list: register a key, unregister a node, list them.

``flower-superlink --enable-supernode-auth`` admits a SuperNode only by a key registered through
its Control API, so fedge registers and unregisters through Flower's own client (``flwr supernode
register`` / ``unregister`` / ``ls``) rather than reaching into the SuperLink's database. A revoked
node is unregistered: the SuperLink checks every Fleet API call against its node list, so the node
is turned away on its next call, without restarting anything. The Control API asks for no
credential, so the SuperLink listens on loopback, where only the operator reaches it, and
SuperNodes come in through the Fleet API proxy (server/federation/fleet_proxy.py). Everything else
speaks :class:`NodeControl`, so tests can stand in for the SuperLink.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from fedge.errors import FederationError, UsageError
from server.enrollment.registry import Registry
from server.enrollment.rules import Holder, NodePublicKey
from server.federation.deployment_engine import CONNECTION, flwr_json

__all__ = [
    "UNREGISTERED",
    "NodeControl",
    "SuperLinkControl",
    "revoke_holder",
    "unregister_if_present",
]

UNREGISTERED: Final = "unregistered"


class NodeControl(Protocol):
    """What enrollment needs from the SuperLink: add a key, drop a node, see the nodes."""

    def register(self, key: NodePublicKey, *, name: str) -> int: ...

    def unregister(self, node_id: int) -> None: ...

    def nodes(self) -> dict[int, str]: ...


@dataclass(frozen=True)
class SuperLinkControl:
    """The SuperLink's Control API through ``flwr supernode``, with a private ``FLWR_HOME``
    written by :func:`server.federation.deployment_engine.write_flwr_home`."""

    flwr_home: Path
    flwr: str = "flwr"

    def register(self, key: NodePublicKey, *, name: str) -> int:
        """Register ``key``; the SuperLink's node id for it."""
        with tempfile.TemporaryDirectory(prefix="fedge-enroll-") as scratch:
            key_file = Path(scratch) / "supernode.pub"
            key_file.write_text(f"{key.openssh} {name}\n", encoding="ascii")
            payload, _ = flwr_json(
                [
                    *("supernode", "register", str(key_file), CONNECTION),
                    *("--format", "json", "--name", name),
                ],
                flwr_home=self.flwr_home,
                flwr=self.flwr,
            )
        try:
            return int(str(payload["node-id"]))
        except (KeyError, ValueError) as exc:
            raise FederationError(f"`flwr supernode register`: no node id in {payload}") from exc

    def unregister(self, node_id: int) -> None:
        flwr_json(
            ["supernode", "unregister", str(node_id), CONNECTION, "--format", "json"],
            flwr_home=self.flwr_home,
            flwr=self.flwr,
        )

    def nodes(self) -> dict[int, str]:
        """Node id -> status (``registered``, ``online``, ``offline``, ``unregistered``)."""
        payload, _ = flwr_json(
            ["supernode", "ls", CONNECTION, "--format", "json"],
            flwr_home=self.flwr_home,
            flwr=self.flwr,
        )
        found: dict[int, str] = {}
        for node in payload.get("nodes") or []:
            if isinstance(node, dict) and str(node.get("node-id", "")).isdigit():
                found[int(str(node["node-id"]))] = str(node.get("status", ""))
        return found


def unregister_if_present(control: NodeControl, node_id: int) -> bool:
    """Unregister ``node_id`` unless the SuperLink no longer admits it; whether it did."""
    if control.nodes().get(node_id, UNREGISTERED) == UNREGISTERED:
        return False
    control.unregister(node_id)
    return True


def revoke_holder(
    registry: Registry, control: NodeControl | None, name: str, *, actor: str, reason: str = ""
) -> Holder:
    """Unregister the holder's node from the SuperLink, then mark it revoked in the registry.

    In that order, so the registry never says ``revoked`` while the SuperLink still admits the
    key; a failure leaves both as they were, and the command can simply be run again. Without a
    ``control`` (no SuperLink given) only a holder that never registered a node can be revoked.
    """
    holder = registry.holder(name)
    if holder.state != "revoked" and holder.node_id is not None:
        if control is None:
            raise UsageError(
                f"data holder {name} has SuperLink node {holder.node_id}: give --superlink "
                "and --ca so that the node can be unregistered"
            )
        unregister_if_present(control, holder.node_id)
    return registry.revoke(name, actor=actor, reason=reason)  # refuses a second revocation
