"""The run report: one self-contained HTML page that says what a fedge run did.

The page is opened from a work directory, attached to a ticket or archived beside the artifact,
long after the coordinator, the clouds and the broker are gone. So it is built from plain values
(the frozen dataclasses below), never from live components, and it carries everything inline:
CSS in a ``<style>`` element, plots as PNG data URIs drawn with matplotlib's object API (no pyplot,
so no global backend and no display is ever involved). Its Content-Security-Policy allows no
script and no fetch, so nothing a run recorded (a client name, a reason) can run or phone home
even if it slipped past the escaping that every string goes through.

Two files feed it: ``metrics.jsonl``, the federation's one record of its rounds, and
``summary.json``, which the demo writes for everything else (:meth:`RunSummary.to_json`). A
section whose data is absent says "not run"; a file that cannot be read becomes a warning at the
top of the page, never a crash, because a report is most wanted when a run went wrong.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import matplotlib as mpl
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from pydantic import TypeAdapter, ValidationError

from fedge.atomic import atomic_write_text
from fedge.errors import FedgeError, UsageError
from fedge.logs import get_logger
from server.federation.metrics import MetricsLog

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

__all__ = [
    "METRICS_NAME",
    "REPORT_NAME",
    "SECTION_IDS",
    "SUMMARY_NAME",
    "SUMMARY_SCHEMA",
    "ArtifactInfo",
    "ClientBudget",
    "EdgeLatency",
    "FleetRow",
    "Placement",
    "PlacementRow",
    "Quality",
    "RoundRow",
    "RunSummary",
    "SampleInference",
    "Stage",
    "load_run_summary",
    "render_report",
    "write_report",
]

log = get_logger(__name__)

SUMMARY_SCHEMA = "fedge.run-summary/v1"
SUMMARY_NAME = "summary.json"
METRICS_NAME = "metrics.jsonl"
REPORT_NAME = "report.html"
SECTION_IDS = (
    "overview",
    "quality",
    "training",
    "privacy",
    "traffic",
    "artifact",
    "placement",
    "fleet",
    "edge",
)


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
class SampleInference:
    """A held-out sentence, its true label, and what each device answered."""

    text: str
    expected: str
    answers: Mapping[str, str | None] = field(default_factory=dict)


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


# ---------------------------------------------------------------------------------------------
# Formatting helpers
# ---------------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _bytes(count: float) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - the loop always returns


def _num(value: float | None, digits: int = 3, suffix: str = "") -> str:
    if value is None or not math.isfinite(value):
        return _NONE
    return f"{value:.{digits}f}{suffix}"


def _seconds(value: float) -> str:
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


def _host(value: str) -> str:
    """The host of a URL, or the value itself: a presigned query string never reaches a report."""
    if "/" not in value and "?" not in value:
        return value
    parts = urlsplit(value if "//" in value else f"//{value}")
    host = parts.hostname or ""
    return f"{host}:{parts.port}" if parts.port else host


_NONE = "\N{EN DASH}"  # a cell with no value
_GOOD = {"ok", "intact", "replica", "succeeded", "healthy", "online", "enforce"}
_WARN = {
    "degraded",
    "spare",
    "partial",
    "skipped",
    "queued",
    "downloading",
    "verifying",
    "activating",
    "audit",
    "unknown",
}
_BAD = {"rejected", "missing", "failed", "rolled_back", "unhealthy", "short", "offline", "error"}


def _badge(value: str) -> str:
    key = value.strip().lower()
    tone = "good" if key in _GOOD else "warn" if key in _WARN else "bad" if key in _BAD else "none"
    return f'<span class="badge {tone}">{_e(value or _NONE)}</span>'


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, numeric: Iterable[int] = ()
) -> str:
    """A table of cells that are already HTML (each caller escapes what it puts in)."""
    right = set(numeric)
    head = "".join(
        f"<th{' class=num' if i in right else ''}>{_e(h)}</th>" for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i in right else ''}>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="table-wrap">{table}</div>'


def _bar(fraction: float) -> str:
    width = max(1.0, min(100.0, 100 * fraction))
    return f'<div class="bar"><span style="width:{width:.1f}%"></span></div>'


def _not_run(why: str) -> str:
    return f'<p class="not-run"><strong>Not run.</strong> {_e(why)}</p>'


def _section(section_id: str, title: str, lead: str, body: str) -> str:
    return (
        f'<section id="{section_id}" class="card">'
        f"<h2>{_e(title)}</h2>"
        f'<p class="lead">{_e(lead)}</p>'
        f"{body}</section>"
    )


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------

_BLUE, _ORANGE, _GREEN, _PURPLE, _RED, _GREY = (
    "#2563eb",
    "#ea580c",
    "#16a34a",
    "#7c3aed",
    "#dc2626",
    "#6b7280",
)
_PALETTE = (_BLUE, _ORANGE, _GREEN, _PURPLE, "#0891b2", "#db2777", "#ca8a04", _GREY)
_STYLE: dict[RcKeyType, Any] = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: every machine draws the same glyphs
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.edgecolor": "#9ca3af",
    "axes.labelcolor": "#374151",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e5e7eb",
    "grid.linewidth": 0.8,
    "xtick.color": "#4b5563",
    "ytick.color": "#4b5563",
    "legend.frameon": False,
    "legend.fontsize": 8,
}
_DPI = 110


def _figure(width: float = 9.0, height: float = 3.2) -> Figure:
    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _img(fig: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    width, height = (round(v) for v in fig.get_size_inches() * _DPI)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<figure class="plot"><img src="data:image/png;base64,{data}" alt="{_e(alt)}" '
        f'width="{width}" height="{height}"></figure>'
    )


def _plot(
    alt: str, draw: Callable[[Figure], None], *, width: float = 9.0, height: float = 3.2
) -> str:
    """Draw with ``draw(fig)`` under the house style and return an ``<img>`` of the result."""
    with mpl.rc_context(_STYLE):
        fig = _figure(width, height)
        draw(fig)
        return _img(fig, alt)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _legend(ax: Axes) -> None:
    """Outside the data: above on the right (the title is on the left), or beside when long."""
    labels = ax.get_legend_handles_labels()[1]
    entries = len(labels)
    if not entries:
        return
    if entries <= 3 and sum(len(label) + 6 for label in labels) <= 36:
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=entries, borderaxespad=0.2)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color=_GREY)


def _crowded_ticks(ax: Axes, count: int) -> None:
    if count > 6:
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")


def _round_axis(ax: Axes, rounds: Sequence[RoundRow]) -> None:
    """Integer rounds; a round that did not change the model is shaded and labelled."""
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if rounds:
        ax.set_xlim(rounds[0].round - 0.6, rounds[-1].round + 0.6)
    for row in rounds:
        if row.status != "ok":
            ax.axvspan(row.round - 0.45, row.round + 0.45, color=_RED, alpha=0.07, lw=0, zorder=0)
            ax.text(
                row.round,
                0.98,
                row.status,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=7,
                color=_RED,
            )


def _training_plot(rounds: Sequence[RoundRow]) -> str:
    xs = [row.round for row in rounds]

    def draw(fig: Figure) -> None:
        acc_ax, loss_ax = fig.subplots(1, 2)
        accuracy = [_nan(row.eval_accuracy) for row in rounds]
        acc_ax.plot(xs, accuracy, marker="o", color=_BLUE, label="eval accuracy")
        acc_ax.set_title("Accuracy of the global model")
        acc_ax.set_ylim(0, 1.02)
        acc_ax.set_ylabel("accuracy")
        last = next((v for v in reversed(accuracy) if math.isfinite(v)), None)
        if last is None:
            _no_data(acc_ax, "no evaluation recorded")
        else:
            acc_ax.annotate(
                f"{last:.3f}",
                (xs[accuracy.index(last)], last),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                color=_BLUE,
                fontweight="bold",
            )
        _round_axis(acc_ax, rounds)
        loss_ax.plot(
            xs, [_nan(r.eval_loss) for r in rounds], marker="o", color=_ORANGE, label="eval loss"
        )
        loss_ax.plot(
            xs,
            [_nan(r.train_loss) for r in rounds],
            marker="s",
            ls="--",
            color=_PURPLE,
            label="train loss",
        )
        loss_ax.set_title("Loss")
        loss_ax.set_ylabel("loss")
        loss_ax.set_ylim(bottom=0)
        _round_axis(loss_ax, rounds)
        _legend(loss_ax)

    return _plot("Accuracy and loss per round", draw)


def _privacy_plot(budgets: Sequence[ClientBudget], rounds: Sequence[RoundRow]) -> str:
    clients = [b.client for b in budgets]
    target = {b.client: b.target_epsilon for b in budgets}
    for row in rounds:  # a client the budgets leave out still has its line
        for name in sorted(row.epsilon):
            if name not in target:
                clients.append(name)
                target[name] = None
    colour = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(clients)}
    spent_by_round = any(row.epsilon for row in rounds)
    top = max(
        [
            *(b.spent_epsilon for b in budgets),
            *(b.target_epsilon or 0.0 for b in budgets),
            *(e for row in rounds for e in row.epsilon.values()),
            1e-9,
        ]
    )

    def draw(fig: Figure) -> None:
        if spent_by_round:
            line_ax, bar_ax = fig.subplots(1, 2, width_ratios=(3, 2))
            for client in clients:
                points = [
                    (row.round, row.epsilon[client]) for row in rounds if client in row.epsilon
                ]
                if points:
                    line_ax.plot(
                        *zip(*points, strict=True), marker="o", color=colour[client], label=client
                    )
                limit = target[client]
                if limit is not None:
                    line_ax.axhline(limit, color=colour[client], ls=":", lw=1.2)
            line_ax.set_title("ε spent by round (dotted: budget)")
            line_ax.set_ylabel("ε")
            line_ax.set_ylim(0, top * 1.12)
            _round_axis(line_ax, rounds)
            _legend(line_ax)
        else:
            bar_ax = fig.subplots()
        positions = range(len(budgets))
        spent = [b.spent_epsilon for b in budgets]
        over = [
            b.target_epsilon is not None and b.spent_epsilon > b.target_epsilon for b in budgets
        ]
        bars = bar_ax.bar(
            positions,
            spent,
            width=0.55,
            color=[_RED if o else colour[b.client] for o, b in zip(over, budgets, strict=True)],
        )
        for index, budget in enumerate(budgets):
            if budget.target_epsilon is None:
                continue
            bar_ax.hlines(
                budget.target_epsilon,
                index - 0.38,
                index + 0.38,
                colors="#111827",
                lw=2,
            )
        crowded = len(budgets) > 6  # the budget line says the rest
        labels = [
            f"{b.spent_epsilon:.2f}"
            + (f" / {b.target_epsilon:g}" if b.target_epsilon is not None and not crowded else "")
            for b in budgets
        ]
        bar_ax.bar_label(bars, labels=labels, padding=3, fontsize=7 if crowded else 8)
        bar_ax.set_xticks(list(positions), [b.client for b in budgets])
        bar_ax.set_title(
            "ε spent against budget (line)"
            if any(b.target_epsilon is not None for b in budgets)
            else "ε spent (no budget recorded)"
        )
        bar_ax.set_ylabel("ε")
        bar_ax.set_ylim(0, top * 1.22)
        _crowded_ticks(bar_ax, len(budgets))
        bar_ax.grid(axis="x", visible=False)

    return _plot("Epsilon spent per client against budget", draw)


def _traffic_plot(rounds: Sequence[RoundRow]) -> str:
    peak = max((r.bytes_sent + r.bytes_received for r in rounds), default=0)
    scale, unit = next(
        ((s, u) for s, u in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")) if peak >= s),
        (1, "B"),
    )

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        xs = [row.round for row in rounds]
        sent = [row.bytes_sent / scale for row in rounds]
        received = [row.bytes_received / scale for row in rounds]
        ax.bar(xs, sent, width=0.6, color=_BLUE, label="sent to clients")
        bars = ax.bar(xs, received, width=0.6, bottom=sent, color=_ORANGE, label="received")
        ax.bar_label(
            bars,
            labels=[f"{s + r:.1f}" for s, r in zip(sent, received, strict=True)],
            padding=3,
            fontsize=8,
        )
        ax.set_title(f"Bytes exchanged per round ({unit})")
        ax.set_ylabel(unit)
        ax.set_ylim(0, max([*(s + r for s, r in zip(sent, received, strict=True)), 1e-9]) * 1.18)
        _round_axis(ax, rounds)
        ax.grid(axis="x", visible=False)
        _legend(ax)

    return _plot("Bytes exchanged per round", draw, height=2.8)


def _edge_plot(samples: Sequence[EdgeLatency]) -> str:
    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        positions = range(len(samples))
        width = 0.36
        p50 = ax.bar(
            [p - width / 2 for p in positions],
            [s.p50_ms for s in samples],
            width,
            color=_GREEN,
            label="p50",
        )
        p95 = ax.bar(
            [p + width / 2 for p in positions],
            [s.p95_ms for s in samples],
            width,
            color=_PURPLE,
            label="p95",
        )
        ax.bar_label(p50, fmt="%.1f", padding=2, fontsize=8)
        ax.bar_label(p95, fmt="%.1f", padding=2, fontsize=8)
        ax.set_xticks(list(positions), [s.device for s in samples])
        _crowded_ticks(ax, len(samples))
        ax.set_title("Inference latency on each device (ms)")
        ax.set_ylabel("ms")
        ax.set_ylim(0, max([*(s.p95_ms for s in samples), 1e-9]) * 1.2)
        ax.grid(axis="x", visible=False)
        _legend(ax)

    width = min(9.0, max(6.0, 2.5 + 0.8 * len(samples)))
    return _plot("Edge latency per device, p50 and p95", draw, width=width, height=2.8)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def _budgets(summary: RunSummary) -> tuple[ClientBudget, ...]:
    """The recorded budgets, or what the rounds say each client spent (targets unknown)."""
    if summary.budgets is not None:
        return summary.budgets
    spent: dict[str, float] = {}
    for row in summary.rounds:
        for client, epsilon in row.epsilon.items():
            spent[client] = max(spent.get(client, 0.0), epsilon)
    return tuple(ClientBudget(client=c, spent_epsilon=e) for c, e in sorted(spent.items()))


def _edge_samples(summary: RunSummary) -> tuple[EdgeLatency, ...] | None:
    """The edge samples, or the latency the fleet rows report when the demo kept no samples."""
    if summary.edge is not None:
        return summary.edge
    if summary.fleet is None:
        return None
    return tuple(
        EdgeLatency(device=r.device, p50_ms=r.p50_ms, p95_ms=r.p95_ms)
        for r in summary.fleet
        if r.p50_ms is not None and r.p95_ms is not None
    )


def _tile(label: str, value: str, sub: str = "") -> str:
    small = f'<div class="sub">{_e(sub)}</div>' if sub else ""
    return (
        f'<div class="tile"><div class="label">{_e(label)}</div>'
        f'<div class="value">{_e(value)}</div>{small}</div>'
    )


def _header(summary: RunSummary) -> str:
    rounds = summary.rounds
    ok = sum(1 for r in rounds if r.status == "ok")
    accuracy = next(
        (r.eval_accuracy for r in reversed(rounds) if r.eval_accuracy is not None), None
    )
    traffic = sum(r.bytes_sent + r.bytes_received for r in rounds)
    budgets = _budgets(summary)
    worst = max(budgets, key=lambda b: b.spent_epsilon, default=None)
    quality = summary.quality
    headline = quality.federated_int8 if quality else None
    if headline is None and summary.artifact is not None:
        headline = summary.artifact.accuracy_int8
    references = []
    if quality is not None and quality.floor is not None:
        references.append(f"untrained {_num(quality.floor)}")
    if quality is not None and quality.ceiling is not None:
        references.append(f"non-private {_num(quality.ceiling)}")
    tiles = [
        _tile("Rounds", f"{ok} / {len(rounds)}" if rounds else _NONE, "completed / run"),
        _tile(
            "Model accuracy",
            _num(headline),
            "exported model, held-out set no holder trained on"
            + (f" · {', '.join(references)}" if references else ""),
        ),
        _tile("Holders' own splits", _num(accuracy), "global model, each holder's own data"),
        _tile(
            "Max ε spent",
            _num(worst.spent_epsilon, 2) if worst else _NONE,
            f"{worst.client}, budget {_num(worst.target_epsilon, 2)}" if worst else "",
        ),
        _tile("Bytes exchanged", _bytes(traffic) if rounds else _NONE, "all rounds, both ways"),
    ]
    if summary.placement is not None:
        intact = sum(1 for r in summary.placement.rows if r.replica == "intact")
        tiles.append(_tile("Replicas", str(intact), f"intact · {summary.placement.health}"))
    if summary.fleet is not None:
        healthy = sum(1 for r in summary.fleet if r.health.lower() == "healthy")
        tiles.append(_tile("Devices", f"{healthy} / {len(summary.fleet)}", "healthy / total"))
    if summary.stages:
        tiles.append(
            _tile("Total time", _seconds(sum(s.seconds for s in summary.stages)), "all stages")
        )
    created = f"created {summary.created}" if summary.created else "creation time not recorded"
    nav = "".join(f'<a href="#{sid}">{sid}</a>' for sid in SECTION_IDS)
    return (
        '<header class="top"><div class="title">'
        '<div class="kicker">fedge run report</div>'
        f"<h1>{_e(summary.run_id or 'unnamed run')}</h1>"
        f'<div class="meta">{_e(created)}</div></div>'
        f'<div class="tiles">{"".join(tiles)}</div>'
        f"<nav>{nav}</nav></header>"
    )


def _overview(summary: RunSummary) -> str:
    parts = []
    if summary.problems:
        items = "".join(f"<li>{_e(p)}</li>" for p in summary.problems)
        parts.append(
            '<div class="alert"><strong>Could not read all of the run:</strong>'
            f"<ul>{items}</ul></div>"
        )
    if summary.stages:
        longest = max((s.seconds for s in summary.stages), default=0.0) or 1.0
        rows = [
            (
                _e(s.name),
                _badge(s.status),
                _bar(s.seconds / longest),
                _e(_seconds(s.seconds)),
                _e(s.detail),
            )
            for s in summary.stages
        ]
        parts.append(_table(("stage", "status", "", "time", "detail"), rows, numeric=(3,)))
    else:
        parts.append(_not_run("No stage timings were recorded (summary.json has none)."))
    if summary.notes:
        parts.append(
            '<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in summary.notes) + "</ul>"
        )
    return _section(
        "overview", "Overview", "The stages of the run and how long each took.", "".join(parts)
    )


def _training(summary: RunSummary) -> str:
    rounds = summary.rounds
    lead = "Federated rounds: the held-out accuracy and loss of the global model each produced."
    if not rounds:
        return _section(
            "training", "Training", lead, _not_run(f"No rounds: {METRICS_NAME} is absent or empty.")
        )
    rows = []
    for r in rounds:
        declined = ", ".join(f"{name} ({why})" for name, why in sorted(r.declined.items()))
        failed = "; ".join(r.failed)
        rows.append(
            (
                str(r.round),
                _badge(r.status),
                _e(", ".join(r.clients) or _NONE),
                _e(" ".join(x for x in (declined, failed and f"failed: {failed}") if x) or _NONE),
                _e(_num(r.eval_accuracy)),
                _e(_num(r.eval_loss)),
                _e(_num(r.train_loss)),
                _e(f"{r.num_examples:,}"),
                _e(_seconds(r.seconds)),
            )
        )
    table = _table(
        (
            "round",
            "status",
            "clients",
            "declined / failed",
            "accuracy",
            "eval loss",
            "train loss",
            "examples",
            "time",
        ),
        rows,
        numeric=(0, 4, 5, 6, 7, 8),
    )
    return _section("training", "Training", lead, _training_plot(rounds) + table)


def _privacy(summary: RunSummary) -> str:
    lead = (
        "Each data holder's ledger enforces its own budget; this is what each one reported "
        "having spent (differential privacy ε) against the target its policy sets."
    )
    budgets = _budgets(summary)
    if not budgets:
        return _section(
            "privacy", "Privacy", lead, _not_run("No client reported spending any privacy budget.")
        )
    rows = []
    for b in budgets:
        left = None if b.target_epsilon is None else b.target_epsilon - b.spent_epsilon
        share = None if not b.target_epsilon else 100 * b.spent_epsilon / b.target_epsilon
        rows.append(
            (
                _e(b.client),
                _e(_num(b.spent_epsilon, 3)),
                _e(_num(b.target_epsilon, 3)),
                _e(_num(left, 3)),
                _e(_num(share, 0, " %")),
                _e(_NONE if b.delta is None else f"{b.delta:g}"),
            )
        )
    note = ""
    if summary.budgets is None:
        note = (
            '<p class="muted">Budget targets were not recorded; spent ε comes from the rounds.</p>'
        )
    table = _table(
        ("client", "ε spent", "ε budget", "ε left", "used", "δ"), rows, numeric=(1, 2, 3, 4, 5)
    )
    return _section(
        "privacy", "Privacy", lead, _privacy_plot(budgets, summary.rounds) + table + note
    )


def _traffic(summary: RunSummary) -> str:
    rounds = summary.rounds
    lead = "Model bytes the coordinator sent to the sampled clients and received back, per round."
    if not rounds:
        return _section(
            "traffic", "Traffic", lead, _not_run(f"No rounds: {METRICS_NAME} is absent or empty.")
        )
    sent = sum(r.bytes_sent for r in rounds)
    received = sum(r.bytes_received for r in rounds)
    totals = (
        f'<p class="muted">In all: {_e(_bytes(sent))} sent, {_e(_bytes(received))} received, '
        f"{_e(_bytes(sent + received))} over {len(rounds)} round(s).</p>"
    )
    return _section("traffic", "Traffic", lead, _traffic_plot(rounds) + totals)


def _artifact(summary: RunSummary) -> str:
    lead = "The exported model: its identity, its signature, and what quantization cost."
    info = summary.artifact
    if info is None:
        return _section("artifact", "Artifact", lead, _not_run("No model was exported."))
    delta = None
    if info.accuracy_fp32 is not None and info.accuracy_int8 is not None:
        delta = 100 * (info.accuracy_int8 - info.accuracy_fp32)
    items = (
        ("name", info.name),
        ("version", info.version),
        ("format", info.format),
        ("size", _bytes(info.size_bytes)),
        ("signed by", info.signed_by or _NONE),
        ("accuracy fp32", _num(info.accuracy_fp32)),
        ("accuracy int8", _num(info.accuracy_int8)),
        ("int8 \N{MINUS SIGN} fp32", _num(delta, 2, " pp")),
    )
    grid = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in items)
    digest = f'<div class="wide"><dt>digest</dt><dd class="mono">{_e(info.digest)}</dd></div>'
    return _section("artifact", "Artifact", lead, f'<dl class="facts">{grid}{digest}</dl>')


def _quality(summary: RunSummary) -> str:
    lead = (
        "How good the private model is: the exported model on a held-out set that no data "
        "holder trained on, between the untrained floor and the non-private central ceiling."
    )
    quality = summary.quality
    if quality is None:
        return _section(
            "quality", "Model quality", lead, _not_run("No held-out evaluation was recorded.")
        )
    budget = f" (DP, \N{GREEK SMALL LETTER EPSILON} {quality.epsilon:g})" if quality.epsilon else ""
    rows = [
        ("untrained model (floor)", quality.floor),
        ("most common label", quality.majority),
        (f"federated{budget}, exported int8", quality.federated_int8),
        (f"federated{budget}, fp32", quality.federated_fp32),
        ("central, DP at the same budget", quality.central_dp),
        ("central, non-private (ceiling)", quality.ceiling),
        ("holders' own splits (their label mix)", quality.holders_own_split),
    ]
    table = _table(
        ("model", "accuracy", ""),
        (
            (_e(name), _e(_num(value)), _bar(value))
            for name, value in rows
            if value is not None and math.isfinite(value)
        ),
        numeric=(1,),
    )
    labels = ", ".join(quality.label_names) or _NONE
    note = (
        f'<p class="muted">Held-out set: {_e(quality.heldout)}, {quality.examples} examples, '
        f"labels {_e(labels)}. The ceiling pools every holder's data without DP, which only "
        "a demo or a benchmark may do; a real coordinator never sees the data.</p>"
    )
    return _section("quality", "Model quality", lead, table + note)


def _placement(summary: RunSummary) -> str:
    lead = "Where the placement policy put the artifact, and why every other target was not used."
    placement = summary.placement
    if placement is None:
        return _section("placement", "Placement", lead, _not_run("The artifact was not placed."))
    rows = [
        (
            _e(r.target),
            _e(r.provider),
            _e(r.region),
            _e(r.residency),
            _badge(r.decision),
            _e(r.reason),
            _e(_NONE if r.monthly_usd is None else f"${r.monthly_usd:,.4f}"),
            _badge(r.replica) if r.replica else _NONE,
            f'<span class="mono">{_e(_host(r.url_host))}</span>' if r.url_host else _NONE,
        )
        for r in placement.rows
    ]
    cost = sum(r.monthly_usd or 0.0 for r in placement.rows if r.decision == "replica")
    chosen = sum(1 for r in placement.rows if r.decision == "replica")
    head = (
        f'<p class="facts-line">policy <strong>{_e(placement.policy)}</strong> · '
        f"enforcement {_badge(placement.enforcement)} · health {_badge(placement.health)} · "
        f"{chosen} replica(s) · ${cost:,.4f} per month</p>"
    )
    warnings = ""
    if placement.warnings:
        warnings = (
            '<ul class="warnings">'
            + "".join(f"<li>{_e(w)}</li>" for w in placement.warnings)
            + "</ul>"
        )
    table = _table(
        (
            "target",
            "provider",
            "region",
            "residency",
            "decision",
            "reason",
            "per month",
            "replica",
            "download host",
        ),
        rows,
        numeric=(6,),
    )
    return _section("placement", "Placement", lead, head + table + warnings)


def _fleet(summary: RunSummary) -> str:
    lead = "Each device's desired and reported deployment, as the fleet controller last saw it."
    fleet = summary.fleet
    if fleet is None:
        return _section("fleet", "Fleet", lead, _not_run("No rollout to devices."))
    if not fleet:
        return _section("fleet", "Fleet", lead, '<p class="muted">No device reported.</p>')
    rows = []
    for r in fleet:
        behind = r.reported_version != r.desired_version
        reported = (
            f'<span class="{"stale" if behind else ""}">{_e(r.reported_version or _NONE)}</span>'
        )
        rows.append(
            (
                _e(r.device),
                _e(r.fleet),
                _e(r.desired_version),
                reported,
                _badge(r.phase),
                _badge(r.health),
                _e(_num(r.p50_ms, 1)),
                _e(_num(r.p95_ms, 1)),
                _e(r.last_seen or _NONE),
                _e(r.error or _NONE),
            )
        )
    table = _table(
        (
            "device",
            "fleet",
            "desired",
            "reported",
            "phase",
            "health",
            "p50 ms",
            "p95 ms",
            "last seen",
            "error",
        ),
        rows,
        numeric=(6, 7),
    )
    return _section("fleet", "Fleet", lead, table)


def _edge(summary: RunSummary) -> str:
    lead = "Inference latency each device measured on the model it runs (ONNX Runtime, on device)."
    samples = _edge_samples(summary)
    if samples is None:
        return _section("edge", "Edge latency", lead, _not_run("No device served the model."))
    if not samples:
        return _section(
            "edge", "Edge latency", lead, '<p class="muted">No device reported latency.</p>'
        )
    rows = [
        (
            _e(s.device),
            _e(_num(s.p50_ms, 1)),
            _e(_num(s.p95_ms, 1)),
            _e(f"{s.samples:,}" if s.samples else _NONE),
        )
        for s in samples
    ]
    table = _table(("device", "p50 ms", "p95 ms", "samples"), rows, numeric=(1, 2, 3))
    return _section("edge", "Edge latency", lead, _edge_plot(samples) + table + _answers(summary))


def _answers(summary: RunSummary) -> str:
    """Sample inferences: held-out sentences of every label and each device's answer."""
    if not summary.samples:
        return ""
    devices = sorted({d for sample in summary.samples for d in sample.answers})
    rows = [
        (
            _e(sample.text),
            _e(sample.expected),
            *(
                _badge("ok" if sample.answers.get(d) == sample.expected else "failed")
                + " "
                + _e(sample.answers.get(d) or _NONE)
                for d in devices
            ),
        )
        for sample in summary.samples
    ]
    return "<h3>Sample inferences</h3>" + _table(("held-out text", "label", *devices), rows)


