"""ARCHITECTURE.md's tree is the layout on disk, in both directions.

The tree is the first thing a newcomer reads, so a package moved or added without updating it
fails here: every folder and module the tree names must exist, and every Python package in the
repository must be named by it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("fedge", "policies", "cloud_adapters", "client", "server", "edge_agent", "tests")


def tree_paths(markdown: str) -> list[str]:
    """The paths named by the first ``text`` block after the ``## Layout`` heading.

    Each line is ``<indent><name> <description>``; two spaces of indent per level, and a name
    ending in ``/`` is a folder whose children follow it one level deeper.
    """
    lines = markdown.splitlines()
    start = lines.index("## Layout")
    opening = next(i for i in range(start, len(lines)) if lines[i].startswith("```text"))
    paths: list[str] = []
    stack: list[str] = []
    for line in lines[opening + 1 :]:
        if line.startswith("```"):
            break
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent % 2:
            raise ValueError(f"odd indent in the layout tree: {line!r}")
        depth = indent // 2
        if depth > len(stack):
            raise ValueError(f"a line deeper than its parent folder: {line!r}")
        del stack[depth:]
        name = line.split()[0]
        path = "/".join([*stack, name.rstrip("/")])
        paths.append(path + ("/" if name.endswith("/") else ""))
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
    return paths


def problems(paths: list[str], root: Path) -> list[str]:
    found: list[str] = []
    for path in paths:
        target = root / path.rstrip("/")
        if path.endswith("/") and not target.is_dir():
            found.append(f"{path} is named in ARCHITECTURE.md but is not a folder")
        elif not path.endswith("/") and not target.is_file():
            found.append(f"{path} is named in ARCHITECTURE.md but is not a file")
    named = {p.rstrip("/") for p in paths}
    for top in PACKAGES:
        for init in sorted((root / top).rglob("__init__.py")):
            package = init.parent.relative_to(root).as_posix()
            if package not in named:
                found.append(f"{package}/ is a package that ARCHITECTURE.md does not name")
    return found


def test_the_tree_matches_the_packages_on_disk() -> None:
    paths = tree_paths((REPO / "ARCHITECTURE.md").read_text(encoding="utf-8"))
    assert len(paths) > 20
    assert problems(paths, REPO) == []


def test_a_package_missing_from_the_tree_or_the_disk_is_reported(tmp_path: Path) -> None:
    for package in ("fedge", "client/contract", "client/extra", "policies", "cloud_adapters"):
        (tmp_path / package).mkdir(parents=True)
        (tmp_path / package / "__init__.py").write_text("")
    for top in ("server", "edge_agent", "tests"):
        (tmp_path / top).mkdir()
    text = (
        "# x\n\n## Layout\n\n```text\nfedge/  kernel\nclient/\n  contract/\n  gone/  moved\n```\n"
    )
    paths = tree_paths(text)
    assert paths == ["fedge/", "client/", "client/contract/", "client/gone/"]
    assert problems(paths, tmp_path) == [
        "client/gone/ is named in ARCHITECTURE.md but is not a folder",
        "policies/ is a package that ARCHITECTURE.md does not name",
        "cloud_adapters/ is a package that ARCHITECTURE.md does not name",
        "client/extra/ is a package that ARCHITECTURE.md does not name",
    ]


def test_a_malformed_tree_is_refused() -> None:
    with pytest.raises(ValueError, match="deeper than its parent"):
        tree_paths("## Layout\n\n```text\nfedge/\n    deep.py\n```\n")
