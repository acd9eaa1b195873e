"""What the inputs (folder, HTTP) need from the agent: classify texts with the model served now,
explain one prediction (HTTP only), and what that model is (:class:`ServedModel`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from edge_agent.explain import Explanation
from edge_agent.inference import InferenceEngine, Prediction
from edge_agent.protocol import ArtifactRef
from fedge.errors import EdgeError

__all__ = [
    "Classified",
    "Classifier",
    "Explained",
    "Explaining",
    "NoModelError",
    "ServedModel",
    "Source",
]

Source = Literal["folder", "http"]


class NoModelError(EdgeError):
    """No model has been installed yet; the input should wait, not fail."""


@dataclass(frozen=True)
class ServedModel:
    """The model answering now: a loaded, healthy engine and the artifact version it runs."""

    engine: InferenceEngine
    ref: ArtifactRef


@dataclass(frozen=True)
class Classified:
    artifact: str
    version: str
    predictions: list[Prediction]
    latency_ms: float


class Classifier(Protocol):
    def classify(
        self, texts: Sequence[str], *, source: Source, input_ids: Sequence[str]
    ) -> Classified: ...

    def status_document(self) -> bytes: ...


@dataclass(frozen=True)
class Explained:
    """An explanation (edge_agent/explain.py) and the artifact version that made it."""

    artifact: str
    version: str
    explanation: Explanation


class Explaining(Protocol):
    def explain(self, text: str) -> Explained: ...
