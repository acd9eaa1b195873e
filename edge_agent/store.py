"""The agent's state directory: versioned model store, active pointer, partial downloads, bdSeq.

::

    <stateDir>/
      agent.lock               held (flock) while an agent runs: one agent per state directory
      birth_seq                the connection counter, incremented before every connect
      active.json              the version served now and the one before it (atomic pointer)
      deployment.json          the last deployment seen, its phase and error (survives restarts)
      http.json                the port the local HTTP endpoint is bound to
      partial/<sha256>/        downloads in progress, keyed by the manifest's digest
      models/<name>/<version>-<sha16>/   installed, verified artifacts

Every record is replaced atomically (:mod:`fedge.atomic`), and an artifact enters the store by one
rename of a fully downloaded and verified folder, so a crash at any point leaves either the old
state or the new one. An unreadable record is logged and treated as absent rather than stopping
the agent: the device keeps coming back up and the controller sees what it reports.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TypeVar

from pydantic import AwareDatetime, Field

from edge_agent.protocol import ArtifactRef, DesiredState, Part, Payload, Phase, ProtocolError
from fedge.atomic import atomic_write_bytes, atomic_write_text, fsync_dir
from fedge.errors import EdgeError
from fedge.logs import get_logger

__all__ = ["ActiveRecord", "DeploymentRecord", "InstalledModel", "StateDir"]

log = get_logger(__name__)

R = TypeVar("R", bound=Payload)


class InstalledModel(Part):
    ref: ArtifactRef
    path: str = Field(description="folder relative to the state directory")
    deployment_id: str | None = None
    activated_at: AwareDatetime


class ActiveRecord(Payload):
    current: InstalledModel
    previous: InstalledModel | None = None


class DeploymentRecord(Payload):
    """The last deployment the agent worked on; ``retryable`` failures are tried again."""

    deployment_id: str
    phase: Phase
    error: str | None = None
    retryable: bool = False
    desired: DesiredState
    updated_at: AwareDatetime


class StateDir:
    """Paths and records of one agent's state directory (created on first use)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._lock_handle: IO[bytes] | None = None
        try:
            for folder in (self.root, self.models_root, self.partial_root):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgeError(f"{self.root}: cannot create the state directory ({exc})") from exc

    @property
    def models_root(self) -> Path:
        return self.root / "models"

    @property
    def partial_root(self) -> Path:
        return self.root / "partial"

    # -- one agent per state directory ----------------------------------------------------------

    def lock(self) -> None:
        """Hold ``agent.lock``; the kernel releases it if the process dies, even by SIGKILL."""
        handle = (self.root / "agent.lock").open("ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            raise EdgeError(
                f"{self.root}: another agent is running with this state directory"
            ) from exc
        self._lock_handle = handle

    def unlock(self) -> None:
        if self._lock_handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_handle.fileno(), fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    # -- birth sequence -------------------------------------------------------------------------

    @property
    def birth_seq(self) -> int:
        try:
            return int((self.root / "birth_seq").read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return 0

    def next_birth_seq(self) -> int:
        """Increment and persist the counter before it is used, so it never repeats."""
        value = self.birth_seq + 1
        atomic_write_text(self.root / "birth_seq", f"{value}\n")
        return value

    # -- records --------------------------------------------------------------------------------

    def _read(self, name: str, model: type[R]) -> R | None:
        path = self.root / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("%s: cannot read (%s); treating it as absent", path, exc.strerror)
            return None
        try:
            return model.from_json(data, channel=str(path))
        except ProtocolError as exc:
            log.error("%s; treating it as absent", exc)
            return None

    def read_active(self) -> ActiveRecord | None:
        return self._read("active.json", ActiveRecord)

    def write_active(self, record: ActiveRecord) -> None:
        atomic_write_bytes(self.root / "active.json", record.to_json())

    def read_deployment(self) -> DeploymentRecord | None:
        return self._read("deployment.json", DeploymentRecord)

    def write_deployment(self, record: DeploymentRecord) -> None:
        atomic_write_bytes(self.root / "deployment.json", record.to_json())

    def write_http_port(self, port: int) -> None:
        atomic_write_text(self.root / "http.json", f'{{"port": {port}, "pid": {os.getpid()}}}\n')

    # -- artifacts ------------------------------------------------------------------------------

    def staging(self, manifest_sha256: str) -> Path:
        return self.partial_root / manifest_sha256

    def model_dir(self, ref: ArtifactRef) -> Path:
        return self.models_root / ref.name / f"{ref.version}-{ref.manifest_sha256[:16]}"

    def resolve(self, installed: InstalledModel) -> Path:
        return self.root / installed.path

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def install(self, staging: Path, ref: ArtifactRef) -> Path:
        """Move a verified download into the store with one rename (same filesystem)."""
        target = self.model_dir(ref)
        if target.exists():
            # Installed before (a restart between rename and switch-over): keep the installed copy.
            shutil.rmtree(staging, ignore_errors=True)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staging, target)
            fsync_dir(target.parent)
        except OSError as exc:
            raise EdgeError(f"{target}: cannot install the artifact ({exc.strerror})") from exc
        return target

    def remove(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def prune(self, keep: Iterable[Path], *, keep_partial: str | None = None) -> None:
        """Delete installed versions not in ``keep`` and partial downloads other than one."""
        kept = {path.resolve() for path in keep}
        for name_dir in sorted(self.models_root.iterdir()):
            for version_dir in sorted(name_dir.iterdir()) if name_dir.is_dir() else []:
                if version_dir.resolve() not in kept:
                    log.info("removing %s from the store", version_dir)
                    shutil.rmtree(version_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                name_dir.rmdir()  # only succeeds once empty
        for partial in sorted(self.partial_root.iterdir()):
            if partial.name != keep_partial:
                shutil.rmtree(partial, ignore_errors=True)
