"""What the console shows, read from what fedge already keeps in the operator's folder.

Nothing here keeps state of its own: runs are folders with ``metrics.jsonl`` (one line per
round) and ``flower-runs/`` (the ServerApp's progress), holders are the enrollment registry and
its audit log, placement is the reconciler's SQLite state. Each reader returns the same document
the matching CLI prints with ``-o json`` where one exists (:mod:`server.enrollment.listing`,
:mod:`cloud_adapters.placement.listing`), so a script can use either. A folder that is missing is
an empty list, never an error: the console starts before the first run and shows what appears.

:meth:`Sources.fingerprint` is a cheap summary (sizes and modification times) of every file a
view depends on; the event stream compares it once a second and tells the browser which views
changed.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from fedge.bounded import InputError, read_capped
from fedge.logs import get_logger
from fedge.output import document
from server.enrollment.registry import DB_FILE

__all__ = ["RunFolder", "Sources", "discover"]

log = get_logger(__name__)
T = TypeVar("T")

METRICS = "metrics.jsonl"
PROGRESS = "flower-runs"
SUMMARY = "summary.json"  # server.report.summary.SUMMARY_NAME, named here to stay light
_MAX_METRICS = 64 << 20
_MAX_SUMMARY = 16 << 20
_REGISTRY_DIRS = (".", "coordinator", "fedge-coordinator")
_PLACEMENT_NAMES = ("placement.sqlite", "fedge-placement.sqlite")


@dataclass(frozen=True)
class RunFolder:
    """A run's folder, named by its path below the console's folder (stable, URL-safe)."""

    name: str
    path: Path


def _run_folders(root: Path) -> list[RunFolder]:
    found: dict[Path, RunFolder] = {}
    candidates = [root, *sorted(root.glob("*")), *sorted(root.glob("*/*"))]
    for folder in candidates:
        if not folder.is_dir() or folder.is_symlink():
            continue
        if (folder / METRICS).is_file() or (folder / PROGRESS).is_dir():
            rel = folder.relative_to(root).as_posix()
            found[folder] = RunFolder(name="." if rel == "." else rel, path=folder)
    return sorted(found.values(), key=lambda run: run.name)


_QUIET_S = 600.0  # a simulated run whose metrics have not moved for this long has stopped


def _state_from_metrics(run: RunFolder, rows: list[dict[str, Any]], planned: Any) -> str:
    """A run without progress files (the simulation engine writes none): judged by its rounds."""
    if not rows:
        return "unknown"
    last = rows[-1].get("round")
    if isinstance(planned, int) and isinstance(last, int) and last >= planned:
        return "finished"
    try:
        quiet = time.time() - (run.path / METRICS).stat().st_mtime
    except OSError:
        return "unknown"
    return "running" if quiet < _QUIET_S else "stopped"


def _first(paths: Iterator[Path] | list[Path]) -> Path | None:
    return next((path for path in paths if path.exists()), None)


@dataclass
class Sources:
    """The files behind each view; :func:`discover` fills it from the console's folder."""

    root: Path
    registry_dir: Path | None = None
    placement_state: Path | None = None
    extra_runs: list[Path] = field(default_factory=list)
    # Parsed files by (what, path), kept while the file's inode, size and mtime stay the same:
    # fifty open pages must not each re-read metrics.jsonl or re-validate the run's policy.
    _parsed: dict[tuple[str, Path], tuple[tuple[int, int, int], Any]] = field(
        default_factory=dict, init=False, repr=False
    )
    _parsed_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _cached(self, what: str, path: Path, parse: Callable[[], T]) -> T:
        """``parse()`` once per version of ``path`` (a missing file is parsed every time)."""
        try:
            info = path.stat()
        except OSError:
            return parse()
        version = (info.st_ino, info.st_size, info.st_mtime_ns)
        with self._parsed_lock:
            hit = self._parsed.get((what, path))
        if hit is not None and hit[0] == version:
            return cast(T, hit[1])
        value = parse()
        with self._parsed_lock:
            self._parsed[(what, path)] = (version, value)
        return value

    # -- runs ----------------------------------------------------------------------------------

    def runs(self) -> list[RunFolder]:
        found = {run.path: run for run in _run_folders(self.root)}
        for path in self.extra_runs:
            found.setdefault(path, RunFolder(name=path.name, path=path))
        return sorted(found.values(), key=lambda run: run.name)

    def run(self, name: str) -> RunFolder | None:
        return next((run for run in self.runs() if run.name == name), None)

    def rounds(self, run: RunFolder) -> list[dict[str, Any]]:
        """``metrics.jsonl``, one dict per round; a torn last line (a crash mid-append) is left
        out, as the coordinator does when it resumes. Shared between requests: do not modify."""
        path = run.path / METRICS
        return self._cached("rounds", path, lambda: _read_rounds(path))

    @staticmethod
    def progress(run: RunFolder) -> dict[str, Any] | None:
        """The newest ServerApp progress document of the run (state, round, holders)."""
        from server.federation.deployment_engine import read_progress

        bodies = read_progress(run.path)
        if not bodies:
            return None
        newest = max(bodies.items(), key=lambda item: float(item[1].get("updated", 0.0)))
        return {**newest[1], "flowerRun": str(newest[0])}

    def budget(self, run: RunFolder) -> dict[str, Any] | None:
        """The policy's privacy budget, from the run's Flower app folder (its run config)."""
        path = run.path / "app" / "pyproject.toml"
        return self._cached("budget", path, lambda: _read_budget(path))

    def run_summary(self, run: RunFolder) -> dict[str, Any]:
        rows = self.rounds(run)
        progress = self.progress(run) or {}
        last = rows[-1] if rows else {}
        budget = self.budget(run) or {}
        planned = progress.get("rounds") or budget.get("rounds")
        state = progress.get("state") or _state_from_metrics(run, rows, planned)
        return {
            "name": run.name,
            "path": str(run.path),
            "state": state,
            "round": progress.get("round", last.get("round")),
            "rounds": planned,
            "clients": len(last.get("clients", [])) if last else progress.get("clients"),
            "accuracy": last.get("eval_accuracy"),
            "flowerRun": progress.get("flowerRun"),
            "updated": progress.get("updated"),
        }

    def run_detail(self, run: RunFolder) -> dict[str, Any]:
        rows = self.rounds(run)
        epsilon: dict[str, float] = {}
        for row in rows:
            for holder, value in (row.get("epsilon") or {}).items():
                if isinstance(value, int | float):
                    epsilon[holder] = max(epsilon.get(holder, 0.0), float(value))
        return document(
            "ConsoleRun",
            rounds=rows,
            summary=self.run_summary(run),
            progress=self.progress(run),
            budget=self.budget(run),
            epsilonPerHolder=epsilon,
            userEpsilon=next(
                (row["user_epsilon"] for row in reversed(rows) if row.get("user_epsilon")), None
            ),
        )

    # -- holders -------------------------------------------------------------------------------

    def registry(self) -> Any:
        if self.registry_dir is None:
            return None
        from server.enrollment.registry import Registry

        return Registry.in_workdir(self.registry_dir)

    def holders(self) -> dict[str, Any]:
        """``fedge enroll list -o json``'s document, field for field (its schema is closed);
        what each holder spent is in the overview (:meth:`spent_by_holder`)."""
        from server.enrollment.listing import holder_items

        registry = self.registry()
        items = holder_items(registry.holders()) if registry is not None else []
        return document("HolderList", items, workdir=_text(self.registry_dir), superlink=None)

    def audit(self, name: str | None = None, *, limit: int = 200) -> dict[str, Any]:
        from server.enrollment.listing import audit_items

        registry = self.registry()
        entries = registry.audit(subject=name, limit=limit) if registry is not None else []
        return document(
            "AuditLog", audit_items(entries), workdir=_text(self.registry_dir), name=name
        )

    def spent_by_holder(self) -> dict[str, float]:
        """The highest epsilon each holder reached in any run (the metrics' per-round values)."""
        spent: dict[str, float] = {}
        for run in self.runs():
            for row in self.rounds(run):
                for holder, value in (row.get("epsilon") or {}).items():
                    if isinstance(value, int | float):
                        spent[holder] = max(spent.get(holder, 0.0), float(value))
        return spent

    # -- placement -----------------------------------------------------------------------------

    def placement(self) -> dict[str, Any]:
        from cloud_adapters.placement.listing import placement_items
        from cloud_adapters.placement.state import PlacementState

        state = self.placement_state
        items: list[dict[str, Any]] = []
        if state is not None and state.is_file():
            with PlacementState(state) as store:
                items = placement_items(store)
        return document("PlacementStatus", items, state=_text(state), artifact=None)

    # -- explanations ----------------------------------------------------------------------------

    def summary_files(self) -> list[Path]:
        """The ``summary.json`` files the demo (or a run) wrote: the folder's own and each
        run folder's."""
        candidates = [self.root / SUMMARY, *(run.path / SUMMARY for run in self.runs())]
        return sorted({path for path in candidates if path.is_file()})

    def explanations(self) -> dict[str, Any]:
        """The sample inferences the demo had a device explain (``summary.json``'s samples)."""
        items: list[dict[str, Any]] = []
        for path in self.summary_files():
            samples = self._cached("explanations", path, functools.partial(_read_samples, path))
            where = path.parent.relative_to(self.root).as_posix()
            items.extend({"run": where, **sample} for sample in samples)
        return document("ConsoleExplanations", items, workdir=str(self.root))

    # -- change detection ----------------------------------------------------------------------

    def fingerprint(self) -> dict[str, tuple[Any, ...]]:
        """Per view, the size and mtime of every file it reads (cheap: stat calls only)."""

        def stat(*paths: Path) -> tuple[Any, ...]:
            found: list[Any] = []
            for path in paths:
                try:
                    info = path.stat()
                except OSError:
                    found.append(None)
                    continue
                found.append((str(path), info.st_size, info.st_mtime_ns))
            return tuple(found)

        runs: list[Path] = []
        for run in self.runs():
            runs.append(run.path / METRICS)
            progress = run.path / PROGRESS
            runs.extend(sorted(progress.glob("*.json")) if progress.is_dir() else [])
        registry = [] if self.registry_dir is None else [self.registry_dir / DB_FILE]
        if registry:
            registry.append(registry[0].with_name(registry[0].name + "-wal"))
        placement = [] if self.placement_state is None else [self.placement_state]
        if placement:
            placement.append(placement[0].with_name(placement[0].name + "-wal"))
        return {
            "runs": stat(*runs),
            "holders": stat(*registry, *runs),
            "placement": stat(*placement),
            "explanations": stat(*self.summary_files()),
        }


