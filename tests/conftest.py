"""Shared fixtures: run a CLI in process and capture its exit code and output."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "policies" / "examples"


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run one of the three apps through fedge's own exit-code wrapper."""
    from fedge.cli import run

    def invoke(app: typer.Typer, *argv: str) -> Result:
        prog = app.info.name or "fedge"
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            run(app, prog, [str(arg) for arg in argv])
        captured = capsys.readouterr()
        code = exit_info.value.code
        return Result(code if isinstance(code, int) else 1, captured.out, captured.err)

    return invoke


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """Undo what a CLI run in process did to the root logger (``fedge.logs.configure``).

    Its handler writes to the stderr of the test that ran it, which pytest closes afterwards: a
    later test's log record would then print a "--- Logging error ---" traceback.
    """
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
