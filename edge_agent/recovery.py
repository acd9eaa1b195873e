"""Restart recovery: what an agent killed at any point finds in its state directory at start-up.

The active record names the model to serve (or, if that one no longer verifies, the previous one;
if the record is lost or damaged, the best verified model in the store, preferring the one the
last deployment installed);
the deployment record says where the last deployment stood, and an unfinished one (or one that
failed for a reason worth retrying) is picked up again, before the broker answers. A
half-downloaded file resumes with an HTTP Range request, since the installer keeps the bytes it
has. The retained ``desired`` then confirms or replaces that work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_agent.install import Installer, ref_of
from edge_agent.protocol import ArtifactRef, DesiredState, Phase, Rejection, sha256_hex, utc_now
from edge_agent.serving import ServedModel
from edge_agent.store import ActiveRecord, DeploymentRecord, InstalledModel, StateDir
from fedge.artifact import verify_artifact
from fedge.bounded import read_capped
from fedge.errors import FedgeError
from fedge.logs import get_logger
from fedge.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES

__all__ = ["Recovered", "recover"]

log = get_logger(__name__)


@dataclass(frozen=True)
class Recovered:
    """The state an agent starts from; all None on a device's first start."""

    serving: ServedModel | None = None
    active: ActiveRecord | None = None
    rejected: Rejection | None = None  # why an installed model was passed over
    record: DeploymentRecord | None = None
    resume: DesiredState | None = None  # the deployment to pick up again


def recover(state: StateDir, installer: Installer) -> Recovered:
    """Load the recorded model and find an unfinished deployment, from local state only."""
    serving: ServedModel | None = None
    active: ActiveRecord | None = None
    rejected: Rejection | None = None
    record = state.read_deployment()
    recorded = state.read_active()
    if recorded is not None:
        serving, active, rejected = _recover_model(state, installer, recorded)
    if serving is None:
        # No usable active record (lost, damaged, or naming a folder that no longer verifies):
        # the signed store is the source of truth, not the pointer.
        healed = _recover_from_store(state, installer, record)
        if healed is not None:
            serving, active = healed
    resume: DesiredState | None = None
    if record is not None and (
        not record.phase.is_terminal or (record.phase is Phase.FAILED and record.retryable)
    ):
        log.info("resuming deployment %s (%s)", record.deployment_id, record.phase.value)
        resume = record.desired
    _drop_stale_downloads(state, keep=None if resume is None else resume.manifest_sha256)
    return Recovered(
        serving=serving, active=active, rejected=rejected, record=record, resume=resume
    )


def _recover_model(
    state: StateDir, installer: Installer, active: ActiveRecord
) -> tuple[ServedModel | None, ActiveRecord | None, Rejection | None]:
    """Serve the active model, or the previous one if the active one no longer verifies."""
    rejected: Rejection | None = None
    candidates = [(active.current, active)]
    if active.previous is not None:
        candidates.append((active.previous, ActiveRecord(current=active.previous)))
    for installed, record in candidates:
        try:
            engine = installer.load_installed(installed)
        except FedgeError as exc:
            log.error(
                "installed model %s %s is unusable: %s",
                installed.ref.name,
                installed.ref.version,
                exc,
            )
            rejected = Rejection(channel="store", error=f"{installed.path}: {exc}", at=utc_now())
            continue
        if record is not active:
            state.write_active(record)
        return ServedModel(engine=engine, ref=installed.ref), record, rejected
    return None, None, rejected


def _store_candidates(state: StateDir, preferred: Path | None) -> list[Path]:
    """Installed folders, the one the last deployment names first, then the newest first."""
    found: list[Path] = []
    root = state.models_root
    for name_dir in sorted(root.iterdir()) if root.is_dir() else []:
        if name_dir.is_dir() and not name_dir.is_symlink():
            found.extend(
                folder
                for folder in name_dir.iterdir()
                if folder.is_dir() and not folder.is_symlink()
            )
    found.sort(key=lambda folder: folder.stat().st_mtime, reverse=True)
    if preferred is not None and preferred in found:
        found.remove(preferred)
        found.insert(0, preferred)
    return found


def _recover_from_store(
    state: StateDir, installer: Installer, record: DeploymentRecord | None
) -> tuple[ServedModel, ActiveRecord] | None:
    """Serve the best verified model in the store and write a new active record for it."""
    preferred = None
    if record is not None and record.phase is Phase.SUCCEEDED:
        preferred = state.model_dir(ref_of(record.desired))
    for folder in _store_candidates(state, preferred):
        try:
            manifest = verify_artifact(folder, installer.trusted)
            engine = installer.load(folder, verify=False)
            body = read_capped(folder / MANIFEST_NAME, limit=MAX_MANIFEST_BYTES)
        except FedgeError as exc:
            log.error("%s in the store is unusable: %s", folder, exc)
            continue
        ref = ArtifactRef(
            name=manifest.name, version=manifest.version, manifest_sha256=sha256_hex(body)
        )
        if state.model_dir(ref) != folder:
            log.error("%s in the store holds %s %s: not where it belongs", folder, ref.name,
                      ref.version)  # fmt: skip
            continue
        deployment_id = None
        if record is not None and ref_of(record.desired) == ref:
            deployment_id = record.deployment_id
        installed = InstalledModel(
            ref=ref,
            path=state.relative(folder),
            deployment_id=deployment_id,
            activated_at=utc_now(),
        )
        active = ActiveRecord(current=installed)
        state.write_active(active)
        log.warning(
            "the active record was missing or unusable; serving %s %s from the store",
            ref.name,
            ref.version,
        )
        return ServedModel(engine=engine, ref=ref), active
    return None


def _drop_stale_downloads(state: StateDir, *, keep: str | None) -> None:
    """Partial downloads no deployment will resume are removed at start-up."""
    root = state.partial_root
    for partial in sorted(root.iterdir()) if root.is_dir() else []:
        if partial.name != keep:
            log.info("removing the abandoned download %s", partial.name)
            state.remove(partial)
