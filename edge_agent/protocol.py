"""The MQTT contract between the fleet controller and the edge agent: topics, payloads, phases.

This module is the one piece of ``edge_agent`` the coordinator imports (DESIGN.md section 2), so it
holds values and validation only: pydantic and the kernel, never paho or onnxruntime.

Topics form a device shadow, one subtree per device, which is also the unit of the broker's ACL::

    fedge/v1/<fleet>/<device>/desired    retained  operator -> device: the deployment to run
    fedge/v1/<fleet>/<device>/reported   retained  device -> operator: phase, version, health
    fedge/v1/<fleet>/<device>/status     retained  online / offline (offline is the last will)
    fedge/v1/<fleet>/<device>/telemetry            periodic counts and latency percentiles
    fedge/v1/<fleet>/<device>/results              inference outputs, when enabled
    fedge/v1/<fleet>/<device>/cmd                  non-retained commands to the device
    fedge/v1/<fleet>/_rollout/<deployment id>  retained  operator only: a rollout's progress

The ``_rollout`` level (:data:`ROLLOUT_LEVEL`) can never be a device id (ids start with a letter or
digit), so no device subtree, and no device's ACL entry, covers it: only the operator account
(``fedge/v1/#``) reads and writes it. Its payload is the coordinator's business
(``server/fleet/progress.py``), not part of the device contract.

Every payload is a JSON object with a ``schema`` field (an integer, now 1) and camelCase keys.
:func:`decode` turns any bytes into a model or a :class:`ProtocolError` whose message is one line
fit for ``reported``; it never raises anything else, so a malformed message cannot stop an agent.

The ``birthSeq`` in ``status``, ``reported`` and ``telemetry`` grows at every connection of a
device (Sparkplug's bdSeq): a message with a smaller number than the last one seen from a device
comes from an earlier life of that device and is stale.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from fedge import __version__
from fedge.bounded import InputError, load_json
from fedge.errors import EdgeError
from fedge.replica_urls import URL_MAX_LENGTH, URL_PATTERN

__all__ = [
    "DEPLOYMENT_ID",
    "RETAINED",
    "ROLLOUT_LEVEL",
    "SCHEMA_VERSION",
    "TOPIC_ROOT",
    "ArtifactRef",
    "Channel",
    "Command",
    "CommandMessage",
    "DeploymentSettings",
    "DesiredState",
    "DeviceTopics",
    "Health",
    "Payload",
    "Phase",
    "Presence",
    "Progress",
    "ProtocolError",
    "Rejection",
    "Replica",
    "ReportedState",
    "ResultMessage",
    "StatusMessage",
    "TelemetryMessage",
    "decode",
    "device_topics",
    "fleet_filter",
    "parse_topic",
    "sha256_hex",
    "utc_now",
]

SCHEMA_VERSION: Literal[1] = 1
TOPIC_ROOT = "fedge/v1"
# The operator-only level under a fleet for rollout state: not a valid device id (see above).
ROLLOUT_LEVEL = "_rollout"
# A deployment id: also the last level of its rollout topic, so no '/', '+' or '#'.
DEPLOYMENT_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
# Same rule as policies.common.TOPIC_SAFE_ID: no '/', '+', '#', nothing an ACL pattern misreads.
_TOPIC_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_PAYLOAD = 1 << 20  # a desired document with many replica URLs stays far below this
_MAX_DEPTH = 16  # the deepest document (reported: progress inside a view) is 4 levels


class Channel(StrEnum):
    """The last topic level: which document of the device shadow a message is."""

    DESIRED = "desired"
    REPORTED = "reported"
    STATUS = "status"
    TELEMETRY = "telemetry"
    RESULTS = "results"
    CMD = "cmd"


RETAINED: frozenset[Channel] = frozenset({Channel.DESIRED, Channel.REPORTED, Channel.STATUS})


class Phase(StrEnum):
    """Where a deployment stands on the device (Greengrass's deployment states)."""

    QUEUED = "QUEUED"
    DOWNLOADING = "DOWNLOADING"
    VERIFYING = "VERIFYING"
    ACTIVATING = "ACTIVATING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    ROLLED_BACK = "ROLLED_BACK"

    @property
    def is_terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED, Phase.ROLLED_BACK)


