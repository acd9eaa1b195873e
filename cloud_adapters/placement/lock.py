"""One apply at a time per placement state file: an advisory lock on ``<state>.lock``.

Two ``fedge place apply`` runs on one state would each plan, upload and apply retention from
their own reading of the state, and one's retention can remove the version the other has just
reported intact. :class:`StateLock` serializes them: ``fcntl.flock`` (exclusive) on a sibling file
``<state>.lock``, held from before the state is first read until retention has finished. The
holder writes its PID into the file, so a refused run can say who holds it.

The first attempt never blocks. With ``wait_s`` 0 (the default) a run that finds the lock held
fails at once with :class:`PlacementBusyError` (exit 2); otherwise it tries again until the
deadline. The kernel releases a flock when its holder exits, however it exits, so a crashed run
never leaves a stale lock behind; the file itself stays (removing it would let a third run lock a
new file while the second still holds the old one).

Locks are per open file description: two threads of one process, each with its own
:class:`StateLock`, exclude each other exactly as two processes do.
"""

from __future__ import annotations

import fcntl
import math
import os
import time
from pathlib import Path
from types import TracebackType

from fedge.errors import UsageError

__all__ = ["LOCK_SUFFIX", "PlacementBusyError", "StateLock", "lock_path"]

LOCK_SUFFIX = ".lock"
_POLL_S = 0.1
_HOLDER_BYTES = 64


def lock_path(state: str | os.PathLike[str]) -> Path:
    """The lock file beside a state file: ``placement.sqlite`` -> ``placement.sqlite.lock``."""
    path = Path(state)
    return path.with_name(path.name + LOCK_SUFFIX)


class PlacementBusyError(UsageError):
    """Another apply holds the state file's lock (exit 2); ``pid`` is its process, if known."""

    def __init__(self, state: Path, lock: Path, pid: int | None, waited_s: float) -> None:
        self.state = state
        self.lock = lock
        self.pid = pid
        holder = f"process {pid}" if pid is not None else "another process"
        waited = f" after waiting {waited_s:g}s" if waited_s > 0 else ""
        super().__init__(
            f"placement state {state} is locked by {holder} (another fedge place apply){waited}; "
            f"try again when it has finished, or pass --wait SECONDS (lock file {lock})"
        )


class StateLock:
    """An exclusive lock on one state file; a context manager, acquired on entry."""

    def __init__(self, state: str | os.PathLike[str], *, wait_s: float = 0.0) -> None:
        if not math.isfinite(wait_s) or wait_s < 0:
            raise UsageError(f"--wait must be a number of seconds, 0 or more (got {wait_s})")
        self.state = Path(state)
        self.path = lock_path(self.state)
        self.wait_s = wait_s
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this StateLock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UsageError(
                f"placement state {self.state}: cannot open its lock file {self.path} "
                f"({exc.strerror})"
            ) from exc
        started = time.monotonic()
        deadline = started + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    os.close(fd)
                    waited = time.monotonic() - started if self.wait_s > 0 else 0.0
                    raise PlacementBusyError(
                        self.state, self.path, _holder(self.path), round(waited, 1)
                    ) from None
                time.sleep(min(_POLL_S, left))
            except OSError as exc:
                os.close(fd)
                raise UsageError(
                    f"placement state {self.state}: cannot lock {self.path} ({exc.strerror})"
                ) from exc
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:  # the PID is a courtesy to whoever is refused; the lock is what counts
            pass

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _holder(path: Path) -> int | None:
    """The PID the holder wrote, or None (not written yet, or unreadable)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        text = os.read(fd, _HOLDER_BYTES).decode("ascii", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    return int(text) if text.isdigit() and len(text) <= 10 else None
