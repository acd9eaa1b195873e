"""The watched folder: each ``*.txt`` file dropped there is classified once.

Writers should create the file under another name (or a dot-name) and rename it to ``*.txt``, so the
agent never reads half a file. For ``note.txt`` the agent writes ``results/note.json`` (atomically)
and moves the input to ``processed/note.txt``; a file that is not UTF-8 text, or that the model
fails on, moves to ``failed/`` with ``failed/note.txt.error`` saying why. Files wait in place while
no model is installed yet. Polling (twice a second by default) keeps this portable and dependency
free.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from edge_agent.serving import Classifier, NoModelError
from fedge.atomic import atomic_write_text
from fedge.bounded import InputError, read_capped
from fedge.errors import EdgeError
from fedge.logs import get_logger

__all__ = ["FolderInput"]

log = get_logger(__name__)

MAX_FILE = 1 << 20


class FolderInput:
    def __init__(
        self,
        folder: Path,
        classifier: Classifier,
        *,
        stop: threading.Event,
        interval: float = 0.5,
    ) -> None:
        self.folder = folder
        self.classifier = classifier
        self.interval = interval
        self._stop = stop
        self.results = folder / "results"
        self.processed = folder / "processed"
        self.failed = folder / "failed"
        try:
            for path in (folder, self.results, self.processed, self.failed):
                path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgeError(f"spec.input.folder: cannot create {folder} ({exc.strerror})") from exc
        self._thread = threading.Thread(target=self._run, name="fedge-folder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan()
            except OSError as exc:
                log.warning("watched folder %s: %s", self.folder, exc)
            self._stop.wait(self.interval)

    def scan(self) -> int:
        """Classify every waiting file once; returns how many were handled."""
        handled = 0
        for path in sorted(self.folder.glob("*.txt")):
            if self._stop.is_set():
                break
            if path.name.startswith(".") or not path.is_file():
                continue
            try:
                self._one(path)
            except NoModelError:
                return handled  # keep the files until a model is installed
            handled += 1
        return handled

    def _fail(self, path: Path, reason: str) -> None:
        log.warning("%s: %s", path, reason)
        atomic_write_text(self.failed / f"{path.name}.error", reason + "\n")
        os.replace(path, self.failed / path.name)

    def _one(self, path: Path) -> None:
        if not path.exists():
            return  # taken away meanwhile
        try:
            # One open, checked on the descriptor: a link to a 2 GB file, a device or a FIFO is
            # refused without reading it.
            data = read_capped(path, limit=MAX_FILE, what="an inbox file")
        except InputError as exc:
            self._fail(path, exc.reason)
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._fail(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
            return
        try:
            result = self.classifier.classify([text], source="folder", input_ids=[path.name])
        except NoModelError:
            raise
        except EdgeError as exc:
            self._fail(path, str(exc))
            return
        prediction = result.predictions[0]
        atomic_write_text(
            self.results / f"{path.stem}.json",
            json.dumps(
                {
                    "input": path.name,
                    "artifact": result.artifact,
                    "version": result.version,
                    "label": prediction.label,
                    "score": prediction.score,
                    "scores": prediction.scores,
                    "latencyMs": round(result.latency_ms, 3),
                },
                sort_keys=True,
            )
            + "\n",
        )
        os.replace(path, self.processed / path.name)
