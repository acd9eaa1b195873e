"""The values a run report is made of, and reading them from a run's work directory.

A report is built from plain values (the frozen dataclasses below), never from live components,
because it is opened long after the coordinator, the clouds and the broker are gone. Two files feed
it: ``metrics.jsonl``, the federation's one record of its rounds, and ``summary.json``, which the
demo writes for everything else (:meth:`RunSummary.to_json`). A file that cannot be read becomes a
``problem`` the page shows at the top, never a crash, because a report is most wanted when a run
went wrong.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from fedge.errors import FedgeError, UsageError
from fedge.logs import get_logger
from server.federation.metrics import MetricsLog

__all__ = [
    "METRICS_NAME",
    "SUMMARY_NAME",
    "SUMMARY_SCHEMA",
    "ArtifactInfo",
    "ClientBudget",
    "EdgeLatency",
    "ExplainedWord",
    "FleetRow",
    "Placement",
    "PlacementRow",
    "Quality",
    "RoundRow",
    "RunSummary",
    "SampleExplanation",
    "SampleInference",
    "Stage",
    "load_run_summary",
]

log = get_logger(__name__)

SUMMARY_SCHEMA = "fedge.run-summary/v1"
SUMMARY_NAME = "summary.json"
METRICS_NAME = "metrics.jsonl"


# ---------------------------------------------------------------------------------------------
# The values a report is made of
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoundRow:
    """One line of ``metrics.jsonl`` (the fields of ``server.federation.rounds.RoundReport``).

    ``epsilon`` is what each client had spent of its budget after the round, as it reported it.
    """

    round: int
    status: str = "ok"
    clients: tuple[str, ...] = ()
    declined: Mapping[str, str] = field(default_factory=dict)
    failed: tuple[str, ...] = ()
    train_loss: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    eval_clients: int = 0
    epsilon: Mapping[str, float] = field(default_factory=dict)
    num_examples: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    # privacy level user/both: the run's user-level epsilon after the round, and its mechanism
    user_epsilon: float | None = None
    user_noise_multiplier: float | None = None
    user_sample_rate: float | None = None
    user_clipping_norm: float | None = None


@dataclass(frozen=True, slots=True)
class ClientBudget:
    """A data holder's privacy budget: what its policy allows and what its ledger has spent."""

    client: str
    spent_epsilon: float
    target_epsilon: float | None = None
    delta: float | None = None


@dataclass(frozen=True, slots=True)
class ArtifactInfo:
    name: str
    version: str
    format: str
    digest: str
    size_bytes: int
    accuracy_fp32: float | None = None
    accuracy_int8: float | None = None
    signed_by: str = ""  # key id or fingerprint, never the key


@dataclass(frozen=True, slots=True)
class Quality:
    """The exported model's accuracy where it counts, between the two reference points.

    ``heldout`` is a labelled set no data holder trained on. ``floor`` is the untrained model
    and ``majority`` the share of the most common label; ``ceiling`` is the same model trained
    centrally without DP on the holders' data pooled, which only a demo or a benchmark can
    compute (a real coordinator never sees the data). ``holders_own_split`` is what the holders
    reported on their own held-out parts, which follow their own, skewed label mix.
    """

    heldout: str
    examples: int
    federated_int8: float | None = None
    federated_fp32: float | None = None
    floor: float | None = None
    majority: float | None = None
    ceiling: float | None = None
    central_dp: float | None = None
    holders_own_split: float | None = None
    label_names: tuple[str, ...] = ()
    epsilon: float | None = None


@dataclass(frozen=True, slots=True)
class ExplainedWord:
    """One word of an explained sentence: its characters ``[start, end)`` and its attribution
    (how much the predicted label's probability dropped when the word was hidden)."""

    word: str
    start: int
    end: int
    attribution: float


@dataclass(frozen=True, slots=True)
class SampleExplanation:
    """What a device's ``POST /v1/explain`` answered for a sample: occlusion on its int8 model."""

    device: str
    label: str
    score: float
    words: tuple[ExplainedWord, ...] = ()
    ms: float | None = None


@dataclass(frozen=True, slots=True)
class SampleInference:
    """A held-out sentence, its true label, what each device answered, and why (one device's
    explanation, when the demo asked for one)."""

    text: str
    expected: str
    answers: Mapping[str, str | None] = field(default_factory=dict)
    explanation: SampleExplanation | None = None


@dataclass(frozen=True, slots=True)
class PlacementRow:
    """One inventory target and the planner's decision about it.

    ``decision`` is the planner's word (``replica``, ``spare``, ``rejected``); ``replica`` is
    what the store holds now (``intact``, ``partial``, ``missing``, or empty when none is meant
    to be there); ``url_host`` is the host a device downloads from, never a whole presigned URL.
    """

    target: str
    provider: str
    region: str
    residency: str
    decision: str
    reason: str
    monthly_usd: float | None = None
    replica: str = ""
    url_host: str = ""


