"""Every Flower internal fedge touches is listed, exists, and still has the shape fedge relies on.

fedge pins flwr 1.41.0 and leans on names outside Flower's documented API (a private simulation
entry point, SecAgg+ state classes, the SuperNode loop it patches). An upgrade that renames or
reshapes one of them must fail here, loudly, rather than change what a patch means in the field.
Two checks: each entry of the two lists (one per side) imports and has its parameters and fields;
and every import of a Flower module outside the public API, anywhere in the packages or tests,
names a listed entry, so a new internal cannot be used without being listed.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.node.flower_internals import INTERNALS as CLIENT_INTERNALS
from fedge.internals import Internal, problems
from server.federation.flower_internals import INTERNALS as SERVER_INTERNALS
from tests.conftest import REPO

ALL = CLIENT_INTERNALS + SERVER_INTERNALS
CHECKED_PACKAGES = (
    "fedge",
    "policies",
    "cloud_adapters",
    "client",
    "server",
    "edge_agent",
    "tests",
)
# Flower's documented app API: importing a name from these is no internal.
PUBLIC = {
    "flwr",
    "flwr.app",
    "flwr.clientapp",
    "flwr.serverapp",
    "flwr.serverapp.strategy",
    "flwr.simulation",
    "flwr.common",
    "flwr.client",
    "flwr.client.mod",
    "flwr.server",
    "flwr.server.strategy",
    "flwr.server.workflow",
}


@pytest.mark.parametrize("internal", ALL, ids=lambda i: i.path)
def test_each_listed_internal_exists_with_the_shape_fedge_relies_on(internal: Internal) -> None:
    assert problems([internal]) == []


def test_a_missing_internal_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """What an upgrade that drops a name looks like: the check names it and says why."""
    # importlib: the package's ``run_simulation`` attribute is the function, not this module
    module = importlib.import_module("flwr.simulation.run_simulation")
    monkeypatch.delattr(module, "_run_simulation")
    found = problems(SERVER_INTERNALS)
    assert found == [
        "flwr.simulation.run_simulation._run_simulation: missing "
        "(AttributeError: module 'flwr.simulation.run_simulation' has no attribute "
        "'_run_simulation')"
    ]


def test_a_changed_signature_or_field_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supernode import start_client_internal

    def pull_objects(object_ids: list[str]) -> None:  # an upgrade dropped initial_backoff
        del object_ids

    monkeypatch.setattr(start_client_internal, "pull_objects", pull_objects)
    assert problems(CLIENT_INTERNALS) == [
        "flwr.supernode.start_client_internal.pull_objects: no parameter initial_backoff"
    ]
    fake = Internal("flwr.supercore.constant", "TaskType", "test", attributes=("NO_SUCH_TASK",))
    assert problems([fake]) == ["flwr.supercore.constant.TaskType: no attribute NO_SUCH_TASK"]
    gone = Internal("flwr.no_such_module", "x", "test")
    assert problems([gone])[0].startswith("flwr.no_such_module.x: missing (ModuleNotFoundError")


def _flower_imports(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """(line, module, name) of each Flower import; name None for ``import flwr.x.y``."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "flwr":
                for alias in node.names:
                    yield node.lineno, node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "flwr":
                    yield node.lineno, alias.name, None


def _listed(module: str, name: str | None, internals: tuple[Internal, ...]) -> bool:
    modules = {internal.module for internal in internals}
    if name is None:
        return module in modules
    if f"{module}.{name}" in modules:  # ``from flwr.x import submodule``
        return True
    return any(i.module == module and i.name.split(".")[0] == name for i in internals)


def unlisted_imports(root: Path, internals: tuple[Internal, ...]) -> list[str]:
    found = []
    for package in CHECKED_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for line, module, name in _flower_imports(path):
                if module in PUBLIC and name is not None:
                    continue
                if module in PUBLIC and name is None:
                    continue
                if not _listed(module, name, internals):
                    what = module if name is None else f"{module}.{name}"
                    found.append(f"{path.relative_to(root)}:{line}: {what}")
    return found


def test_every_flower_internal_imported_anywhere_is_listed() -> None:
    assert unlisted_imports(REPO, ALL) == []


def test_an_unlisted_internal_import_is_found(tmp_path: Path) -> None:
    package = tmp_path / "client"
    package.mkdir()
    (package / "sneaky.py").write_text(
        "from flwr.app import Message\n"
        "from flwr.server.superlink.linkstate import LinkState\n"
        "import flwr.supernode.nodestate\n",
        encoding="utf-8",
    )
    assert unlisted_imports(tmp_path, ALL) == [
        "client/sneaky.py:2: flwr.server.superlink.linkstate.LinkState",
        "client/sneaky.py:3: flwr.supernode.nodestate",
    ]


def test_each_side_lists_only_what_its_own_modules_use() -> None:
    """The coordinator's list names server modules, the holder's client ones (tests aside)."""
    for internals, side in ((SERVER_INTERNALS, "server/"), (CLIENT_INTERNALS, "client/")):
        for internal in internals:
            assert internal.why.startswith((side, "simulation_engine.py", "tests/")), internal
    for internal in ALL:
        importlib.import_module(internal.module)
