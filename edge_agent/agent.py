"""The edge agent: follow the retained ``desired`` document, serve the model, report.

One :class:`Agent` is one device. It keeps serving the model it has while it works on a new one,
and switches only to a model that was downloaded in full, verified against the device's own
trusted keys, installed by one rename and answered a sample inference; anything else ends the
deployment ``FAILED`` with the reason on ``reported``, and the old model keeps serving. The last
deployment and the active model are recorded in the state directory, so an agent killed at any
point picks up where it was (a half-downloaded file resumes with an HTTP Range request) even before
the broker answers; the retained ``desired`` then confirms or replaces that work.

This module is the device's MQTT side and its serving: it connects, follows ``desired`` and
``cmd``, publishes ``status``, ``reported``, ``telemetry`` and ``results``, and classifies for the
inputs. The deployment state machine is :mod:`edge_agent.worker`, the restart recovery
:mod:`edge_agent.recovery`, the install itself :mod:`edge_agent.install`.

Threads: paho's network thread delivers messages (handlers only enqueue); one worker runs
deployments and rollbacks one at a time (a newer ``desired`` cancels the one in progress); one
thread publishes telemetry; the folder and HTTP inputs have their own.

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

from edge_agent.config import AgentSettings
from edge_agent.explain import Explainer
from edge_agent.folder_input import FolderInput
from edge_agent.http_input import HttpInput
from edge_agent.install import Installer
from edge_agent.link import MqttLink
from edge_agent.protocol import (
    ArtifactRef,
    Channel,
    Command,
    CommandMessage,
    DesiredState,
    Health,
    Presence,
    ProtocolError,
    ReportedState,
    ResultMessage,
    StatusMessage,
    TelemetryMessage,
    decode,
    device_topics,
    utc_now,
)
from edge_agent.recovery import recover
from edge_agent.serving import Classified, Explained, NoModelError, Source
from edge_agent.store import StateDir
from edge_agent.telemetry import InferenceStats
from edge_agent.worker import DeploymentWorker
from fedge.errors import EdgeError
from fedge.logs import get_logger

__all__ = ["Agent"]

log = get_logger(__name__)


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
        retry_delays: Sequence[float] = (1.0, 2.0, 4.0, 8.0),
        folder_interval: float = 0.5,
        client_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.topics = device_topics(settings.fleet, settings.device_id)
        self.state = StateDir(settings.state_dir)
        self.stats = InferenceStats()
        self.installer = Installer(
            self.state,
            settings.trusted_keys,
            inference_threads=inference_threads,
            limits=settings.download,
            retry_delays=retry_delays,
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.worker = DeploymentWorker(
            settings,
            self.state,
            self.installer,
            stop=self._stop,
            on_change=self._publish_reported,
            on_new_model=self.stats.reset_health,
        )
        self._started = False
        self._birth_seq = self.state.birth_seq
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
            self.worker.resume(recover(self.state, self.installer))
            if self.settings.http_port is not None:
                self._http = HttpInput(self, port=self.settings.http_port, explainer=self)
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
            for target, name in ((self.worker.run, "worker"), (self._telemetry_loop, "telemetry")):
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
        self.worker.halt()
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
        return self.worker.current

    def reported(self) -> ReportedState:
        health = self.stats.health()
        snapshot = self.worker.snapshot()
        view = snapshot.view
        with self._lock:
            birth_seq = self._birth_seq
        return ReportedState(
            device_id=self.settings.device_id,
            fleet=self.settings.fleet,
            phase=view.phase,
            deployment_id=view.deployment_id,
            target=view.target,
            current=snapshot.current,
            error=view.error,
            rejected=snapshot.rejected,
            progress=view.progress,
            health=Health(
                samples=health.count,
                error_rate=health.error_rate,
                p50_ms=health.p50_ms,
                p95_ms=health.p95_ms,
            ),
            birth_seq=birth_seq,
            ts=utc_now(),
        )

    def status_document(self) -> bytes:
        return self.reported().to_json()

    # -- serving --------------------------------------------------------------------------------

    def classify(
        self, texts: Sequence[str], *, source: Source, input_ids: Sequence[str]
    ) -> Classified:
        serving = self.worker.serving
        publish = self.worker.publish_results
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

    def explain(self, text: str) -> Explained:
        """Per-word attributions for the served model's answer (edge_agent/explain.py).

        Not recorded in the inference statistics: an explanation is one inference per word, and
        the telemetry's latency is what a rollout's health judges single inferences by.
        """
        serving = self.worker.serving
        if serving is None:
            raise NoModelError("no model is installed yet")
        explanation = Explainer(serving.engine).explain(text)
        return Explained(
            artifact=serving.ref.name, version=serving.ref.version, explanation=explanation
        )

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
            self.worker.refuse_desired(str(exc), deployment_id=_guess_deployment_id(payload))
            self._publish_reported()
            return
        self.worker.submit(desired)

    def _on_cmd(self, payload: bytes) -> None:
        try:
            command = decode(CommandMessage, payload, channel="cmd")
        except ProtocolError as exc:
            log.warning("refusing %s", exc)
            self.worker.reject("cmd", str(exc))
            self._publish_reported()
            return
        if command.command is Command.REPORT:
            self._on_connected(self._birth_seq)
        elif command.command is Command.ROLLBACK:
            self.worker.request_rollback()

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
        while not self._stop.wait(self.worker.telemetry_interval):
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