class Presence(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class Command(StrEnum):
    """``report``: publish ``reported`` and ``status`` again now. ``rollback``: serve the
    previous version again; the current deployment ends ``ROLLED_BACK`` and is not retried."""

    REPORT = "report"
    ROLLBACK = "rollback"


class ProtocolError(EdgeError):
    """A payload that is not a valid message of its channel; the message is one line."""

    def __init__(self, message: str, *, channel: str) -> None:
        self.channel = channel
        super().__init__(f"{channel}: {message}")


def _check_id(value: str, what: str) -> str:
    if not _TOPIC_ID.match(value):
        raise ValueError(
            f"{what} {value!r} is not a topic-safe id (letters, digits, '_', '.', '-')"
        )
    return value


class DeviceTopics:
    """The six topics of one device, and the ACL subtree that holds them."""

    __slots__ = ("device", "fleet")

    def __init__(self, fleet: str, device: str) -> None:
        self.fleet = _check_id(fleet, "fleet")
        self.device = _check_id(device, "device")

    @property
    def base(self) -> str:
        return f"{TOPIC_ROOT}/{self.fleet}/{self.device}"

    @property
    def subtree(self) -> str:
        """The filter an ACL grants the device: ``fedge/v1/<fleet>/<device>/#``."""
        return f"{self.base}/#"

    def of(self, channel: Channel) -> str:
        return f"{self.base}/{channel.value}"

    @property
    def desired(self) -> str:
        return self.of(Channel.DESIRED)

    @property
    def reported(self) -> str:
        return self.of(Channel.REPORTED)

    @property
    def status(self) -> str:
        return self.of(Channel.STATUS)

    @property
    def telemetry(self) -> str:
        return self.of(Channel.TELEMETRY)

    @property
    def results(self) -> str:
        return self.of(Channel.RESULTS)

    @property
    def cmd(self) -> str:
        return self.of(Channel.CMD)

    def __repr__(self) -> str:
        return f"DeviceTopics({self.fleet!r}, {self.device!r})"


def device_topics(fleet: str, device: str) -> DeviceTopics:
    return DeviceTopics(fleet, device)


def fleet_filter(channel: Channel, *, fleet: str | None = None) -> str:
    """Subscription filter for one channel of every device of a fleet (or of every fleet)."""
    level = "+" if fleet is None else _check_id(fleet, "fleet")
    return f"{TOPIC_ROOT}/{level}/+/{channel.value}"


def parse_topic(topic: str) -> tuple[str, str, Channel] | None:
    """``(fleet, device, channel)`` of a fedge device topic, or None for any other topic."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT:
        return None
    fleet, device, last = parts[2], parts[3], parts[4]
    if not (_TOPIC_ID.match(fleet) and _TOPIC_ID.match(device)):
        return None
    try:
        return fleet, device, Channel(last)
    except ValueError:
        return None


def utc_now() -> datetime:
    return datetime.now(UTC)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- payloads -------------------------------------------------------------------------------

_SHA256 = r"^[0-9a-f]{64}$"
# http(s) for presigned cloud URLs; file:// for the demo's local stores on the same machine.
Url = Annotated[str, Field(pattern=URL_PATTERN, max_length=URL_MAX_LENGTH)]
Sha256 = Annotated[str, Field(pattern=_SHA256)]
Millis = Annotated[float, Field(ge=0)]


class Payload(BaseModel):
    """Base of every message: strict, no unknown fields, camelCase JSON, a ``schema`` field."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
    )

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, alias="schema")

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str, *, channel: str | None = None) -> Self:
        return decode(cls, data, channel=channel)


class Part(BaseModel):
    """Base of nested objects: the same rules as :class:`Payload`, without a schema field."""

    model_config = Payload.model_config


class Replica(Part):
    """One intact copy of the artifact: presigned URLs for the manifest, signature and files.

    The shape is :class:`fedge.replica_urls.ReplicaURLs` (what placement writes), so the
    controller can pass an entry of ``urls.json`` on; pydantic checks it here, so that a refusal
    reads like every other one on ``reported``.
    """

    manifest: Url
    signature: Url
    files: dict[str, Url] = Field(min_length=1)
    target: str | None = None
    provider: str | None = None
    region: str | None = None
    residency: str | None = None
    expires: str | None = None


class DeploymentSettings(Part):
    """Per-deployment overrides of the AgentConfig's telemetry section (None: keep the config)."""

    publish_results: bool | None = None
    telemetry_interval: float | None = Field(default=None, ge=1, le=86400, allow_inf_nan=False)


