"""The privacy ledger's lock, the leftovers a killed write leaves, and the one way to start over.

Every write to a ledger and its marker holds the lock, so stale temporary files can be removed
safely under it, and a reset archives both files (never deletes them) under it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from client.privacy.ledger_file import marker_path, stale_temp_files
from fedge.atomic import fsync_dir
from fedge.errors import FederationError, UsageError
from fedge.logs import get_logger

__all__ = ["ledger_lock", "lock_fd", "remove_stale_temps", "reset_ledger"]

_log = get_logger(__name__)


def lock_fd(path: Path) -> int:
    """An exclusive lock on ``.<ledger name>.lock`` beside the ledger; close the fd to release."""
    lock_path = path.with_name(f".{path.name}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def ledger_lock(path: Path) -> Iterator[None]:
    try:
        fd = lock_fd(path)
    except OSError as exc:
        raise FederationError(
            f"{path.with_name(f'.{path.name}.lock')}: cannot lock the privacy ledger "
            f"({exc.strerror or exc})"
        ) from exc
    try:
        yield
    finally:
        os.close(fd)  # closing releases the lock


def remove_stale_temps(path: Path) -> None:
    """Remove what a write killed mid-way left; only under the lock, which every write holds."""
    for leftover in stale_temp_files(path):
        try:
            leftover.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            _log.warning("%s: cannot remove a stale temporary file (%s)", leftover, exc)
            continue
        _log.info("%s: removed a temporary file a killed write left behind", leftover)


def reset_ledger(path: str | os.PathLike[str]) -> list[Path]:
    """Archive a ledger and its marker so its budget starts over from zero, and log a warning.

    Each file is renamed ``<name>.reset-<UTC time>`` beside itself (nothing is deleted), under
    the ledger's lock. The privacy already spent is not undone: this is for a ledger that was lost
    or damaged, on the holder's explicit request. Returns the archived paths (none when there
    was nothing to archive).
    """
    ledger = Path(path)
    if not ledger.parent.is_dir():
        _log.warning("privacy ledger reset asked, but there is no ledger at %s", ledger)
        return []
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    archived: list[Path] = []
    with ledger_lock(ledger):
        remove_stale_temps(ledger)
        for current in (ledger, marker_path(ledger)):
            if not current.exists():
                continue
            target = current.with_name(f"{current.name}.reset-{stamp}")
            number = 1
            while target.exists():
                number += 1
                target = current.with_name(f"{current.name}.reset-{stamp}-{number}")
            try:
                os.replace(current, target)
            except OSError as exc:
                raise UsageError(
                    f"{current}: cannot archive it for --reset-ledger ({exc.strerror or exc})"
                ) from exc
            archived.append(target)
        if archived:
            fsync_dir(ledger.parent)
    if archived:
        _log.warning(
            "privacy ledger %s reset on the holder's request: archived as %s; epsilon spent "
            "starts again from zero here, though the privacy already spent is not undone",
            ledger,
            ", ".join(str(p) for p in archived),
        )
    else:
        _log.warning("privacy ledger reset asked, but there is no ledger at %s", ledger)
    return archived
