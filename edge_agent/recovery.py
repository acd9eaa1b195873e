"""Restart recovery: what an agent killed at any point finds in its state directory at start-up.

The active record names the model to serve (or, if that one no longer verifies, the previous one);
the deployment record says where the last deployment stood, and an unfinished one (or one that
failed for a reason worth retrying) is picked up again, before the broker answers. A
half-downloaded file resumes with an HTTP Range request, since the installer keeps the bytes it
has. The retained ``desired`` then confirms or replaces that work.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.install import Installer
from edge_agent.protocol import DesiredState, Phase, Rejection, utc_now
from edge_agent.serving import ServedModel
from edge_agent.store import ActiveRecord, DeploymentRecord, StateDir
from fedge.errors import FedgeError
from fedge.logs import get_logger

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
    recorded = state.read_active()
    if recorded is not None:
        serving, active, rejected = _recover_model(state, installer, recorded)
    record = state.read_deployment()
    resume: DesiredState | None = None
    if record is not None and (
        not record.phase.is_terminal or (record.phase is Phase.FAILED and record.retryable)
    ):
        log.info("resuming deployment %s (%s)", record.deployment_id, record.phase.value)
        resume = record.desired
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
