"""RolloutPolicy: canary first, watch health over a soak time, then the rest, or roll back."""

from __future__ import annotations

from pydantic import Field

from policies.common import Duration, LabelSelector, Spec

__all__ = ["CanarySpec", "HealthSpec", "RollbackSpec", "RolloutSpec"]


class CanarySpec(Spec):
    devices: int = Field(default=1, ge=0, description="devices in the canary group (0: no canary)")


class HealthSpec(Spec):
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    max_p95_latency_ms: float = Field(default=500.0, gt=0)
    min_samples: int = Field(default=1, ge=0, description="inferences needed before judging health")


class RollbackSpec(Spec):
    automatic: bool = True


class RolloutSpec(Spec):
    fleet: LabelSelector = Field(default_factory=LabelSelector)
    canary: CanarySpec = Field(default_factory=CanarySpec)
    health: HealthSpec = Field(default_factory=HealthSpec)
    soak_time: Duration = 60.0
    batch_size: int = Field(
        default=10, ge=1, description="devices updated at once after the canary"
    )
    timeout: Duration = 900.0
    rollback: RollbackSpec = Field(default_factory=RollbackSpec)
