"""No circle between fedge's modules: every import, lazy or for type checking, counts.

A circle means neither module can be understood, tested or moved without the other, and it is
how layering starts to rot (issue 12 found ``server/federation.py`` <-> ``server/secagg.py``).
The graph is built from the source with ``ast``: an edge for each import of a fedge module,
wherever it sits (module level, inside a function, under ``TYPE_CHECKING``).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("fedge", "policies", "cloud_adapters", "client", "server", "edge_agent")


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a module (``a.b.func`` -> ``a.b``)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = _modules(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [_resolve(alias.name, modules) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [_resolve(f"{node.module}.{alias.name}", modules) for alias in node.names]
            graph[name].update(t for t in targets if t is not None and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = counter
                    counter += 1
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_circle_between_modules() -> None:
    graph = import_graph(REPO)
    assert len(graph) > 100  # the walk found the packages
    assert cycles(graph) == []


def test_a_circle_is_found_however_it_is_imported(tmp_path: Path) -> None:
    package = tmp_path / "server"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "rounds.py").write_text(
        "def run():\n    from server.secagg import secure_round\n    return secure_round\n",
        encoding="utf-8",
    )
    (package / "secagg.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from server.replies import Outcome\n"
        "secure_round = 1\n",
        encoding="utf-8",
    )
    (package / "replies.py").write_text("import server.rounds\nOutcome = 2\n", encoding="utf-8")
    (package / "alone.py").write_text("from server import secagg\n", encoding="utf-8")
    graph = import_graph(tmp_path)
    assert graph["server.alone"] == {"server.secagg"}
    assert cycles(graph) == [["server.replies", "server.rounds", "server.secagg"]]
