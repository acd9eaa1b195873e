"""AgentConfig: one edge device's identity, broker, trusted signers and inputs.

Every number here has a finite range, and the agent's own settings (:mod:`edge_agent.config`)
check the same ranges when they are built in code: an MQTT keepalive of ``.inf`` or ``1e30``, or a
telemetry interval of ``1e-9``, would crash the agent or silently stop its MQTT thread. Durations
are refused when they are not finite (``.inf``, ``.nan``) or outside their range, and an integer
too large to turn into seconds is a validation problem on its field, never a traceback.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, Field, WithJsonSchema

from fedge import durations
from policies.common import TOPIC_SAFE_ID, SecretRef, Spec, parse_duration

__all__ = [
    "DEPLOYMENT_DEADLINE_RANGE_S",
    "HTTP_PORT_RANGE",
    "KEEPALIVE_RANGE_S",
    "MAX_ARTIFACT_BYTES_RANGE",
    "PORT_RANGE",
    "REPLICA_DEADLINE_RANGE_S",
    "SOCKET_TIMEOUT_RANGE_S",
    "TELEMETRY_INTERVAL_RANGE_S",
    "AgentSpec",
    "BrokerSpec",
    "BrokerTLS",
    "DownloadSpec",
    "HttpInput",
    "InputSpec",
    "TelemetrySpec",
]

# (lowest, highest), both included. The edge agent checks its settings against the same ranges.
KEEPALIVE_RANGE_S: Final = (5.0, 3600.0)
"""MQTT keepalive: paho's floor is 5 s; past an hour a dead broker goes unnoticed too long."""
TELEMETRY_INTERVAL_RANGE_S: Final = (1.0, 86400.0)
"""Telemetry: at most once a second (a fleet's broker), at least once a day."""
SOCKET_TIMEOUT_RANGE_S: Final = (1.0, 600.0)
"""One read from a replica."""
REPLICA_DEADLINE_RANGE_S: Final = (1.0, 86400.0)
"""One replica's delivery of the manifest or of one file, before the next replica is tried."""
DEPLOYMENT_DEADLINE_RANGE_S: Final = (1.0, 7 * 86400.0)
"""One deployment's whole download, retries included."""
MAX_ARTIFACT_BYTES_RANGE: Final = (1 << 20, 1 << 40)
"""What a signed manifest may list in all, on this device."""
PORT_RANGE: Final = (1, 65535)
HTTP_PORT_RANGE: Final = (0, 65535)
"""The local HTTP input: 0 picks a free port."""

# Far beyond any duration in seconds a float holds exactly, far below what float() overflows on.
_MAX_INT_SECONDS = 10**15


