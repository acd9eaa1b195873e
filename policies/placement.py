"""PlacementPolicy: where artifact replicas may live, how many, and at what cost."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from policies.common import PROVIDERS, Enforcement, LabelSelector, Provider, Spec

__all__ = [
    "CostCeiling",
    "FailoverSpec",
    "PlacementSpec",
    "Replicas",
    "RetentionSpec",
    "SpreadSpec",
    "StrategySpec",
]


class Replicas(Spec):
    min: int = Field(default=1, ge=1, le=100)
    max: int = Field(default=1, ge=1, le=100)


class SpreadSpec(Spec):
    max_per_provider: int | None = Field(
        default=None, ge=1, description="at most N on one provider"
    )
    min_providers: int = Field(default=1, ge=1, description="replicas span at least N providers")


class CostCeiling(Spec):
    monthly_usd: float = Field(
        ge=0, alias="monthlyUSD", description="estimated storage cost of all replicas"
    )


class StrategySpec(Spec):
    type: Literal["ordered", "anyOf"] = "anyOf"
    preference: list[str] = Field(default_factory=list, description="target names, best first")


class FailoverSpec(Spec):
    enabled: bool = True


class RetentionSpec(Spec):
    keep_versions: int = Field(default=3, ge=1, le=1000)


class PlacementSpec(Spec):
    artifacts: LabelSelector = Field(default_factory=LabelSelector)
    providers: list[Provider] = Field(default_factory=lambda: list(PROVIDERS), min_length=1)
    regions: list[str] = Field(
        default_factory=list, description="allowed regions; empty allows all"
    )
    residency: list[str] = Field(default_factory=list, description="allowed residency tags")
    replicas: Replicas = Field(default_factory=Replicas)
    spread: SpreadSpec = Field(default_factory=SpreadSpec)
    cost_ceiling: CostCeiling | None = None
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    failover: FailoverSpec = Field(default_factory=FailoverSpec)
    retention: RetentionSpec = Field(default_factory=RetentionSpec)
    enforcement: Enforcement = "Enforce"
