"""Reading rollouts back from the broker: what ``fedge deploy status`` and ``--detach`` look at.

A rollout's controller keeps its state retained on ``fedge/v1/<fleet>/_rollout/<deployment id>``
(:mod:`server.fleet.progress`); any process with the operator account can therefore see every
rollout of a fleet, running or finished, without talking to the process that runs it. This
module subscribes to those documents and keeps the newest of each.
"""

from __future__ import annotations

import threading
import time

from edge_agent.protocol import ProtocolError, decode
from fedge.logs import get_logger
from server.fleet.connection import BrokerConnection, BrokerEndpoint
from server.fleet.progress import RolloutDocument, parse_rollout_topic, rollout_filter

__all__ = ["RolloutReader", "read_rollouts"]

log = get_logger(__name__)


class RolloutReader(BrokerConnection):
    """Mirrors the rollout documents of one fleet (or of every fleet, ``fleet=None``)."""

    def __init__(
        self, broker: BrokerEndpoint, fleet: str | None = None, *, client_id: str | None = None
    ) -> None:
        super().__init__(broker, client_id=client_id)
        self.fleet = fleet
        self._documents: dict[tuple[str, str], RolloutDocument] = {}
        self._lock = threading.Lock()
        self._changed = threading.Event()

    def __enter__(self) -> RolloutReader:
        self.connect()
        return self

    def filters(self) -> list[str]:
        return [rollout_filter(self.fleet)]

    def handle(self, topic: str, payload: bytes) -> None:
        key = parse_rollout_topic(topic)
        if key is None:
            return
        with self._lock:
            if not payload:  # a forgotten rollout: the retained document was cleared
                self._documents.pop(key, None)
            else:
                try:
                    self._documents[key] = decode(RolloutDocument, payload, channel=topic)
                except ProtocolError as exc:
                    log.warning("ignoring %s", exc)
                    return
        self._changed.set()

    def documents(self) -> list[RolloutDocument]:
        """Every rollout seen, the most recently started first."""
        with self._lock:
            found = list(self._documents.values())
        return sorted(found, key=lambda d: (d.started_at, d.deployment_id), reverse=True)

    def get(self, deployment_id: str) -> RolloutDocument | None:
        with self._lock:
            for (_fleet, deployment), document in self._documents.items():
                if deployment == deployment_id:
                    return document
        return None

    def wait_for_change(self, timeout: float) -> bool:
        changed = self._changed.wait(max(0.0, timeout))
        self._changed.clear()
        return changed


def read_rollouts(
    broker: BrokerEndpoint, fleet: str | None = None, *, settle: float = 1.0
) -> list[RolloutDocument]:
    """Every rollout document the broker holds for ``fleet`` (or every fleet), newest first."""
    with RolloutReader(broker, fleet) as reader:
        time.sleep(settle)  # retained messages arrive right after the subscription
        return reader.documents()