def _read_rounds(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        text = read_capped(path, limit=_MAX_METRICS, what="metrics").decode("utf-8", "replace")
    except InputError as exc:
        log.warning("%s", exc)
        return []
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("round"), int):
            rows.append(row)
    return rows


def _read_samples(path: Path) -> list[dict[str, Any]]:
    """The explained samples of a ``summary.json`` (the report's reader, so the two agree); a
    file that does not read is logged and shows nothing, as the report shows it as a problem."""
    from fedge.errors import UsageError
    from server.report.summary import RunSummary

    try:
        text = read_capped(path, limit=_MAX_SUMMARY, what="summary").decode("utf-8")
        summary = RunSummary.from_json(text, source=str(path))
    except (InputError, UsageError, UnicodeDecodeError) as exc:
        log.warning("console: %s", exc)
        return []
    found = []
    for sample in summary.samples or ():
        why = sample.explanation
        if why is None:
            continue
        found.append(
            {
                "text": sample.text,
                "expected": sample.expected,
                "device": why.device,
                "label": why.label,
                "score": why.score,
                "ms": why.ms,
                "words": [
                    {"word": w.word, "start": w.start, "end": w.end, "attribution": w.attribution}
                    for w in why.words
                ],
            }
        )
    return found


def _read_budget(path: Path) -> dict[str, Any] | None:
    try:
        config = tomllib.loads(read_capped(path, limit=1 << 20).decode("utf-8"))
        text = str(config["tool"]["flwr"]["app"]["config"]["policy"])
    except (InputError, KeyError, TypeError, ValueError, UnicodeDecodeError):
        return None
    from policies import FederationPolicy, check_text, the_one

    try:
        policy = the_one(check_text(text, name=str(path)), FederationPolicy, source=str(path))
    except Exception:  # noqa: BLE001 - a run folder fedge did not write is shown without budget
        return None
    privacy = policy.spec.privacy
    return {
        "epsilon": privacy.target_epsilon,
        "delta": privacy.delta,
        "rounds": policy.spec.rounds,
        "protection": policy.spec.protection,
    }


def _text(path: Path | None) -> str:
    """A path for a listing's string field: "" when there is none (not "None")."""
    return "" if path is None else str(path)


def discover(
    root: Path,
    *,
    registry_dir: Path | None = None,
    placement_state: Path | None = None,
    runs: list[Path] | None = None,
) -> Sources:
    """Find the registry and the placement state below ``root`` unless given."""
    if registry_dir is None:
        found = _first([root / name / DB_FILE for name in _REGISTRY_DIRS])
        registry_dir = found.parent if found is not None else None
    if placement_state is None:
        placement_state = _first([root / name for name in _PLACEMENT_NAMES])
    return Sources(
        root=root,
        registry_dir=registry_dir,
        placement_state=placement_state,
        extra_runs=list(runs or []),
    )