def _seconds(bounds: tuple[float, float]) -> Any:
    """The duration parser, with what it cannot refuse itself: overflow and non-finite values."""
    span = f"from {bounds[0]:g} to {bounds[1]:g}"

    def parse(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_INT_SECONDS:
            # Before float(), which overflows; and no str(): 5000 digits cannot even be printed.
            raise ValueError(f"must be a number of seconds {span}")
        seconds = parse_duration(value)
        if isinstance(seconds, float) and not math.isfinite(seconds):
            raise ValueError(f"must be a finite number of seconds {span}")
        return seconds

    return parse


def _schema(bounds: tuple[float, float], what: str) -> dict[str, Any]:
    low, high = bounds
    return {
        "anyOf": [
            {"type": "number", "minimum": low, "maximum": high},
            {"type": "string", "pattern": durations.CANONICAL_PATTERN},
        ],
        "description": f"{what}: seconds ({low:g} to {high:g}), or a duration such as 30s, 10m",
    }


Keepalive = Annotated[
    float,
    BeforeValidator(_seconds(KEEPALIVE_RANGE_S)),
    Field(ge=KEEPALIVE_RANGE_S[0], le=KEEPALIVE_RANGE_S[1], allow_inf_nan=False),
    WithJsonSchema(_schema(KEEPALIVE_RANGE_S, "MQTT keepalive")),
]
TelemetryInterval = Annotated[
    float,
    BeforeValidator(_seconds(TELEMETRY_INTERVAL_RANGE_S)),
    Field(ge=TELEMETRY_INTERVAL_RANGE_S[0], le=TELEMETRY_INTERVAL_RANGE_S[1], allow_inf_nan=False),
    WithJsonSchema(_schema(TELEMETRY_INTERVAL_RANGE_S, "telemetry interval")),
]
SocketTimeout = Annotated[
    float,
    BeforeValidator(_seconds(SOCKET_TIMEOUT_RANGE_S)),
    Field(ge=SOCKET_TIMEOUT_RANGE_S[0], le=SOCKET_TIMEOUT_RANGE_S[1], allow_inf_nan=False),
    WithJsonSchema(_schema(SOCKET_TIMEOUT_RANGE_S, "one read from a replica")),
]
ReplicaDeadline = Annotated[
    float,
    BeforeValidator(_seconds(REPLICA_DEADLINE_RANGE_S)),
    Field(ge=REPLICA_DEADLINE_RANGE_S[0], le=REPLICA_DEADLINE_RANGE_S[1], allow_inf_nan=False),
    WithJsonSchema(_schema(REPLICA_DEADLINE_RANGE_S, "one replica's delivery")),
]
DeploymentDeadline = Annotated[
    float,
    BeforeValidator(_seconds(DEPLOYMENT_DEADLINE_RANGE_S)),
    Field(
        ge=DEPLOYMENT_DEADLINE_RANGE_S[0], le=DEPLOYMENT_DEADLINE_RANGE_S[1], allow_inf_nan=False
    ),
    WithJsonSchema(_schema(DEPLOYMENT_DEADLINE_RANGE_S, "one deployment's download")),
]


class BrokerTLS(Spec):
    enabled: bool = True
    ca_file: str | None = Field(default=None, min_length=1)
    cert_file: str | None = Field(default=None, min_length=1, description="client certificate")
    key_file: str | None = Field(default=None, min_length=1, description="client certificate key")


class BrokerSpec(Spec):
    host: str = Field(min_length=1)
    port: int = Field(default=8883, ge=PORT_RANGE[0], le=PORT_RANGE[1])
    tls: BrokerTLS = Field(default_factory=BrokerTLS)
    username: str | None = Field(default=None, min_length=1)
    password_ref: SecretRef | None = None
    keepalive: Keepalive = 30.0


class HttpInput(Spec):
    port: int = Field(
        ge=HTTP_PORT_RANGE[0],
        le=HTTP_PORT_RANGE[1],
        description="0 picks a free port; always bound to 127.0.0.1",
    )


class InputSpec(Spec):
    folder: str | None = Field(
        default=None, min_length=1, description="watched folder of .txt files"
    )
    http: HttpInput | None = None


class TelemetrySpec(Spec):
    interval: TelemetryInterval = 30.0
    publish_results: bool = False


class DownloadSpec(Spec):
    """Bounds on one deployment's download; a replica past its deadline gives way to the next."""

    timeout: SocketTimeout = 30.0
    replica_deadline: ReplicaDeadline = 600.0
    deployment_deadline: DeploymentDeadline = 3600.0
    max_artifact_bytes: int = Field(
        default=4 << 30,
        ge=MAX_ARTIFACT_BYTES_RANGE[0],
        le=MAX_ARTIFACT_BYTES_RANGE[1],
        description="the most bytes a signed manifest may list",
    )


class AgentSpec(Spec):
    device_id: str = Field(pattern=TOPIC_SAFE_ID)
    fleet: str = Field(pattern=TOPIC_SAFE_ID)
    broker: BrokerSpec
    trusted_keys: list[str] = Field(
        min_length=1, description="ed25519:<base64> public keys or paths to PEM files"
    )
    state_dir: str = Field(min_length=1)
    input: InputSpec = Field(default_factory=InputSpec)
    telemetry: TelemetrySpec = Field(default_factory=TelemetrySpec)
    download: DownloadSpec = Field(default_factory=DownloadSpec)