@dataclass(frozen=True, slots=True)
class Placement:
    policy: str
    enforcement: str  # Enforce | Audit
    health: str  # ok | degraded | short
    rows: tuple[PlacementRow, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FleetRow:
    """One device as the fleet controller last saw it (desired and reported twins)."""

    device: str
    fleet: str
    desired_version: str
    reported_version: str
    phase: str  # QUEUED ... SUCCEEDED | FAILED | ROLLED_BACK
    health: str  # e.g. healthy, unhealthy, offline
    p50_ms: float | None = None
    p95_ms: float | None = None
    last_seen: str = ""  # ISO 8601
    error: str = ""


@dataclass(frozen=True, slots=True)
class EdgeLatency:
    """Inference latency a device measured on the deployed model."""

    device: str
    p50_ms: float
    p95_ms: float
    samples: int = 0


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of the demo (train, export, place, deploy, ...) and how long it took."""

    name: str
    seconds: float
    status: str = "ok"  # ok | failed | skipped
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RunSummary:
    """Everything a report shows. ``None`` (or no rounds) means that part of the run did not run.

    ``problems`` are the reasons a file of the work directory could not be read; they are shown
    at the top of the report and are not part of ``summary.json``.
    """

    run_id: str = ""
    created: str = ""  # ISO 8601
    rounds: tuple[RoundRow, ...] = ()
    budgets: tuple[ClientBudget, ...] | None = None
    artifact: ArtifactInfo | None = None
    quality: Quality | None = None
    placement: Placement | None = None
    fleet: tuple[FleetRow, ...] | None = None
    edge: tuple[EdgeLatency, ...] | None = None
    samples: tuple[SampleInference, ...] | None = None
    stages: tuple[Stage, ...] = ()
    notes: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    def to_json(self) -> str:
        """The ``summary.json`` form: every part but the rounds, under a ``schema`` version.

        Rounds stay out because ``metrics.jsonl`` is their one record; a second copy could only
        disagree with it.
        """
        data = _SUMMARY_ADAPTER.dump_python(self, mode="json", exclude={"rounds", "problems"})
        return json.dumps({"schema": SUMMARY_SCHEMA, **_finite(data)}, indent=2) + "\n"

    @classmethod
    def from_json(
        cls, text: str, *, rounds: Sequence[RoundRow] = (), source: str = SUMMARY_NAME
    ) -> RunSummary:
        """Parse ``summary.json``; raises :class:`UsageError` naming the field at fault."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{source}: not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise UsageError(f"{source}: expected a JSON object")
        schema = data.pop("schema", None)
        if schema != SUMMARY_SCHEMA:
            raise UsageError(f"{source}: schema: expected {SUMMARY_SCHEMA!r}, got {schema!r}")
        data.pop("rounds", None)
        data.pop("problems", None)
        try:
            summary = _SUMMARY_ADAPTER.validate_python(data)
        except ValidationError as exc:
            raise UsageError(f"{source}: {_first_error(exc)}") from exc
        return replace(summary, rounds=tuple(rounds))


_SUMMARY_ADAPTER = TypeAdapter(RunSummary)
_ROUND_ADAPTER = TypeAdapter(RoundRow)


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def _finite(value: Any) -> Any:
    # JSON has no NaN or Infinity; an unmeasured number is written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Reading a work directory
# ---------------------------------------------------------------------------------------------


def _read_rounds(path: Path, problems: list[str]) -> tuple[RoundRow, ...]:
    try:
        records = MetricsLog(path).read()
    except (FedgeError, OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path.name}: {exc}")
        return ()
    rows = []
    for index, record in enumerate(records, start=1):
        try:
            rows.append(_ROUND_ADAPTER.validate_python(record))
        except ValidationError as exc:
            problems.append(f"{path.name}: record {index}: {_first_error(exc)}; left out")
    return tuple(sorted(rows, key=lambda row: row.round))


def load_run_summary(workdir: Path) -> RunSummary:
    """Read what a work directory holds; what is missing shows as "not run" in the report."""
    if not workdir.is_dir():
        raise UsageError(f"{workdir}: not a work directory (no such folder)")
    problems: list[str] = []
    metrics = workdir / METRICS_NAME
    rounds = _read_rounds(metrics, problems) if metrics.exists() else ()
    summary_path = workdir / SUMMARY_NAME
    summary = RunSummary(run_id=workdir.name, rounds=rounds)
    if summary_path.exists():
        try:
            summary = RunSummary.from_json(
                summary_path.read_text(encoding="utf-8"), rounds=rounds, source=SUMMARY_NAME
            )
        except (UsageError, OSError, UnicodeDecodeError) as exc:
            problems.append(f"{exc}; its sections are shown as not run")
    for problem in problems:
        log.warning("report: %s", problem)
    return replace(summary, problems=(*summary.problems, *problems))
