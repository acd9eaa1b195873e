"""The README's commands are commands that exist, as written: every command line in a ``bash``
block names a real (sub)command of fedge, fedge-client or fedge-agent, every flag it passes exists
on that command, and every required option is given (copy-paste complete).

Lines are read as a shell would see them: continuation backslashes joined, comments and a trailing
``&`` dropped. Placeholders such as HOST:9092 are values, so they are not checked.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import typer

from client.cli import app as client_app
from edge_agent.cli import app as agent_app
from server.cli.app import app as fedge_app
from tests.conftest import REPO

APPS: dict[str, typer.Typer] = {
    "fedge": fedge_app,
    "fedge-client": client_app,
    "fedge-agent": agent_app,
}


def command_lines(markdown: str) -> Iterator[str]:
    """Every line of every ```bash block that runs one of fedge's three commands."""
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[-1] == "&":
                words = words[:-1]
            while words and "=" in words[0] and not words[0].startswith("-"):
                words = words[1:]  # VAR=value prefixes
            if words and words[0] in APPS:
                yield shlex.join(words)


def problems(line: str) -> list[str]:
    words = shlex.split(line)
    if any(w in ("|", "...") or w.startswith(("[", "(")) for w in words):
        return [f"{line}: not a command as it runs (alternatives, [optional] parts or ...)"]
    command: click.Command = typer.main.get_command(APPS[words[0]])
    path = [words[0]]
    found: list[str] = []
    given: set[str] = set()
    rest = words[1:]
    while rest:
        word = rest.pop(0)
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            option = next((p for p in command.params if name in (*p.opts, *p.secondary_opts)), None)
            if option is None and name not in ("--help", "-h"):
                found.append(f"{line}: {' '.join(path)} has no option {name}")
                continue
            if option is not None:
                given.add(option.name or "")
                takes_value = (
                    isinstance(option, click.Option) and not option.is_flag and not option.count
                )
                if takes_value and "=" not in word and rest:
                    rest.pop(0)
            continue
        if isinstance(command, click.Group):
            sub = command.get_command(click.Context(command), word)
            if sub is None:
                found.append(f"{line}: {' '.join(path)} has no command {word}")
                return found
            command, path = sub, [*path, word]
    for param in command.params:
        missing = isinstance(param, click.Option) and param.required and param.name not in given
        if missing and param.envvar is None:  # an environment variable may supply it
            found.append(f"{line}: {' '.join(path)} needs {param.opts[0]}")
    return found


def test_every_readme_command_exists_with_its_flags() -> None:
    lines = list(command_lines((REPO / "README.md").read_text(encoding="utf-8")))
    assert len(lines) > 40  # the walk found the tour
    assert [p for line in lines for p in problems(line)] == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fedge trian --policy p", "fedge has no command trian"),
        ("fedge train --polcy p --simulate 2", "fedge train has no option --polcy"),
        ("fedge enroll token clinic-a --workdir w", "fedge enroll token needs --ca"),
        ("fedge-agent run --config a.yaml [--threads N]", "not a command as it runs"),
    ],
)
def test_a_wrong_readme_command_is_caught(text: str, expected: str) -> None:
    (line,) = command_lines(f"```bash\n{text}   # a comment\n```\n")
    assert any(expected in found for found in problems(line)), problems(line)


def test_lines_are_read_as_the_shell_reads_them(tmp_path: Path) -> None:
    text = "```bash\nX=1 fedge certs \\\n  --out pki &\necho not fedge\n```\n```text\nfedge nope\n```\n"
    assert list(command_lines(text)) == ["fedge certs --out pki"]
