"""CloudInventory: the artifact stores an operator has, with their residency and prices."""

from __future__ import annotations

from pydantic import Field

from policies.common import DNS_NAME, Provider, SecretRef, Spec

__all__ = ["Credentials", "InventorySpec", "Pricing", "Target", "TargetTLS"]


class Pricing(Spec):
    storage_per_gb_month: float = Field(
        default=0.0, ge=0, alias="storagePerGBMonth", description="USD per GB-month stored"
    )
    egress_per_gb: float = Field(
        default=0.0, ge=0, alias="egressPerGB", description="USD per GB downloaded"
    )


class Credentials(Spec):
    """Identity and secret of a store (S3 access key id and secret key; Azure account and key)."""

    key_ref: SecretRef
    secret_ref: SecretRef


class TargetTLS(Spec):
    ca_file: str | None = Field(
        default=None, min_length=1, description="CA bundle for the endpoint"
    )


class Target(Spec):
    name: str = Field(pattern=DNS_NAME)
    provider: Provider
    endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/]+(:\d+)?(/.*)?$",
        description="any S3-compatible or Azure endpoint; omit for AWS S3 in `region`",
    )
    region: str = Field(min_length=1)
    residency: str = Field(min_length=1, description="a residency tag such as eu, us, ch")
    container: str | None = Field(default=None, min_length=1, description="bucket or container")
    create_container: bool = Field(
        default=False,
        description="create the bucket or container on first use if it is missing",
    )
    path: str | None = Field(default=None, min_length=1, description="folder of a local store")
    pricing: Pricing = Field(default_factory=Pricing)
    credentials: Credentials | None = None
    tls: TargetTLS = Field(default_factory=TargetTLS)
    labels: dict[str, str] = Field(default_factory=dict)


class InventorySpec(Spec):
    targets: list[Target] = Field(min_length=1)
