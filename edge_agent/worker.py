"""The deployment state machine of one device, and the worker thread that runs it.

One deployment at a time goes ``QUEUED``, then the installer's ``DOWNLOADING -> VERIFYING ->
ACTIVATING``, then ``SUCCEEDED`` once the new model is switched in by one write of the active
record; anything that goes wrong ends it ``FAILED`` with the reason, and the old model keeps
serving. A newer ``desired`` cancels the deployment in progress; ``rollback`` serves the previous
model again. Every phase is persisted in the state directory (what :mod:`edge_agent.recovery`
reads after a restart) and handed to ``on_change``, which publishes ``reported``.

The agent's message handlers (paho's network thread) only enqueue work here: :meth:`submit`,
:meth:`request_rollback`, :meth:`refuse_desired`, :meth:`reject`. Everything shared sits behind
one lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.config import AgentSettings
from edge_agent.download import Cancelled, DownloadError
from edge_agent.install import Installer, Prepared, ref_of
from edge_agent.protocol import (
    ArtifactRef,
    DesiredState,
    Phase,
    Progress,
    Rejection,
    utc_now,
)
from edge_agent.recovery import Recovered
from edge_agent.serving import ServedModel
from edge_agent.store import ActiveRecord, DeploymentRecord, InstalledModel, StateDir
from fedge.errors import FedgeError
from fedge.logs import get_logger

__all__ = ["DeploymentWorker", "Snapshot", "View", "replace_current"]

log = get_logger(__name__)

_PROGRESS_EVERY_S = 1.0


@dataclass(frozen=True)
class View:
    """What ``reported`` says about the deployment (the rest comes from the live state)."""

    phase: Phase | None = None
    deployment_id: str | None = None
    target: ArtifactRef | None = None
    error: str | None = None
    progress: Progress | None = None


@dataclass(frozen=True)
class Snapshot:
    """The deployment's part of ``reported``, read at one moment."""

    view: View
    current: ArtifactRef | None
    rejected: Rejection | None


def _view_of(record: DeploymentRecord) -> View:
    return View(
        phase=record.phase,
        deployment_id=record.deployment_id,
        target=ref_of(record.desired),
        error=record.error,
    )