class DesiredState(Payload):
    """``desired`` (retained): the artifact version the device should serve, and where to get it.

    ``manifestSha256`` is the SHA-256 of the exact ``manifest.json`` bytes (``Manifest.digest``):
    the device refuses a manifest with other bytes before it downloads a single model file, then
    verifies the signature against its own trusted keys (the controller is not trusted for that).
    """

    deployment_id: str = Field(pattern=DEPLOYMENT_ID)
    artifact: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,127}$")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
    manifest_sha256: Sha256
    replicas: list[Replica] = Field(min_length=1, max_length=64)
    settings: DeploymentSettings = Field(default_factory=DeploymentSettings)
    issued_at: AwareDatetime | None = None


class ArtifactRef(Part):
    name: str
    version: str
    manifest_sha256: Sha256


class Health(Part):
    """The current model's health over the agent's recent window (reset at every switch)."""

    samples: int = Field(default=0, ge=0)
    error_rate: float = Field(default=0.0, ge=0, le=1)
    p50_ms: Millis | None = None
    p95_ms: Millis | None = None


class Progress(Part):
    bytes_done: int = Field(ge=0)
    bytes_total: int = Field(ge=0)


class Rejection(Part):
    """A payload the agent refused (malformed, unknown schema); the agent carried on."""

    channel: str
    error: str
    at: AwareDatetime


class ReportedState(Payload):
    """``reported`` (retained): what the device serves, the phase of its deployment, its health."""

    device_id: str
    fleet: str
    phase: Phase | None = None
    deployment_id: str | None = None
    target: ArtifactRef | None = None
    current: ArtifactRef | None = None
    error: str | None = None
    rejected: Rejection | None = None
    progress: Progress | None = None
    health: Health = Field(default_factory=Health)
    birth_seq: int = Field(ge=0)
    ts: AwareDatetime
    agent_version: str = __version__


class StatusMessage(Payload):
    """``status`` (retained): ``online`` on connect; ``offline`` is the last will."""

    device_id: str
    state: Presence
    birth_seq: int = Field(ge=0)
    ts: AwareDatetime
    agent_version: str = __version__


class TelemetryMessage(Payload):
    """``telemetry``: inferences since the previous message, and latency percentiles."""

    device_id: str
    birth_seq: int = Field(ge=0)
    ts: AwareDatetime
    window_s: float = Field(ge=0)
    count: int = Field(ge=0)
    errors: int = Field(ge=0)
    p50_ms: Millis | None = None
    p95_ms: Millis | None = None
    total_count: int = Field(ge=0)
    total_errors: int = Field(ge=0)
    current: ArtifactRef | None = None


class ResultMessage(Payload):
    """``results``: one inference output (only when results are enabled)."""

    device_id: str
    ts: AwareDatetime
    source: Literal["folder", "http"]
    input_id: str
    label: str
    score: float
    scores: dict[str, float]
    version: str
    latency_ms: Millis


class CommandMessage(Payload):
    """``cmd`` (not retained): an imperative request to one device."""

    command: Command
    request_id: str | None = Field(default=None, max_length=128)


M = TypeVar("M", bound=Payload)


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False)[:3]:
        where = ".".join(str(part) for part in error["loc"])
        problems.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    more = exc.error_count() - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def decode(model: type[M], data: bytes | str, *, channel: str | None = None) -> M:
    """Parse one payload, or raise :class:`ProtocolError` with a one-line reason.

    The schema number is checked before the fields, so a newer controller gets "schema 2 is not
    supported" rather than a list of unexpected fields.
    """
    where = channel or model.__name__
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if not raw:
        raise ProtocolError("empty payload", channel=where)
    if len(raw) > _MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(raw)} bytes is over {_MAX_PAYLOAD}", channel=where)
    try:
        doc: Any = load_json(raw, source=where, max_depth=_MAX_DEPTH)
    except InputError as exc:
        raise ProtocolError(f"not a JSON document ({_short(exc.reason)})", channel=where) from exc
    if not isinstance(doc, dict):
        raise ProtocolError(f"expected a JSON object, got {type(doc).__name__}", channel=where)
    schema = doc.get("schema")
    if schema is None:
        raise ProtocolError("no 'schema' field", channel=where)
    if schema != SCHEMA_VERSION or isinstance(schema, bool):
        raise ProtocolError(
            f"schema {_short(schema)} is not supported (this agent speaks {SCHEMA_VERSION})",
            channel=where,
        )
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise ProtocolError(_describe(exc), channel=where) from exc


def _short(value: object, limit: int = 80) -> str:
    text = str(value) if isinstance(value, Exception) else json.dumps(value, default=str)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"
