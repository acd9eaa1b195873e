"""AgentConfig: one edge device's identity, broker, trusted signers and inputs."""

from __future__ import annotations

from pydantic import Field

from policies.common import TOPIC_SAFE_ID, Duration, SecretRef, Spec

__all__ = ["AgentSpec", "BrokerSpec", "BrokerTLS", "HttpInput", "InputSpec", "TelemetrySpec"]


class BrokerTLS(Spec):
    enabled: bool = True
    ca_file: str | None = Field(default=None, min_length=1)
    cert_file: str | None = Field(default=None, min_length=1, description="client certificate")
    key_file: str | None = Field(default=None, min_length=1, description="client certificate key")


class BrokerSpec(Spec):
    host: str = Field(min_length=1)
    port: int = Field(default=8883, ge=1, le=65535)
    tls: BrokerTLS = Field(default_factory=BrokerTLS)
    username: str | None = Field(default=None, min_length=1)
    password_ref: SecretRef | None = None
    keepalive: Duration = 30.0


class HttpInput(Spec):
    port: int = Field(ge=0, le=65535, description="0 picks a free port; always bound to 127.0.0.1")


class InputSpec(Spec):
    folder: str | None = Field(
        default=None, min_length=1, description="watched folder of .txt files"
    )
    http: HttpInput | None = None


class TelemetrySpec(Spec):
    interval: Duration = 30.0
    publish_results: bool = False


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
