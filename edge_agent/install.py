"""Bringing one deployment to the point of switch-over: download, verify, install, health-check.

:meth:`Installer.prepare` walks ``DOWNLOADING -> VERIFYING -> ACTIVATING`` and returns a loaded,
healthy model that is *not yet served*; the agent then switches to it (one atomic pointer write)
and reports ``SUCCEEDED``. Whatever fails on the way raises, and the model served before is
untouched. Transient download failures (a replica down, a connection cut) are retried here, with
the bytes already received kept; integrity failures (a hash, a signature, an untrusted signer) are
final for that deployment.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_agent.download import Cancelled, Downloader, DownloadError, DownloadLimits
from edge_agent.inference import InferenceEngine
from edge_agent.protocol import ArtifactRef, DesiredState, Phase, Progress
from edge_agent.store import InstalledModel, StateDir
from fedge.artifact import verify_artifact
from fedge.errors import FedgeError
from fedge.logs import get_logger
from fedge.manifest import Manifest
from fedge.payload import check_format
from fedge.signing import PublicKey

__all__ = ["Installer", "PhaseCallback", "Prepared", "ref_of"]

log = get_logger(__name__)

PhaseCallback = Callable[[Phase, str | None, Progress | None], None]


def ref_of(desired: DesiredState) -> ArtifactRef:
    return ArtifactRef(
        name=desired.artifact, version=desired.version, manifest_sha256=desired.manifest_sha256
    )


@dataclass
class Prepared:
    ref: ArtifactRef
    folder: Path
    engine: InferenceEngine


class Installer:
    """Installs a deployment's artifact on this device, and loads installed models."""

    def __init__(
        self,
        state: StateDir,
        trusted: Sequence[PublicKey],
        *,
        inference_threads: int | None = None,
        limits: DownloadLimits | None = None,
        retry_delays: Sequence[float] = (1.0, 2.0, 4.0, 8.0),
    ) -> None:
        self.state = state
        self.trusted = tuple(trusted)
        self.inference_threads = inference_threads
        self.limits = limits or DownloadLimits()
        self.retry_delays = tuple(retry_delays)

    def discard(self, desired: DesiredState) -> None:
        """Delete what a deployment downloaded (it failed for good, or a newer one replaced it)."""
        self.state.remove(self.state.staging(desired.manifest_sha256))

    def load(self, folder: Path, *, verify: bool = True) -> InferenceEngine:
        """Verify an installed folder (again), load it and run the health check."""
        if verify:
            check_format(verify_artifact(folder, self.trusted))
        engine = InferenceEngine(folder, threads=self.inference_threads)
        engine.health_check()
        return engine

    def load_installed(self, installed: InstalledModel) -> InferenceEngine:
        return self.load(self.state.resolve(installed))

    def prepare(
        self, desired: DesiredState, *, on_phase: PhaseCallback, cancel: threading.Event
    ) -> Prepared:
        ref = ref_of(desired)
        folder = self.state.model_dir(ref)
        verified = False
        if not folder.is_dir():
            staging = self.state.staging(desired.manifest_sha256)
            self._download(desired, staging, on_phase=on_phase, cancel=cancel)
            on_phase(Phase.VERIFYING, None, None)
            check_format(verify_artifact(staging, self.trusted))
            if cancel.is_set():
                raise Cancelled("deployment cancelled")
            on_phase(Phase.ACTIVATING, None, None)
            folder = self.state.install(staging, ref)
            verified = True
        else:
            log.info("%s %s is already in the store", ref.name, ref.version)
            on_phase(Phase.VERIFYING, None, None)
        try:
            if not verified:
                check_format(verify_artifact(folder, self.trusted))
                on_phase(Phase.ACTIVATING, None, None)
            engine = self.load(folder, verify=False)
        except FedgeError:
            # Damaged, or verified but unusable: keep it out of the store so a retry starts clean.
            self.state.remove(folder)
            raise
        return Prepared(ref=ref, folder=folder, engine=engine)

    def _download(
        self,
        desired: DesiredState,
        staging: Path,
        *,
        on_phase: PhaseCallback,
        cancel: threading.Event,
    ) -> Manifest:
        def progress(done: int, total: int) -> None:
            on_phase(
                Phase.DOWNLOADING, None, Progress(bytes_done=min(done, total), bytes_total=total)
            )

        downloader = Downloader(
            self.trusted, limits=self.limits, cancel=cancel, on_progress=progress
        )
        on_phase(Phase.DOWNLOADING, None, None)
        delays = list(self.retry_delays)
        while True:
            try:
                return downloader.download(desired, staging)
            except DownloadError as exc:
                if not exc.transient or not delays:
                    raise
                delay = delays.pop(0)
                log.warning("download failed, retrying in %.0f s: %s", delay, exc)
                on_phase(Phase.DOWNLOADING, f"retrying in {delay:.0f} s: {exc}", None)
                if cancel.wait(delay):
                    raise Cancelled("deployment cancelled") from exc
