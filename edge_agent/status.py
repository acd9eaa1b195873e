"""``fedge-agent status``: what the state directory says, without the broker or the lock."""

from __future__ import annotations

import fcntl
import json
from typing import Any

from edge_agent.config import AgentSettings
from edge_agent.store import InstalledModel, StateDir

__all__ = ["local_status"]


def _running(state: StateDir) -> bool:
    """True while an agent holds the state directory's lock."""
    path = state.root / "agent.lock"
    if not path.exists():
        return False
    with path.open("ab") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def _model(installed: InstalledModel | None) -> dict[str, Any] | None:
    if installed is None:
        return None
    return {
        **installed.ref.model_dump(by_alias=True),
        "path": installed.path,
        "deploymentId": installed.deployment_id,
        "activatedAt": installed.activated_at.isoformat(),
    }


def local_status(settings: AgentSettings) -> dict[str, Any]:
    state = StateDir(settings.state_dir)
    active = state.read_active()
    record = state.read_deployment()
    http_port = None
    try:
        http_port = json.loads((state.root / "http.json").read_text(encoding="utf-8"))["port"]
    except (OSError, ValueError, KeyError, TypeError):
        http_port = None
    return {
        "deviceId": settings.device_id,
        "fleet": settings.fleet,
        "stateDir": str(state.root),
        "running": _running(state),
        "birthSeq": state.birth_seq,
        "current": _model(None if active is None else active.current),
        "previous": _model(None if active is None else active.previous),
        "deployment": None
        if record is None
        else {
            "deploymentId": record.deployment_id,
            "phase": record.phase.value,
            "error": record.error,
            "retryable": record.retryable,
            "artifact": record.desired.artifact,
            "version": record.desired.version,
            "updatedAt": record.updated_at.isoformat(),
        },
        "httpPort": http_port,
    }
