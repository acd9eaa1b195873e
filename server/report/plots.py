"""The report's plots: matplotlib figures drawn under one house style, inlined as PNG data URIs.

Figures are drawn with matplotlib's object API (no pyplot), so no global backend and no display is
ever involved, and the page needs no file beside it.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import matplotlib as mpl
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from server.report.markup import esc
from server.report.summary import ClientBudget, EdgeLatency, RoundRow

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

__all__ = ["edge_plot", "privacy_plot", "traffic_plot", "training_plot"]


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
        f'<figure class="plot"><img src="data:image/png;base64,{data}" alt="{esc(alt)}" '
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


def training_plot(rounds: Sequence[RoundRow]) -> str:
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


def privacy_plot(budgets: Sequence[ClientBudget], rounds: Sequence[RoundRow]) -> str:
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


def traffic_plot(rounds: Sequence[RoundRow]) -> str:
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


def edge_plot(samples: Sequence[EdgeLatency]) -> str:
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
