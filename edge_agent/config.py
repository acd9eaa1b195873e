"""An AgentConfig file turned into the resolved settings an agent runs with.

Relative paths (CA, client certificate, state directory, input folder, PEM trusted keys) are
relative to the config file, so a device folder can be moved as a whole. The broker password is
read here, at start-up, from its ``secretRef`` and registered for log redaction; it is never
printed. :class:`AgentSettings` can also be built directly, which is how many agents run as
threads of one process (a benchmark, a simulation); built either way, every number is checked
against the ranges of the AgentConfig (:mod:`policies.agent`), so an infinite keepalive or
telemetry interval is refused at once with the field's name instead of crashing a thread later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.download import DownloadLimits
from fedge.errors import UsageError
from fedge.signing import PublicKey, parse_public_key
from policies.agent import (
    DEPLOYMENT_DEADLINE_RANGE_S,
    HTTP_PORT_RANGE,
    KEEPALIVE_RANGE_S,
    MAX_ARTIFACT_BYTES_RANGE,
    PORT_RANGE,
    REPLICA_DEADLINE_RANGE_S,
    SOCKET_TIMEOUT_RANGE_S,
    TELEMETRY_INTERVAL_RANGE_S,
)

__all__ = ["AgentSettings", "BrokerSettings", "load_settings"]


@dataclass(frozen=True)
class BrokerSettings:
    host: str
    port: int
    tls: bool = True
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    keepalive: float = 30.0

    def __post_init__(self) -> None:
        _check_int("broker.port", self.port, PORT_RANGE)
        _check_seconds("broker.keepalive", self.keepalive, KEEPALIVE_RANGE_S)


@dataclass(frozen=True)
class AgentSettings:
    device_id: str
    fleet: str
    broker: BrokerSettings
    trusted_keys: tuple[PublicKey, ...]
    state_dir: Path
    input_folder: Path | None = None
    http_port: int | None = None
    telemetry_interval: float = 30.0
    publish_results: bool = False
    download: DownloadLimits = field(default_factory=DownloadLimits)

    def __post_init__(self) -> None:
        if self.http_port is not None:
            _check_int("http_port", self.http_port, HTTP_PORT_RANGE)
        _check_seconds("telemetry_interval", self.telemetry_interval, TELEMETRY_INTERVAL_RANGE_S)
        limits = self.download
        _check_seconds("download.timeout", limits.timeout, SOCKET_TIMEOUT_RANGE_S)
        _check_seconds(
            "download.replica_deadline", limits.replica_deadline, REPLICA_DEADLINE_RANGE_S
        )
        _check_seconds(
            "download.deployment_deadline", limits.deployment_deadline, DEPLOYMENT_DEADLINE_RANGE_S
        )
        _check_int(
            "download.max_artifact_bytes", limits.max_artifact_bytes, MAX_ARTIFACT_BYTES_RANGE
        )


def _shown(value: object) -> str:
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"  # str() of 5000 digits would raise
    return repr(value)


def _check_int(name: str, value: object, bounds: tuple[int, int]) -> None:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(
            f"agent settings: {name} must be an integer from {low} to {high} (got {_shown(value)})"
        )


def _check_seconds(name: str, value: object, bounds: tuple[float, float]) -> None:
    low, high = bounds
    number = isinstance(value, int | float) and not isinstance(value, bool)
    # Compared as they are (no float() of a huge int); NaN and the infinities fail the range.
    if not number or not low <= value <= high:  # type: ignore[operator]
        raise UsageError(
            f"agent settings: {name} must be a finite number of seconds from {bounds[0]:g} to "
            f"{bounds[1]:g} (got {_shown(value)})"
        )


def _path(value: str | None, base: Path, what: str, *, must_exist: bool) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    if must_exist and not path.is_file():
        raise UsageError(f"{what}: {path} does not exist or is not a file")
    return path


def load_settings(config: str | os.PathLike[str]) -> AgentSettings:
    """Validate the AgentConfig at ``config`` and resolve its paths, keys and password."""
    from policies import AgentConfig, load_one

    file = Path(config)
    doc = load_one(file, AgentConfig)
    spec = doc.spec
    base = file.resolve().parent
    broker = spec.broker
    ca_file = _path(broker.tls.ca_file, base, "spec.broker.tls.caFile", must_exist=True)
    cert = _path(broker.tls.cert_file, base, "spec.broker.tls.certFile", must_exist=True)
    key = _path(broker.tls.key_file, base, "spec.broker.tls.keyFile", must_exist=True)
    password = (
        None
        if broker.password_ref is None
        else broker.password_ref.resolve(base_dir=base, field="spec.broker.passwordRef")
    )
    keys = tuple(parse_public_key(value, base_dir=base) for value in spec.trusted_keys)
    state_dir = _path(spec.state_dir, base, "spec.stateDir", must_exist=False)
    folder = _path(spec.input.folder, base, "spec.input.folder", must_exist=False)
    assert state_dir is not None  # noqa: S101 - stateDir is required by the model
    return AgentSettings(
        device_id=spec.device_id,
        fleet=spec.fleet,
        broker=BrokerSettings(
            host=broker.host,
            port=broker.port,
            tls=broker.tls.enabled,
            ca_file=ca_file,
            cert_file=cert,
            key_file=key,
            username=broker.username,
            password=password,
            keepalive=broker.keepalive,
        ),
        trusted_keys=keys,
        state_dir=state_dir,
        input_folder=folder,
        http_port=None if spec.input.http is None else spec.input.http.port,
        telemetry_interval=spec.telemetry.interval,
        publish_results=spec.telemetry.publish_results,
        download=DownloadLimits(
            timeout=spec.download.timeout,
            replica_deadline=spec.download.replica_deadline,
            deployment_deadline=spec.download.deployment_deadline,
            max_artifact_bytes=spec.download.max_artifact_bytes,
        ),
    )