class DeploymentWorker:
    """Runs deployments and rollbacks one at a time (:meth:`run` is the worker thread)."""

    def __init__(
        self,
        settings: AgentSettings,
        state: StateDir,
        installer: Installer,
        *,
        stop: threading.Event,
        on_change: Callable[[], None],
        on_new_model: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.state = state
        self.installer = installer
        self._stop = stop
        self._on_change = on_change  # publish ``reported``
        self._on_new_model = on_new_model  # a switch: the health window starts again
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._serving: ServedModel | None = None
        self._active: ActiveRecord | None = None
        self._record: DeploymentRecord | None = None
        self._view = View()
        self._rejected: Rejection | None = None
        self._pending: DesiredState | None = None
        self._pending_rollback = False
        self._working: DesiredState | None = None
        self._cancel = threading.Event()
        self._last_progress = 0.0
        self._publish_results = settings.publish_results
        self._telemetry_interval = settings.telemetry_interval

    # -- read-only views ------------------------------------------------------------------------

    @property
    def serving(self) -> ServedModel | None:
        with self._lock:
            return self._serving

    @property
    def current(self) -> ArtifactRef | None:
        with self._lock:
            return None if self._serving is None else self._serving.ref

    @property
    def publish_results(self) -> bool:
        with self._lock:
            return self._publish_results

    @property
    def telemetry_interval(self) -> float:
        with self._lock:
            return self._telemetry_interval

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                view=self._view,
                current=None if self._serving is None else self._serving.ref,
                rejected=self._rejected,
            )

    # -- what the agent hands over --------------------------------------------------------------

    def resume(self, recovered: Recovered) -> None:
        """Start from the state a restart found (before :meth:`run`)."""
        record = recovered.record
        with self._cond:
            self._serving = recovered.serving
            self._active = recovered.active
            self._rejected = recovered.rejected
            self._record = record
            if record is not None:
                self._view = _view_of(record)
        if record is not None and record.phase is Phase.SUCCEEDED:
            self._apply_settings(record.desired)
        with self._cond:
            self._pending = recovered.resume

    def submit(self, desired: DesiredState) -> None:
        """A valid ``desired``: run it next, cancelling the one in progress."""
        with self._cond:
            if desired in (self._working, self._pending):
                return  # the retained copy again, after a reconnect
            if self._working is not None:
                log.info("deployment %s replaced by %s", self._working.deployment_id,
                         desired.deployment_id)  # fmt: skip
                self._cancel.set()
            self._pending = desired
            self._cond.notify_all()

    def refuse_desired(self, error: str, *, deployment_id: str | None) -> None:
        """A malformed ``desired``: whatever was in progress is no longer what is desired."""
        with self._cond:
            self._cancel.set()
            self._pending = None
            self._rejected = Rejection(channel="desired", error=error, at=utc_now())
            self._view = View(phase=Phase.FAILED, deployment_id=deployment_id, error=error)

    def request_rollback(self) -> None:
        with self._cond:
            self._cancel.set()
            self._pending = None
            self._pending_rollback = True
            self._cond.notify_all()

    def reject(self, channel: str, error: str) -> None:
        """Record a refused message or command for ``reported``."""
        with self._lock:
            self._rejected = Rejection(channel=channel, error=error, at=utc_now())

    def halt(self) -> None:
        """Set ``stop``, cancel the deployment in progress and wake the worker."""
        with self._cond:
            self._stop.set()
            self._cancel.set()
            self._cond.notify_all()

    # -- the worker -----------------------------------------------------------------------------

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._stop.is_set() and self._pending is None:
                    if self._pending_rollback:
                        break
                    self._cond.wait()
                if self._stop.is_set():
                    return
                rollback, self._pending_rollback = self._pending_rollback, False
                desired, self._pending = (
                    (None, self._pending) if rollback else (self._pending, None)
                )
                self._working = desired
                self._cancel = cancel = threading.Event()
            try:
                if rollback:
                    self._rollback()
                elif desired is not None:
                    self._install(desired, cancel)
            except Exception:  # the worker must outlive any bug in one deployment
                log.exception("deployment worker error")
            finally:
                with self._cond:
                    self._working = None

    def _apply_settings(self, desired: DesiredState) -> None:
        settings = desired.settings
        with self._lock:
            self._publish_results = (
                self.settings.publish_results
                if settings.publish_results is None
                else settings.publish_results
            )
            self._telemetry_interval = (
                self.settings.telemetry_interval
                if settings.telemetry_interval is None
                else settings.telemetry_interval
            )

    def _record_phase(
        self,
        desired: DesiredState,
        phase: Phase,
        *,
        error: str | None = None,
        retryable: bool = False,
        progress: Progress | None = None,
    ) -> None:
        """Set the view, persist the record (unless only progress moved) and report."""
        record: DeploymentRecord | None = None
        with self._lock:
            previous = self._view
            self._view = View(
                phase=phase,
                deployment_id=desired.deployment_id,
                target=ref_of(desired),
                error=error,
                progress=progress if phase is Phase.DOWNLOADING else None,
            )
            moved = (previous.phase, previous.deployment_id, previous.error) != (
                phase,
                desired.deployment_id,
                error,
            )
            if moved:
                record = self._record = DeploymentRecord(
                    deployment_id=desired.deployment_id,
                    phase=phase,
                    error=error,
                    retryable=retryable,
                    desired=desired,
                    updated_at=utc_now(),
                )
            now = time.monotonic()
            if record is None and now - self._last_progress < _PROGRESS_EVERY_S:
                return  # progress alone is reported at most once a second
            self._last_progress = now
        if record is not None:
            try:
                self.state.write_deployment(record)
            except OSError as exc:
                log.error("cannot record the deployment state: %s", exc)
        self._on_change()

    def _install(self, desired: DesiredState, cancel: threading.Event) -> None:
        """Run one deployment: adopt the model served, or install the desired one and switch."""
        if self._finished_before(desired):
            return
        self._apply_settings(desired)
        with self._lock:
            active = self._active
            self._rejected = None
        if active is not None and active.current.ref.manifest_sha256 == desired.manifest_sha256:
            if active.current.ref != ref_of(desired):
                # The hash names the installed manifest, whose name and version differ: the
                # document contradicts the signed manifest, so it cannot have succeeded.
                installed = active.current.ref
                self._record_phase(
                    desired,
                    Phase.FAILED,
                    error=f"manifest {desired.manifest_sha256[:12]}… is {installed.name} "
                    f"{installed.version}, the deployment names {desired.artifact} "
                    f"{desired.version}",
                )
                return
            self._adopt(desired, active)
            return
        log.info("deployment %s: %s %s", desired.deployment_id, desired.artifact, desired.version)
        self._record_phase(desired, Phase.QUEUED)
        prepared = self._prepare(desired, cancel)
        if prepared is not None and not cancel.is_set():
            self._switch(desired, prepared)

    def _finished_before(self, desired: DesiredState) -> bool:
        """A deployment that already ended is reported again, not redone (retryable excepted).

        A SUCCEEDED record counts only while the device really serves that version: after a lost
        or damaged active record the retained ``desired`` is carried out again, so the store and
        what is served, not the record, decide.
        """
        record = self._record
        with self._lock:
            active, serving = self._active, self._serving
        if (
            record is None
            or record.desired != desired
            or not record.phase.is_terminal
            or (record.phase is Phase.FAILED and record.retryable)
        ):
            return False
        if record.phase is Phase.SUCCEEDED and (
            serving is None or active is None or active.current.ref != ref_of(desired)
        ):
            log.info(
                "deployment %s ended SUCCEEDED but %s %s is not served: carrying it out again",
                desired.deployment_id,
                desired.artifact,
                desired.version,
            )
            return False
        log.info("deployment %s already ended %s", desired.deployment_id, record.phase.value)
        with self._lock:
            self._view = View(
                phase=record.phase,
                deployment_id=record.deployment_id,
                target=ref_of(desired),
                error=record.error,
            )
        self._on_change()
        return True

    def _prepare(self, desired: DesiredState, cancel: threading.Event) -> Prepared | None:
        """Run the installer; a failure ends the deployment FAILED (unless it was cancelled)."""

        def on_phase(phase: Phase, error: str | None, progress: Progress | None) -> None:
            if not cancel.is_set():
                self._record_phase(desired, phase, error=error, progress=progress)

        try:
            return self.installer.prepare(desired, on_phase=on_phase, cancel=cancel)
        except Cancelled:
            log.info("deployment %s cancelled", desired.deployment_id)
            self._discard(desired)
            return None
        except DownloadError as exc:
            error, retryable = str(exc), exc.transient
        except FedgeError as exc:
            error, retryable = str(exc), False
        except OSError as exc:  # the state directory: full disk, permissions
            error, retryable = f"{exc.filename or 'state directory'}: {exc.strerror or exc}", True
        if not retryable or cancel.is_set():
            self._discard(desired)  # only a deployment that will be retried keeps its bytes
        if not cancel.is_set():
            log.warning("deployment %s failed: %s", desired.deployment_id, error)
            self._record_phase(desired, Phase.FAILED, error=error, retryable=retryable)
        return None

    def _discard(self, desired: DesiredState) -> None:
        """Delete a download that ended, unless the deployment queued next wants the same bytes."""
        with self._cond:
            pending = self._pending
        if pending is None or pending.manifest_sha256 != desired.manifest_sha256:
            self.installer.discard(desired)

    def _adopt(self, desired: DesiredState, active: ActiveRecord) -> None:
        """The desired version is the one served: take the new deployment id, nothing to fetch."""
        current = active.current.model_copy(update={"deployment_id": desired.deployment_id})
        updated = active.model_copy(update={"current": current})
        self.state.write_active(updated)
        with self._lock:
            self._active = updated
        self._record_phase(desired, Phase.SUCCEEDED)

    def _switch(self, desired: DesiredState, prepared: Prepared) -> None:
        with self._lock:
            before = self._active
        installed = InstalledModel(
            ref=prepared.ref,
            path=self.state.relative(prepared.folder),
            deployment_id=desired.deployment_id,
            activated_at=utc_now(),
        )
        active = ActiveRecord(
            current=installed, previous=None if before is None else before.current
        )
        try:
            self.state.write_active(active)
        except OSError as exc:
            self._record_phase(
                desired, Phase.FAILED, error=f"cannot switch: {exc.strerror or exc}", retryable=True
            )
            return
        with self._lock:
            self._serving = ServedModel(engine=prepared.engine, ref=prepared.ref)
            self._active = active
        self._on_new_model()
        self._prune(active)
        log.info("now serving %s %s", prepared.ref.name, prepared.ref.version)
        self._record_phase(desired, Phase.SUCCEEDED)

    def _prune(self, active: ActiveRecord) -> None:
        keep = [self.state.resolve(active.current)]
        if active.previous is not None:
            keep.append(self.state.resolve(active.previous))
        try:
            self.state.prune(keep)
        except OSError as exc:
            log.warning("cannot prune the model store: %s", exc)

    def _rollback(self) -> None:
        """Undo the current deployment: cancel it if unfinished, else serve the previous model."""
        with self._lock:
            record, active = self._record, self._active
        if record is None:
            self._reject_command("rollback: there is no deployment to roll back")
            return
        if record.phase is Phase.ROLLED_BACK:
            self._on_change()
            return
        if record.phase is not Phase.SUCCEEDED:
            self._record_phase(record.desired, Phase.ROLLED_BACK, error=record.error)
            return
        if active is None or active.previous is None:
            self._reject_command("rollback: no previous version is installed")
            return
        try:
            engine = self.installer.load_installed(active.previous)
        except FedgeError as exc:
            self._reject_command(f"rollback: the previous version is unusable ({exc})")
            return
        restored = replace_current(active.previous, active.current)
        self.state.write_active(restored)
        with self._lock:
            self._serving = ServedModel(engine=engine, ref=restored.current.ref)
            self._active = restored
        self._on_new_model()
        log.info("rolled back to %s %s", restored.current.ref.name, restored.current.ref.version)
        self._record_phase(record.desired, Phase.ROLLED_BACK)

    def _reject_command(self, message: str) -> None:
        log.warning("%s", message)
        self.reject("cmd", message)
        self._on_change()


def replace_current(current: InstalledModel, previous: InstalledModel) -> ActiveRecord:
    """The active record after a rollback: ``current`` serves again, ``previous`` stays nearby."""
    return ActiveRecord(
        current=current.model_copy(update={"activated_at": utc_now()}), previous=previous
    )
