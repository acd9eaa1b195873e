"""The fleet as documents: ``fedge fleet status`` / ``fedge deploy status`` JSON and the console's.

One builder per listing, so the CLI's ``-o json`` and the console's API carry the same fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from server.fleet.controller import DeviceRecord
from server.fleet.progress import RolloutDocument

__all__ = ["STALE_AFTER", "device_items", "rollout_item"]

STALE_AFTER = 15.0  # a running rollout's controller writes its document at least every 5 s


def device_items(records: Mapping[str, DeviceRecord]) -> list[dict[str, Any]]:
    """``DeviceList`` items, by device name."""
    return [records[name].row() for name in sorted(records)]


def rollout_item(doc: RolloutDocument, now: datetime) -> dict[str, Any]:
    """One ``RolloutList`` item: the retained document, its state in words, who succeeded."""
    item: dict[str, Any] = doc.model_dump(mode="json", by_alias=True, exclude={"schema_version"})
    item["stateText"] = doc.state_text(now, stale_after=STALE_AFTER)
    item["succeeded"] = doc.succeeded_devices()
    return item
