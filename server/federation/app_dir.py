"""The Flower app folder of a run: the pyproject.toml both engines read.

Flower learns its components and run config from ``[tool.flwr.app]``; fedge writes one folder
per run in the work directory, naming its own ServerApp and ClientApp by module path. The
ClientApp is loaded by Flower from that string, so the coordinator's code never imports the data
holder's package.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from fedge import __version__
from fedge.atomic import atomic_write_text

__all__ = ["CLIENT_APP", "SERVER_APP", "write_app_dir"]

SERVER_APP = "server.federation.flower_app:app"
CLIENT_APP = "client.federation.flower_app:app"


def _toml_string(value: str) -> str:
    # A JSON string with ASCII escapes is a valid TOML basic string.
    return json.dumps(value, ensure_ascii=True)


def write_app_dir(directory: Path, config: Mapping[str, str | int | float]) -> Path:
    """Write ``pyproject.toml`` with fedge's components and ``config`` as the run config."""
    lines = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        'name = "fedge-run"',
        'description = "A fedge federated run"',
        'license = "Apache-2.0"',
        f'version = "{__version__}"',
        "dependencies = []",
        "",
        "[tool.hatch.build.targets.wheel]",
        'packages = ["."]',
        "",
        "[tool.flwr.app]",
        'publisher = "fedge"',
        "",
        "[tool.flwr.app.components]",
        f"serverapp = {_toml_string(SERVER_APP)}",
        f"clientapp = {_toml_string(CLIENT_APP)}",
        "",
        "[tool.flwr.app.config]",
    ]
    for key, value in sorted(config.items()):
        rendered = _toml_string(value) if isinstance(value, str) else repr(value)
        lines.append(f"{_toml_string(key)} = {rendered}")
    atomic_write_text(directory / "pyproject.toml", "\n".join(lines) + "\n")
    return directory
