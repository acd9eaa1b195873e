"""The import rules of DESIGN.md section 2, enforced two ways.

Statically: every import statement in each package is checked against the table of what that
package may import. At run time: importing the light packages in a fresh interpreter (where torch,
flwr and friends are installed) must not load any heavy library.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from tests.conftest import REPO

STDLIB = set(sys.stdlib_module_names)
KERNEL_CLI = {"typer", "click", "rich"}  # only fedge.cli, the shared CLI plumbing

ALLOWED: dict[str, set[str]] = {
    "fedge": {"fedge", "cryptography"},
    "policies": {"policies", "fedge", "yaml", "pydantic", "pydantic_core"},
    "cloud_adapters": {"cloud_adapters", "fedge", "policies", "libcloud"},
    "client": {
        "client",
        "fedge",
        "policies",
        "flwr",
        "torch",
        "transformers",
        "peft",
        "opacus",
        "tenseal",
        "numpy",
        "typer",
        "rich",
    },
    "server": {
        "server",
        "fedge",
        "policies",
        "cloud_adapters",
        "edge_agent.protocol",
        "edge_agent.explain",  # fedge explain runs the device's own occlusion code
        "client.contract",
        "flwr",
        "ray",  # server/federation/simulation_engine.py: the CPUs of a cluster (--ray-address)
        "tenseal",
        "torch",
        "transformers",
        "peft",
        "onnx",
        "onnxruntime",
        "numpy",
        "paho",
        "pydantic",
        "yaml",
        "matplotlib",
        "opacus",  # pricing user-level DP (server/federation/user_dp.py)
        "fastapi",
        "starlette",
        "uvicorn",
        "typer",
        "rich",
    },
    "edge_agent": {
        "edge_agent",
        "fedge",
        "policies",
        "pydantic",
        "paho",
        "onnxruntime",
        "numpy",
        "tokenizers",
        "typer",
        "rich",
    },
}
HEAVY = ["torch", "flwr", "opacus", "transformers", "libcloud", "tenseal", "peft", "ray"]


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def _allowed(package: str, module: str, file: Path) -> bool:
    top = module.split(".", maxsplit=1)[0]
    if top in STDLIB or top == "__future__":
        return True
    rules = ALLOWED[package] | (
        KERNEL_CLI if file.name == "cli.py" and package == "fedge" else set()
    )
    return any(module == rule or module.startswith(rule + ".") for rule in rules)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_static_imports_follow_the_table(package: str) -> None:
    violations = []
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"{package} has no modules"
    for file in files:
        for line, module in _imports(file):
            if not _allowed(package, module, file):
                violations.append(f"{file.relative_to(REPO)}:{line}: imports {module}")
    assert not violations, "\n".join(violations)


def test_the_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "agent.py"
    bad.write_text("import torch\nfrom server.cli.app import app\nfrom edge_agent import x\n")
    flagged = [m for _, m in _imports(bad) if not _allowed("edge_agent", m, bad)]
    assert flagged == ["torch", "server.cli.app.app"]
    assert not _allowed("server", "edge_agent.cli.app", bad)
    assert _allowed("server", "edge_agent.protocol.Topics", bad)


@pytest.mark.parametrize(
    "modules",
    [
        ["fedge"],
        ["policies"],
        ["edge_agent", "edge_agent.cli"],
        ["fedge.cli", "server.cli.app"],
        ["client.cli"],
    ],
)
def test_light_imports_load_no_heavy_library(modules: list[str]) -> None:
    """Runs in a fresh interpreter; meaningful because CI installs torch and flwr (checked)."""
    if os.environ.get("CI"):
        missing = [name for name in ("torch", "flwr", "libcloud") if find_spec(name) is None]
        assert not missing, (
            f"CI must install the heavy libraries this test guards against: {missing}"
        )
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(json.dumps([h for h in {HEAVY!r} if h in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert json.loads(result.stdout) == [], f"{modules} pulled in heavy libraries"