_CSS = """
:root { --ink:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#f6f7f9; --card:#fff;
  --accent:#2563eb; --good:#15803d; --good-bg:#dcfce7; --warn:#a16207; --warn-bg:#fef9c3;
  --bad:#b91c1c; --bad-bg:#fee2e2; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink); line-height:1.45;
  font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width:1120px; margin:0 auto; padding:0 20px 40px; }
header.top { max-width:1120px; margin:0 auto; padding:28px 20px 8px; }
.kicker { text-transform:uppercase; letter-spacing:.08em; font-size:11px; color:var(--accent);
  font-weight:700; }
h1 { margin:2px 0 2px; font-size:26px; word-break:break-all; }
.meta { color:var(--muted); }
.tiles { display:grid; grid-template-columns:repeat(auto-fit, minmax(128px, 1fr)); gap:10px;
  margin:18px 0 14px; }
.tile { background:var(--card); border:1px solid var(--line); border-radius:10px;
  padding:10px 12px; }
.tile .label { font-size:12px; color:var(--muted); font-weight:600; }
.tile .value { font-size:22px; font-weight:650; margin-top:2px; font-variant-numeric:tabular-nums; }
.tile .sub { font-size:12px; color:var(--muted); overflow-wrap:anywhere; }
nav { display:flex; flex-wrap:wrap; gap:6px; }
nav a { color:var(--accent); text-decoration:none; padding:3px 10px; border:1px solid var(--line);
  border-radius:999px; background:var(--card); font-size:12px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:12px;
  padding:18px 20px; margin-top:16px; }
h2 { margin:0; font-size:18px; }
.lead { margin:4px 0 12px; color:var(--muted); }
.plot { margin:0 0 12px; }
.plot img { display:block; max-width:100%; height:auto; }
.table-wrap { overflow-x:auto; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { text-align:left; padding:6px 8px; border-bottom:1px solid var(--line);
  vertical-align:top; }
th { font-size:12px; color:var(--muted);
  font-weight:600; white-space:nowrap; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
tbody tr:nth-child(even) { background:#fafafa; }
.badge { display:inline-block; padding:1px 8px; border-radius:999px; font-size:12px;
  font-weight:600; background:#f3f4f6; color:#374151; white-space:nowrap; }
.badge.good { background:var(--good-bg); color:var(--good); }
.badge.warn { background:var(--warn-bg); color:var(--warn); }
.badge.bad { background:var(--bad-bg); color:var(--bad); }
.mono { font-family:ui-monospace, "DejaVu Sans Mono", monospace; font-size:12px;
  overflow-wrap:anywhere; }
.stale { color:var(--bad); font-weight:600; }
.not-run { margin:0; padding:12px 14px; border:1px dashed #d1d5db; border-radius:8px;
  color:var(--muted); background:#fafafa; }
.muted { color:var(--muted); }
.alert { border:1px solid #fecaca; background:var(--bad-bg); color:var(--bad); border-radius:8px;
  padding:10px 14px; margin-bottom:12px; }
.alert ul { margin:4px 0 0; padding-left:20px; }
.bar { background:#eef2ff; border-radius:4px; height:10px; min-width:160px; }
.bar span { display:block; height:10px; border-radius:4px; background:var(--accent); }
.facts { display:grid; grid-template-columns:repeat(auto-fill, minmax(200px, 1fr)); gap:12px 20px;
  margin:0; }
.facts dt { font-size:12px; color:var(--muted); font-weight:600; }
.facts dd { margin:2px 0 0; font-weight:600; overflow-wrap:anywhere; }
.facts .wide { grid-column:1 / -1; }
.facts-line { margin:0 0 10px; }
.notes, .warnings { margin:12px 0 0; padding-left:20px; }
.warnings li { color:var(--warn); }
footer { color:var(--muted); font-size:12px; text-align:center; margin-top:24px; }
"""

# No script, no fetch: the page is data only, whatever a run recorded.
_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'none'"
)


def render_report(summary: RunSummary, *, generated: datetime | None = None) -> str:
    """The report as one HTML5 document with no external reference."""
    when = (generated or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    sections = (
        _overview(summary),
        _quality(summary),
        _training(summary),
        _privacy(summary),
        _traffic(summary),
        _artifact(summary),
        _placement(summary),
        _fleet(summary),
        _edge(summary),
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>fedge run report · {_e(summary.run_id or 'unnamed run')}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"{_header(summary)}<main>{''.join(sections)}"
        f"<footer>Generated by fedge at {_e(when)}.</footer></main></body></html>\n"
    )


def write_report(summary: RunSummary, path: Path, *, generated: datetime | None = None) -> Path:
    """Render and write the report atomically: a reader never sees half a page."""
    return atomic_write_text(path, render_report(summary, generated=generated))
