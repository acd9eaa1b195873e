"""The edge agent: follow the retained ``desired`` document, serve the model, report.

One :class:`Agent` is one device. It keeps serving the model it has while it works on a new one,
and switches only to a model that was downloaded in full, verified against the device's own
trusted keys, installed by one rename and answered a sample inference; anything else ends the
deployment ``FAILED`` with the reason on ``reported``, and the old model keeps serving. The last
deployment and the active model are recorded in the state directory, so an agent killed at any
point picks up where it was (a half-downloaded file resumes with an HTTP Range request) even before
the broker answers; the retained ``desired`` then confirms or replaces that work.

Threads: paho's network thread delivers messages (handlers only enqueue); one worker runs
deployments and rollbacks one at a time (a newer ``desired`` cancels the one in progress); one
thread publishes telemetry; the folder and HTTP inputs have their own. Everything shared sits
behind one lock.

Many agents fit in one process, one :class:`Agent` per device, each with its own
:class:`~edge_agent.config.AgentSettings` (distinct ``device_id`` and ``state_dir``)::

    agents = [Agent(settings_for(i), inference_threads=1) for i in range(100)]
    for agent in agents:
        agent.start()
    ...
    for agent in agents:
        agent.stop()

That is how a fleet benchmark can drive a real broker with a hundred devices without a hundred
interpreters (about five threads per agent, one ONNX Runtime session each once a model arrives).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.config import AgentSettings
from edge_agent.download import Cancelled, DownloadError
from edge_agent.folder_input import FolderInput
from edge_agent.http_input import HttpInput
from edge_agent.inference import InferenceEngine
from edge_agent.install import Deployer, Prepared, ref_of
from edge_agent.link import MqttLink
from edge_agent.protocol import (
    ArtifactRef,
    Channel,
    Command,
    CommandMessage,
    DesiredState,
    Health,
    Phase,
    Presence,
    Progress,
    ProtocolError,
    Rejection,
    ReportedState,
    ResultMessage,
    StatusMessage,
    TelemetryMessage,
    decode,
    device_topics,
    utc_now,
)
from edge_agent.serving import Classified, NoModelError, Source
from edge_agent.store import ActiveRecord, DeploymentRecord, InstalledModel, StateDir
from edge_agent.telemetry import InferenceStats
from fedge.errors import EdgeError, FedgeError
from fedge.logs import get_logger

__all__ = ["Agent"]

log = get_logger(__name__)

_PROGRESS_EVERY_S = 1.0


@dataclass(frozen=True)
class _View:
    """What ``reported`` says about the deployment (the rest comes from the live state)."""

    phase: Phase | None = None
    deployment_id: str | None = None
    target: ArtifactRef | None = None
    error: str | None = None
    progress: Progress | None = None


@dataclass(frozen=True)
class _Serving:
    engine: InferenceEngine
    ref: ArtifactRef


def _guess_deployment_id(payload: bytes) -> str | None:
    """The id of a malformed ``desired``, when there is one to name in the report."""
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    value = doc.get("deploymentId") if isinstance(doc, dict) else None
    return value[:128] if isinstance(value, str) and value else None


class Agent:
    """One edge device. Build it, :meth:`start` it, :meth:`stop` it (or use ``with``)."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        inference_threads: int | None = None,
        reconnect_delay: tuple[int, int] = (1, 10),
        download_timeout: float = 30.0,
        retry_delays: Sequence[float] = (1.0, 2.0, 4.0, 8.0),
        folder_interval: float = 0.5,
        client_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.topics = device_topics(settings.fleet, settings.device_id)
        self.state = StateDir(settings.state_dir)
        self.stats = InferenceStats()
        self.deployer = Deployer(
            self.state,
            settings.trusted_keys,
            inference_threads=inference_threads,
            download_timeout=download_timeout,
            retry_delays=retry_delays,
        )
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._started = False
        self._serving: _Serving | None = None
        self._active: ActiveRecord | None = None
        self._record: DeploymentRecord | None = None
        self._view = _View()
        self._rejected: Rejection | None = None
        self._birth_seq = self.state.birth_seq
        self._pending: DesiredState | None = None
        self._pending_rollback = False
        self._working: DesiredState | None = None
        self._cancel = threading.Event()
        self._last_progress = 0.0
        self._publish_results = settings.publish_results
        self._telemetry_interval = settings.telemetry_interval
        self._folder_interval = folder_interval
        self._threads: list[threading.Thread] = []
        self._http: HttpInput | None = None
        self._folder: FolderInput | None = None
        self._link = MqttLink(
            settings.broker,
            self.topics,
            on_message=self._on_message,
            on_connected=self._on_connected,
            next_birth_seq=self.state.next_birth_seq,
            will_payload=self._offline_payload,
            reconnect_delay=reconnect_delay,
            client_id=client_id,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the active model, start the inputs, the worker and the broker connection."""
        self.state.lock()
        try:
            self._restore()
            if self.settings.http_port is not None:
                self._http = HttpInput(self, port=self.settings.http_port)
                self._http.start()
                self.state.write_http_port(self._http.port)
            if self.settings.input_folder is not None:
                self._folder = FolderInput(
                    self.settings.input_folder,
                    self,
                    stop=self._stop,
                    interval=self._folder_interval,
                )
                self._folder.start()
            for target, name in ((self._work, "worker"), (self._telemetry_loop, "telemetry")):
                thread = threading.Thread(
                    target=target, name=f"fedge-{name}-{self.settings.device_id}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
            self._link.start()
        except BaseException:
            self._shutdown_parts()
            raise
        self._started = True
        log.info("agent %s started; following %s", self.settings.device_id, self.topics.desired)

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop working, say ``offline``, disconnect, release the state directory."""
        if not self._started:
            return
        self._started = False
        self._shutdown_parts(timeout=timeout)
        log.info("agent %s stopped", self.settings.device_id)

    def _shutdown_parts(self, *, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop.set()
            self._cancel.set()
            self._cond.notify_all()
        try:
            self._link.stop(last_words=self._status_payload(Presence.OFFLINE))
        finally:
            if self._http is not None:
                self._http.stop()
            if self._folder is not None:
                self._folder.join(timeout)
            for thread in self._threads:
                thread.join(timeout)
            self.state.unlock()

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def wait_connected(self, timeout: float) -> bool:
        return self._link.wait_connected(timeout)

    # -- read-only views ------------------------------------------------------------------------

    @property
    def http_port(self) -> int | None:
        return None if self._http is None else self._http.port

    @property
    def current(self) -> ArtifactRef | None:
        with self._lock:
            return None if self._serving is None else self._serving.ref

    def reported(self) -> ReportedState:
        health = self.stats.health()
        with self._lock:
            view = self._view
            return ReportedState(
                device_id=self.settings.device_id,
                fleet=self.settings.fleet,
                phase=view.phase,
                deployment_id=view.deployment_id,
                target=view.target,
                current=None if self._serving is None else self._serving.ref,
                error=view.error,
                rejected=self._rejected,
                progress=view.progress,
                health=Health(
                    samples=health.count,
                    error_rate=health.error_rate,
                    p50_ms=health.p50_ms,
                    p95_ms=health.p95_ms,
                ),
                birth_seq=self._birth_seq,
                ts=utc_now(),
            )

    def status_document(self) -> bytes:
        return self.reported().to_json()

    # -- serving --------------------------------------------------------------------------------

    def classify(
        self, texts: Sequence[str], *, source: Source, input_ids: Sequence[str]
    ) -> Classified:
        with self._lock:
            serving = self._serving
            publish = self._publish_results
        if serving is None:
            raise NoModelError("no model is installed yet")
        start = time.perf_counter()
        try:
            predictions = serving.engine.classify(texts)
        except EdgeError:
            self.stats.record((time.perf_counter() - start) * 1000, ok=False)
            raise
        latency = (time.perf_counter() - start) * 1000
        self.stats.record(latency, ok=True)
        if publish:
            now = utc_now()
            for input_id, prediction in zip(input_ids, predictions, strict=False):
                message = ResultMessage(
                    device_id=self.settings.device_id,
                    ts=now,
                    source=source,
                    input_id=input_id,
                    label=prediction.label,
                    score=prediction.score,
                    scores=prediction.scores,
                    version=serving.ref.version,
                    latency_ms=latency / max(1, len(texts)),
                )
                self._link.publish(Channel.RESULTS, message.to_json(), retain=False)
        return Classified(
            artifact=serving.ref.name,
            version=serving.ref.version,
            predictions=predictions,
            latency_ms=latency,
        )

    # -- start-up -------------------------------------------------------------------------------

    def _restore(self) -> None:
        """Serve the recorded model and resume an unfinished deployment from local state."""
        active = self.state.read_active()
        if active is not None:
            self._restore_model(active)
        record = self.state.read_deployment()
        self._record = record
        if record is None:
            return
        self._view = _View(
            phase=record.phase,
            deployment_id=record.deployment_id,
            target=ref_of(record.desired),
            error=record.error,
        )
        if record.phase is Phase.SUCCEEDED:
            self._apply_settings(record.desired)
        if not record.phase.is_terminal or (record.phase is Phase.FAILED and record.retryable):
            log.info("resuming deployment %s (%s)", record.deployment_id, record.phase.value)
            self._pending = record.desired

    def _restore_model(self, active: ActiveRecord) -> None:
        """Serve the active model, or the previous one if the active one no longer verifies."""
        candidates = [(active.current, active)]
        if active.previous is not None:
            candidates.append((active.previous, ActiveRecord(current=active.previous)))
        for installed, record in candidates:
            try:
                engine = self.deployer.load_installed(installed)
            except FedgeError as exc:
                log.error("installed model %s %s is unusable: %s", *_name(installed), exc)
                self._rejected = Rejection(
                    channel="store", error=f"{installed.path}: {exc}", at=utc_now()
                )
                continue
            if record is not active:
                self.state.write_active(record)
            self._serving = _Serving(engine=engine, ref=installed.ref)
            self._active = record
            return

    # -- messages (paho's network thread: enqueue and return) -----------------------------------

    def _on_connected(self, birth_seq: int) -> None:
        with self._lock:
            self._birth_seq = birth_seq
        self._link.publish(Channel.STATUS, self._status_payload(Presence.ONLINE), retain=True)
        self._publish_reported()

    def _on_message(self, channel: Channel, payload: bytes) -> None:
        if channel is Channel.DESIRED:
            self._on_desired(payload)
        elif channel is Channel.CMD:
            self._on_cmd(payload)
        else:
            log.debug("ignoring a message on %s", channel.value)

    def _on_desired(self, payload: bytes) -> None:
        if not payload:
            log.info("desired document cleared; keeping the current model")
            return
        try:
            desired = decode(DesiredState, payload, channel="desired")
        except ProtocolError as exc:
            log.warning("refusing %s", exc)
            with self._cond:
                self._cancel.set()  # whatever was in progress is no longer what is desired
                self._pending = None
                self._rejected = Rejection(channel="desired", error=str(exc), at=utc_now())
                self._view = _View(
                    phase=Phase.FAILED,
                    deployment_id=_guess_deployment_id(payload),
                    error=str(exc),
                )
            self._publish_reported()
            return
        with self._cond:
            if desired in (self._working, self._pending):
                return  # the retained copy again, after a reconnect
            if self._working is not None:
                log.info("deployment %s replaced by %s", self._working.deployment_id,
                         desired.deployment_id)  # fmt: skip
                self._cancel.set()
            self._pending = desired
            self._cond.notify_all()

    def _on_cmd(self, payload: bytes) -> None:
        try:
            command = decode(CommandMessage, payload, channel="cmd")
        except ProtocolError as exc:
            log.warning("refusing %s", exc)
            with self._lock:
                self._rejected = Rejection(channel="cmd", error=str(exc), at=utc_now())
            self._publish_reported()
            return
        if command.command is Command.REPORT:
            self._on_connected(self._birth_seq)
        elif command.command is Command.ROLLBACK:
            with self._cond:
                self._cancel.set()
                self._pending = None
                self._pending_rollback = True
                self._cond.notify_all()

    # -- publishing -----------------------------------------------------------------------------

    def _status_payload(self, presence: Presence, birth_seq: int | None = None) -> bytes:
        return StatusMessage(
            device_id=self.settings.device_id,
            state=presence,
            birth_seq=self._birth_seq if birth_seq is None else birth_seq,
            ts=utc_now(),
        ).to_json()

    def _offline_payload(self, birth_seq: int) -> bytes:
        return self._status_payload(Presence.OFFLINE, birth_seq)

    def _publish_reported(self) -> None:
        if self._link.connected:
            self._link.publish(Channel.REPORTED, self.reported().to_json(), retain=True)

    def _telemetry_loop(self) -> None:
        while not self._stop.wait(self._telemetry_interval):
            if not self._link.connected:
                continue
            summary, seconds = self.stats.take_window()
            message = TelemetryMessage(
                device_id=self.settings.device_id,
                birth_seq=self._birth_seq,
                ts=utc_now(),
                window_s=round(seconds, 3),
                count=summary.count,
                errors=summary.errors,
                p50_ms=summary.p50_ms,
                p95_ms=summary.p95_ms,
                total_count=self.stats.total_count,
                total_errors=self.stats.total_errors,
                current=self.current,
            )
            self._link.publish(Channel.TELEMETRY, message.to_json(), retain=False, qos=0)
            self._publish_reported()  # refreshes the retained health figures

    # -- the worker -----------------------------------------------------------------------------

    def _work(self) -> None:
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
                    self._deploy(desired, cancel)
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
            self._view = _View(
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
        self._publish_reported()

    def _deploy(self, desired: DesiredState, cancel: threading.Event) -> None:
        if self._finished_before(desired):
            return
        self._apply_settings(desired)
        with self._lock:
            active = self._active
            self._rejected = None
        if active is not None and active.current.ref.manifest_sha256 == desired.manifest_sha256:
            self._adopt(desired, active)
            return
        log.info("deployment %s: %s %s", desired.deployment_id, desired.artifact, desired.version)
        self._record_phase(desired, Phase.QUEUED)
        prepared = self._prepare(desired, cancel)
        if prepared is not None and not cancel.is_set():
            self._switch(desired, prepared)

    def _finished_before(self, desired: DesiredState) -> bool:
        """A deployment that already ended is reported again, not redone (retryable excepted)."""
        record = self._record
        if (
            record is None
            or record.desired != desired
            or not record.phase.is_terminal
            or (record.phase is Phase.FAILED and record.retryable)
        ):
            return False
        log.info("deployment %s already ended %s", desired.deployment_id, record.phase.value)
        with self._lock:
            self._view = _View(
                phase=record.phase,
                deployment_id=record.deployment_id,
                target=ref_of(desired),
                error=record.error,
            )
        self._publish_reported()
        return True

    def _prepare(self, desired: DesiredState, cancel: threading.Event) -> Prepared | None:
        """Run the deployer; a failure ends the deployment FAILED (unless it was cancelled)."""

        def on_phase(phase: Phase, error: str | None, progress: Progress | None) -> None:
            if not cancel.is_set():
                self._record_phase(desired, phase, error=error, progress=progress)

        try:
            return self.deployer.prepare(desired, on_phase=on_phase, cancel=cancel)
        except Cancelled:
            log.info("deployment %s cancelled", desired.deployment_id)
            return None
        except DownloadError as exc:
            error, retryable = str(exc), exc.transient
        except FedgeError as exc:
            error, retryable = str(exc), False
        except OSError as exc:  # the state directory: full disk, permissions
            error, retryable = f"{exc.filename or 'state directory'}: {exc.strerror or exc}", True
        if not cancel.is_set():
            log.warning("deployment %s failed: %s", desired.deployment_id, error)
            self._record_phase(desired, Phase.FAILED, error=error, retryable=retryable)
        return None

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
            self._serving = _Serving(engine=prepared.engine, ref=prepared.ref)
            self._active = active
        self.stats.reset_health()
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
            self._publish_reported()
            return
        if record.phase is not Phase.SUCCEEDED:
            self._record_phase(record.desired, Phase.ROLLED_BACK, error=record.error)
            return
        if active is None or active.previous is None:
            self._reject_command("rollback: no previous version is installed")
            return
        try:
            engine = self.deployer.load_installed(active.previous)
        except FedgeError as exc:
            self._reject_command(f"rollback: the previous version is unusable ({exc})")
            return
        restored = replace_current(active.previous, active.current)
        self.state.write_active(restored)
        with self._lock:
            self._serving = _Serving(engine=engine, ref=restored.current.ref)
            self._active = restored
        self.stats.reset_health()
        log.info("rolled back to %s %s", *_name(restored.current))
        self._record_phase(record.desired, Phase.ROLLED_BACK)

    def _reject_command(self, message: str) -> None:
        log.warning("%s", message)
        with self._lock:
            self._rejected = Rejection(channel="cmd", error=message, at=utc_now())
        self._publish_reported()


def replace_current(current: InstalledModel, previous: InstalledModel) -> ActiveRecord:
    """The active record after a rollback: ``current`` serves again, ``previous`` stays nearby."""
    return ActiveRecord(
        current=current.model_copy(update={"activated_at": utc_now()}), previous=previous
    )


def _name(installed: InstalledModel) -> tuple[str, str]:
    return installed.ref.name, installed.ref.version
