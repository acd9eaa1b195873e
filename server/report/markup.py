"""The small HTML building blocks of the report: escaping, number formats, tables, badges, cards.

Every cell a caller puts in a table is HTML already; each caller escapes what it puts in with
:func:`esc`, so nothing a run recorded (a client name, a reason) reaches the page unescaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

__all__ = [
    "NO_VALUE",
    "attributed_text",
    "badge",
    "bar",
    "card",
    "esc",
    "fmt_bytes",
    "fmt_num",
    "fmt_seconds",
    "html_table",
    "not_run",
    "url_host",
]


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt_bytes(count: float) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - the loop always returns


def fmt_num(value: float | None, digits: int = 3, suffix: str = "") -> str:
    if value is None or not math.isfinite(value):
        return NO_VALUE
    return f"{value:.{digits}f}{suffix}"


def fmt_seconds(value: float) -> str:
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


def url_host(value: str) -> str:
    """The host of a URL, or the value itself: a presigned query string never reaches a report."""
    if "/" not in value and "?" not in value:
        return value
    parts = urlsplit(value if "//" in value else f"//{value}")
    host = parts.hostname or ""
    return f"{host}:{parts.port}" if parts.port else host


NO_VALUE = "\N{EN DASH}"  # a cell with no value
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


def badge(value: str) -> str:
    key = value.strip().lower()
    tone = "good" if key in _GOOD else "warn" if key in _WARN else "bad" if key in _BAD else "none"
    return f'<span class="badge {tone}">{esc(value or NO_VALUE)}</span>'


def html_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, numeric: Iterable[int] = ()
) -> str:
    """A table of cells that are already HTML (each caller escapes what it puts in)."""
    right = set(numeric)
    head = "".join(
        f"<th{' class=num' if i in right else ''}>{esc(h)}</th>" for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i in right else ''}>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="table-wrap">{table}</div>'


def bar(fraction: float) -> str:
    width = max(1.0, min(100.0, 100 * fraction))
    return f'<div class="bar"><span style="width:{width:.1f}%"></span></div>'


def not_run(why: str) -> str:
    return f'<p class="not-run"><strong>Not run.</strong> {esc(why)}</p>'


def card(section_id: str, title: str, lead: str, body: str) -> str:
    return (
        f'<section id="{section_id}" class="card">'
        f"<h2>{esc(title)}</h2>"
        f'<p class="lead">{esc(lead)}</p>'
        f"{body}</section>"
    )


def attributed_text(text: str, words: Iterable[tuple[int, int, float]]) -> str:
    """``text`` with each word (``start``, ``end``, attribution) shaded by its attribution:
    green where it pushed the model towards its answer, red where against, the stronger the
    darker (relative to the sentence's largest); the value is the word's tooltip.

    Words come from a file (``summary.json``), so ones that overlap, run backwards or past the
    end are left unshaded rather than trusted; everything is escaped.
    """
    usable = sorted(
        (start, end, value)
        for start, end, value in words
        if 0 <= start < end <= len(text) and math.isfinite(value)
    )
    largest = max((abs(value) for _start, _end, value in usable), default=0.0)
    parts: list[str] = []
    cursor = 0
    for start, end, value in usable:
        if start < cursor:
            continue
        parts.append(esc(text[cursor:start]))
        strength = abs(value) / largest if largest > 0 else 0.0
        rgb = "21,128,61" if value > 0 else "185,28,28"
        parts.append(
            f'<span class="attr" style="background:rgba({rgb},{0.08 + 0.6 * strength:.2f})" '
            f'title="{value:+.4f}">{esc(text[start:end])}</span>'
        )
        cursor = end
    parts.append(esc(text[cursor:]))
    return "".join(parts)
