"""FederationPolicy: how data holders fine-tune one model together, and what each may spend."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from policies.common import Duration, Spec

__all__ = [
    "ROBUST_STRATEGIES",
    "AggregationSpec",
    "ClientsSpec",
    "FederationSpec",
    "LoraSpec",
    "ModelSpec",
    "PrivacySpec",
    "TrainingSpec",
    "UserPrivacySpec",
]

Strategy = Literal[
    "fedavg", "fedadam", "fedyogi", "fedadagrad", "fedmedian", "fedtrimmedavg", "krum", "bulyan"
]
# Robust rules look at each holder's update on its own, so they need the updates in the clear.
ROBUST_STRATEGIES: frozenset[str] = frozenset({"fedmedian", "fedtrimmedavg", "krum", "bulyan"})
Protection = Literal["none", "secagg", "he"]
Accountant = Literal["rdp", "prv"]
Pooling = Literal["mean", "cls"]
PrivacyLevel = Literal["sample", "user", "both"]
UserClipping = Literal["fixed", "adaptive"]


class ModelSpec(Spec):
    source: str = Field(
        default="builtin:all-MiniLM-L6-v2",
        min_length=1,
        description="builtin:all-MiniLM-L6-v2 (shipped offline) or a local model folder",
    )
    task: Literal["sequence-classification"] = "sequence-classification"
    num_labels: int = Field(default=2, ge=2, le=1000)
    max_length: int = Field(default=128, ge=8, le=4096)
    pooling: Pooling = Field(
        default="mean",
        description="mean: a linear head on the mean of the token states (how sentence encoders "
        "such as all-MiniLM-L6-v2 are trained); cls: transformers' [CLS] pooler classifier",
    )


class ClientsSpec(Spec):
    per_round: int = Field(default=2, ge=1, description="clients sampled for each round")
    minimum: int = Field(default=2, ge=1, description="replies needed for a round to count")
    fraction_evaluate: float = Field(default=1.0, gt=0, le=1)


class AggregationSpec(Spec):
    strategy: Strategy = "fedavg"
    server_learning_rate: float = Field(default=1e-2, gt=0, le=10)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.99, ge=0, lt=1)
    tau: float = Field(
        default=1e-3, gt=0, description="adaptivity (epsilon of the server optimizer)"
    )
    trim_fraction: float = Field(
        default=0.2,
        gt=0,
        lt=0.5,
        description="fedtrimmedavg: the share of updates cut at each end of every coordinate",
    )
    byzantine: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="krum, bulyan: how many holders may send arbitrary updates (f)",
    )
    krum_select: int | None = Field(
        default=None,
        ge=1,
        description="krum: average the m best-scored updates (Multi-Krum); absent: keep one",
    )


class TrainingSpec(Spec):
    """How each holder trains a round; a setting left out is chosen by fedge's DP-aware plan
    (client/training/plan.py) from the holder's number of examples, the rounds and the budget."""

    local_epochs: int | None = Field(default=None, ge=1, le=1000)
    batch_size: int | None = Field(
        default=None, ge=1, le=65536, description="expected logical batch size"
    )
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    max_physical_batch_size: int = Field(default=64, ge=1, le=4096)


class UserPrivacySpec(Spec):
    """User-level (central) DP: each holder's whole update of a round is clipped to
    ``clippingNorm`` by the coordinator and Gaussian noise is added to their mean (Flower's
    server-side DP wrappers), priced with Opacus's accountant over rounds at the holder sampling
    rate ``perRound / population``. It bounds what the model reveals of any one holder's data
    as a whole, which sample-level DP at each holder does not."""

    clipping: UserClipping = Field(
        default="fixed",
        description="fixed: clip every update to clippingNorm; adaptive: start there and move "
        "the norm each round towards targetQuantile of the updates' norms (Andrew et al. 2021)",
    )
    clipping_norm: float = Field(default=1.0, gt=0, le=1e6)
    target_quantile: float = Field(
        default=0.5, ge=0, le=1, description="adaptive: share of updates left unclipped"
    )
    noise_multiplier: float | None = Field(
        default=None, gt=0, le=1e6, description="noise std over clippingNorm / minimum"
    )
    target_epsilon: float | None = Field(
        default=None,
        gt=0,
        le=100,
        description="derive noiseMultiplier with Opacus so that all rounds spend this",
    )
    delta: float = Field(default=1e-5, gt=0, lt=1)
    population: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="holders in the federation, for the sampling rate perRound / population; "
        "absent: perRound (every round sees every holder: no amplification)",
    )


class PrivacySpec(Spec):
    """Each data holder's budget; enforced by the holder's own ledger, not by the coordinator.

    ``level`` picks what is protected: ``sample`` (each record: DP-SGD at each holder, the
    default), ``user`` (each holder's whole contribution: clipping and noise at the
    coordinator, configured in ``user``) or ``both``. A holder whose own policy asks for
    ``sample`` or ``both`` keeps training with DP-SGD whatever the coordinator's level says.
    """

    level: PrivacyLevel = "sample"

    target_epsilon: float = Field(default=8.0, gt=0, le=100)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0, description="per-sample clipping norm")
    accountant: Accountant = "rdp"
    noise_multiplier: float | None = Field(
        default=None, gt=0, description="fixed noise; when absent it is derived from the budget"
    )
    user: UserPrivacySpec | None = Field(
        default=None, description="level user or both: the coordinator's clipping and noise"
    )


class LoraSpec(Spec):
    rank: int = Field(default=8, ge=1, le=256)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"], min_length=1)


class FederationSpec(Spec):
    model: ModelSpec = Field(default_factory=ModelSpec)
    rounds: int = Field(default=3, ge=1, le=10_000)
    clients: ClientsSpec = Field(default_factory=ClientsSpec)
    round_timeout: Duration = 600.0
    aggregation: AggregationSpec = Field(default_factory=AggregationSpec)
    protection: Protection = "none"
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    privacy: PrivacySpec = Field(default_factory=PrivacySpec)
    lora: LoraSpec | None = Field(
        default=None,
        description="LoRA adapters trained with the head; absent: only the head trains "
        "(a DP linear probe, the better choice for a few thousand examples per holder)",
    )
