"""The environment of every Flower process fedge starts, on either side of a federation.

Flower phones home and checks for updates unless told not to (Ray likewise), and starts its
helpers (``flower-superexec``, ``flwr-serverapp``, ``flwr-clientapp``) by bare name, which must
resolve to the installation that has fedge's apps. Models load from local folders only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["QUIET_ENV", "flower_environment"]

QUIET_ENV: Mapping[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
}


def flower_environment(
    flwr_home: str | os.PathLike[str], *, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``base`` (default: this process's environment) with telemetry off, a private
    ``FLWR_HOME``, and this interpreter's ``bin`` folder first on ``PATH``."""
    env = dict(os.environ if base is None else base)
    env.update(QUIET_ENV)
    env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    bin_dir = str(Path(sys.executable).parent)
    parts = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
    env["PATH"] = os.pathsep.join([bin_dir, *parts])
    return env
