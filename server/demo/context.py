"""One demo run's shared state: its options, its folders, the stage timer and ``summary.json``.

Every stage module takes a :class:`DemoContext`. Each stage is timed with :meth:`DemoContext.stage`
and ``summary.json`` is rewritten after every stage, so a demo that fails half-way still leaves a
summary the report can be rendered from.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

__all__ = ["DemoContext", "DemoOptions", "DemoState", "read_metrics"]


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path
    clients: int = 2
    rounds: int = 3
    epsilon: float = 8.0
    protection: str = "none"
    data: Path | None = None
    model: str = "builtin:all-MiniLM-L6-v2"
    examples: int = 200
    devices: int = 2
    soak: float = 3.0
    max_length: int = 64
    console_port: int | None = None  # fedge demo --console: serve the console at the end


@dataclass
class DemoState:
    stages: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


class DemoContext:
    def __init__(self, options: DemoOptions, console: Console, stack: contextlib.ExitStack) -> None:
        self.o = options
        self.w = options.workdir.resolve()
        self.console = console
        self.stack = stack
        self.state = DemoState()
        self.run_dir = self.w / "run"
        self.data_dir = self.w / "data"
        self.coordinator: str | None = None  # the enrollment endpoint, once it is up

    @contextlib.contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[dict[str, Any]]:
        record: dict[str, Any] = {"name": name, "seconds": 0.0, "status": "ok", "detail": detail}
        started = time.monotonic()
        self.console.print(f"[bold]{name}[/bold] {detail}")
        try:
            yield record
        except BaseException:
            record["status"] = "failed"
            raise
        finally:
            record["seconds"] = round(time.monotonic() - started, 2)
            self.state.stages.append(record)
            self.write_summary()

    def write_summary(self) -> None:
        from fedge.atomic import atomic_write_text
        from server.report.summary import SUMMARY_NAME, SUMMARY_SCHEMA

        document = {
            "schema": SUMMARY_SCHEMA,
            "run_id": "demo",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **self.state.summary,
            "stages": self.state.stages,
            "notes": self.state.notes,
        }
        atomic_write_text(self.w / SUMMARY_NAME, json.dumps(document, indent=2) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    from server.federation.metrics import MetricsLog

    path = run_dir / "metrics.jsonl"
    return MetricsLog(path).read() if path.exists() else []
