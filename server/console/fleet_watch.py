"""The fleet's retained MQTT state, mirrored for the console while it runs.

The console subscribes as the operator (the same account ``fedge fleet status`` uses) once, at
start, and keeps the connection: device shadows and rollout documents arrive as the broker has
them, so a view is a snapshot of memory, not a broker round trip. Without a broker configured the
fleet views are empty and say so.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any

from edge_agent.protocol import Command, utc_now
from fedge.errors import FedgeError
from fedge.logs import get_logger
from fedge.output import document
from server.fleet.controller import BrokerEndpoint, FleetClient
from server.fleet.listing import device_items, rollout_item
from server.fleet.rollout_reader import RolloutReader

__all__ = ["FleetSettings", "FleetWatch"]

log = get_logger(__name__)


@dataclass(frozen=True)
class FleetSettings:
    """How the console reaches the fleet's broker; ``flags`` are the same as ``fedge deploy``'s."""

    endpoint: BrokerEndpoint
    fleet: str
    flags: tuple[tuple[str, str | bool], ...] = ()  # (option name, value) for a detached deploy


class FleetWatch:
    """Two operator connections (device shadows, rollouts), opened by :meth:`start`."""

    def __init__(self, settings: FleetSettings | None) -> None:
        self.settings = settings
        self._devices: FleetClient | None = None
        self._rollouts: RolloutReader | None = None
        self._lock = threading.Lock()
        self.error: str | None = None

    @property
    def fleet(self) -> str | None:
        return None if self.settings is None else self.settings.fleet

    def start(self) -> None:
        if self.settings is None:
            return
        try:
            devices = FleetClient(self.settings.endpoint, self.settings.fleet)
            devices.connect()
            rollouts = RolloutReader(self.settings.endpoint, self.settings.fleet)
            rollouts.connect()
        except FedgeError as exc:
            self.error = str(exc)
            log.warning("console: the fleet's broker is unreachable: %s", exc)
            return
        with self._lock:
            self._devices, self._rollouts = devices, rollouts

    def stop(self) -> None:
        with self._lock:
            connections = (self._devices, self._rollouts)
            self._devices = self._rollouts = None
        for connection in connections:
            if connection is not None:
                connection.close()

    def devices(self) -> dict[str, Any]:
        client = self._devices
        items = device_items(client.snapshot()) if client is not None else []
        return document("DeviceList", items, fleet=self.fleet or "")

    def rollouts(self) -> dict[str, Any]:
        reader = self._rollouts
        now = utc_now()
        items = [rollout_item(doc, now) for doc in reader.documents()] if reader else []
        return document("RolloutList", items, fleet=self.fleet)

    def rollback(self, device: str) -> None:
        client = self._devices
        if client is None:
            raise FedgeError("the console is not connected to the fleet's broker")
        client.command(device, Command.ROLLBACK)

    def fingerprint(self) -> tuple[str, str]:
        """A digest of each fleet view, to tell the browser when one changed."""

        def digest(doc: dict[str, Any]) -> str:
            for item in doc.get("items", []):
                item.pop("stateText", None)  # counts seconds: would change every time
                item.pop("lastSeen", None)  # moves with every telemetry message
            body = json.dumps(doc, sort_keys=True, default=str).encode()
            return hashlib.sha256(body).hexdigest()

        return digest(self.devices()), digest(self.rollouts())
