"""The report's page body: the header with its headline tiles, and one card per section.

Each section is a function of the :class:`RunSummary` alone; a section whose data is absent says
"not run" instead of disappearing, so a reader can tell "nothing happened" from "not recorded".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from server.report.markup import (
    NO_VALUE,
    attributed_text,
    badge,
    bar,
    card,
    esc,
    fmt_bytes,
    fmt_num,
    fmt_seconds,
    html_table,
    not_run,
    url_host,
)
from server.report.plots import edge_plot, privacy_plot, traffic_plot, training_plot
from server.report.summary import METRICS_NAME, ClientBudget, EdgeLatency, RoundRow, RunSummary

__all__ = ["SECTION_IDS", "render_body", "render_header"]

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
    small = f'<div class="sub">{esc(sub)}</div>' if sub else ""
    return (
        f'<div class="tile"><div class="label">{esc(label)}</div>'
        f'<div class="value">{esc(value)}</div>{small}</div>'
    )


def render_header(summary: RunSummary) -> str:
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
        references.append(f"untrained {fmt_num(quality.floor)}")
    if quality is not None and quality.ceiling is not None:
        references.append(f"non-private {fmt_num(quality.ceiling)}")
    tiles = [
        _tile("Rounds", f"{ok} / {len(rounds)}" if rounds else NO_VALUE, "completed / run"),
        _tile(
            "Model accuracy",
            fmt_num(headline),
            "exported model, held-out set no holder trained on"
            + (f" · {', '.join(references)}" if references else ""),
        ),
        _tile("Holders' own splits", fmt_num(accuracy), "global model, each holder's own data"),
        _tile(
            "Max ε spent",
            fmt_num(worst.spent_epsilon, 2) if worst else NO_VALUE,
            f"{worst.client}, budget {fmt_num(worst.target_epsilon, 2)}" if worst else "",
        ),
        _tile(
            "Bytes exchanged", fmt_bytes(traffic) if rounds else NO_VALUE, "all rounds, both ways"
        ),
    ]
    if summary.placement is not None:
        intact = sum(1 for r in summary.placement.rows if r.replica == "intact")
        tiles.append(_tile("Replicas", str(intact), f"intact · {summary.placement.health}"))
    if summary.fleet is not None:
        healthy = sum(1 for r in summary.fleet if r.health.lower() == "healthy")
        tiles.append(_tile("Devices", f"{healthy} / {len(summary.fleet)}", "healthy / total"))
    if summary.stages:
        tiles.append(
            _tile("Total time", fmt_seconds(sum(s.seconds for s in summary.stages)), "all stages")
        )
    created = f"created {summary.created}" if summary.created else "creation time not recorded"
    nav = "".join(f'<a href="#{sid}">{sid}</a>' for sid in SECTION_IDS)
    return (
        '<header class="top"><div class="title">'
        '<div class="kicker">fedge run report</div>'
        f"<h1>{esc(summary.run_id or 'unnamed run')}</h1>"
        f'<div class="meta">{esc(created)}</div></div>'
        f'<div class="tiles">{"".join(tiles)}</div>'
        f"<nav>{nav}</nav></header>"
    )


def _overview(summary: RunSummary) -> str:
    parts = []
    if summary.problems:
        items = "".join(f"<li>{esc(p)}</li>" for p in summary.problems)
        parts.append(
            '<div class="alert"><strong>Could not read all of the run:</strong>'
            f"<ul>{items}</ul></div>"
        )
    if summary.stages:
        longest = max((s.seconds for s in summary.stages), default=0.0) or 1.0
        rows = [
            (
                esc(s.name),
                badge(s.status),
                bar(s.seconds / longest),
                esc(fmt_seconds(s.seconds)),
                esc(s.detail),
            )
            for s in summary.stages
        ]
        parts.append(html_table(("stage", "status", "", "time", "detail"), rows, numeric=(3,)))
    else:
        parts.append(not_run("No stage timings were recorded (summary.json has none)."))
    if summary.notes:
        parts.append(
            '<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in summary.notes) + "</ul>"
        )
    return card(
        "overview", "Overview", "The stages of the run and how long each took.", "".join(parts)
    )


def _training(summary: RunSummary) -> str:
    rounds = summary.rounds
    lead = "Federated rounds: the held-out accuracy and loss of the global model each produced."
    if not rounds:
        return card(
            "training", "Training", lead, not_run(f"No rounds: {METRICS_NAME} is absent or empty.")
        )
    rows = []
    for r in rounds:
        declined = ", ".join(f"{name} ({why})" for name, why in sorted(r.declined.items()))
        failed = "; ".join(r.failed)
        rows.append(
            (
                str(r.round),
                badge(r.status),
                esc(", ".join(r.clients) or NO_VALUE),
                esc(
                    " ".join(x for x in (declined, failed and f"failed: {failed}") if x) or NO_VALUE
                ),
                esc(fmt_num(r.eval_accuracy)),
                esc(fmt_num(r.eval_loss)),
                esc(fmt_num(r.train_loss)),
                esc(f"{r.num_examples:,}"),
                esc(fmt_seconds(r.seconds)),
            )
        )
    table = html_table(
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
    return card("training", "Training", lead, training_plot(rounds) + table)


def _privacy(summary: RunSummary) -> str:
    lead = (
        "Each data holder's ledger enforces its own budget; this is what each one reported "
        "having spent (differential privacy ε) against the target its policy sets."
    )
    budgets = _budgets(summary)
    if not budgets:
        return card(
            "privacy", "Privacy", lead, not_run("No client reported spending any privacy budget.")
        )
    rows = []
    for b in budgets:
        left = None if b.target_epsilon is None else b.target_epsilon - b.spent_epsilon
        share = None if not b.target_epsilon else 100 * b.spent_epsilon / b.target_epsilon
        rows.append(
            (
                esc(b.client),
                esc(fmt_num(b.spent_epsilon, 3)),
                esc(fmt_num(b.target_epsilon, 3)),
                esc(fmt_num(left, 3)),
                esc(fmt_num(share, 0, " %")),
                esc(NO_VALUE if b.delta is None else f"{b.delta:g}"),
            )
        )
    note = ""
    if summary.budgets is None:
        note = (
            '<p class="muted">Budget targets were not recorded; spent ε comes from the rounds.</p>'
        )
    table = html_table(
        ("client", "ε spent", "ε budget", "ε left", "used", "δ"), rows, numeric=(1, 2, 3, 4, 5)
    )
    body = privacy_plot(budgets, summary.rounds) + table + note + _user_level(summary.rounds)
    return card("privacy", "Privacy", lead, body)


def _user_level(rounds: Sequence[RoundRow]) -> str:
    """Level user or both: the coordinator's guarantee for each holder's whole contribution."""
    priced = [row for row in rounds if row.user_epsilon is not None]
    if not priced:
        return ""
    last = priced[-1]
    return (
        '<p class="user-dp">User-level DP at the coordinator: ε '
        f"{esc(fmt_num(last.user_epsilon, 3))} for each holder's whole contribution after "
        f"{len(priced)} released round(s) (noise multiplier "
        f"{esc(fmt_num(last.user_noise_multiplier, 3))}, clipping norm "
        f"{esc(fmt_num(last.user_clipping_norm, 3))}, holder sampling rate "
        f"{esc(fmt_num(last.user_sample_rate, 3))}; priced by Opacus's accountant).</p>"
    )


def _traffic(summary: RunSummary) -> str:
    rounds = summary.rounds
    lead = "Model bytes the coordinator sent to the sampled clients and received back, per round."
    if not rounds:
        return card(
            "traffic", "Traffic", lead, not_run(f"No rounds: {METRICS_NAME} is absent or empty.")
        )
    sent = sum(r.bytes_sent for r in rounds)
    received = sum(r.bytes_received for r in rounds)
    totals = (
        f'<p class="muted">In all: {esc(fmt_bytes(sent))} sent, '
        f"{esc(fmt_bytes(received))} received, "
        f"{esc(fmt_bytes(sent + received))} over {len(rounds)} round(s).</p>"
    )
    return card("traffic", "Traffic", lead, traffic_plot(rounds) + totals)


def _artifact(summary: RunSummary) -> str:
    lead = "The exported model: its identity, its signature, and what quantization cost."
    info = summary.artifact
    if info is None:
        return card("artifact", "Artifact", lead, not_run("No model was exported."))
    delta = None
    if info.accuracy_fp32 is not None and info.accuracy_int8 is not None:
        delta = 100 * (info.accuracy_int8 - info.accuracy_fp32)
    items = (
        ("name", info.name),
        ("version", info.version),
        ("format", info.format),
        ("size", fmt_bytes(info.size_bytes)),
        ("signed by", info.signed_by or NO_VALUE),
        ("accuracy fp32", fmt_num(info.accuracy_fp32)),
        ("accuracy int8", fmt_num(info.accuracy_int8)),
        ("int8 \N{MINUS SIGN} fp32", fmt_num(delta, 2, " pp")),
    )
    grid = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in items)
    digest = f'<div class="wide"><dt>digest</dt><dd class="mono">{esc(info.digest)}</dd></div>'
    return card("artifact", "Artifact", lead, f'<dl class="facts">{grid}{digest}</dl>')


def _quality(summary: RunSummary) -> str:
    lead = (
        "How good the private model is: the exported model on a held-out set that no data "
        "holder trained on, between the untrained floor and the non-private central ceiling."
    )
    quality = summary.quality
    if quality is None:
        return card(
            "quality", "Model quality", lead, not_run("No held-out evaluation was recorded.")
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
    table = html_table(
        ("model", "accuracy", ""),
        (
            (esc(name), esc(fmt_num(value)), bar(value))
            for name, value in rows
            if value is not None and math.isfinite(value)
        ),
        numeric=(1,),
    )
    labels = ", ".join(quality.label_names) or NO_VALUE
    note = (
        f'<p class="muted">Held-out set: {esc(quality.heldout)}, {quality.examples} examples, '
        f"labels {esc(labels)}. The ceiling pools every holder's data without DP, which only "
        "a demo or a benchmark may do; a real coordinator never sees the data.</p>"
    )
    return card("quality", "Model quality", lead, table + note)


def _placement(summary: RunSummary) -> str:
    lead = "Where the placement policy put the artifact, and why every other target was not used."
    placement = summary.placement
    if placement is None:
        return card("placement", "Placement", lead, not_run("The artifact was not placed."))
    rows = [
        (
            esc(r.target),
            esc(r.provider),
            esc(r.region),
            esc(r.residency),
            badge(r.decision),
            esc(r.reason),
            esc(NO_VALUE if r.monthly_usd is None else f"${r.monthly_usd:,.4f}"),
            badge(r.replica) if r.replica else NO_VALUE,
            f'<span class="mono">{esc(url_host(r.url_host))}</span>' if r.url_host else NO_VALUE,
        )
        for r in placement.rows
    ]
    cost = sum(r.monthly_usd or 0.0 for r in placement.rows if r.decision == "replica")
    chosen = sum(1 for r in placement.rows if r.decision == "replica")
    head = (
        f'<p class="facts-line">policy <strong>{esc(placement.policy)}</strong> · '
        f"enforcement {badge(placement.enforcement)} · health {badge(placement.health)} · "
        f"{chosen} replica(s) · ${cost:,.4f} per month</p>"
    )
    warnings = ""
    if placement.warnings:
        warnings = (
            '<ul class="warnings">'
            + "".join(f"<li>{esc(w)}</li>" for w in placement.warnings)
            + "</ul>"
        )
    table = html_table(
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
    return card("placement", "Placement", lead, head + table + warnings)


def _fleet(summary: RunSummary) -> str:
    lead = "Each device's desired and reported deployment, as the fleet controller last saw it."
    fleet = summary.fleet
    if fleet is None:
        return card("fleet", "Fleet", lead, not_run("No rollout to devices."))
    if not fleet:
        return card("fleet", "Fleet", lead, '<p class="muted">No device reported.</p>')
    rows = []
    for r in fleet:
        behind = r.reported_version != r.desired_version
        version = esc(r.reported_version or NO_VALUE)
        reported = f'<span class="{"stale" if behind else ""}">{version}</span>'
        rows.append(
            (
                esc(r.device),
                esc(r.fleet),
                esc(r.desired_version),
                reported,
                badge(r.phase),
                badge(r.health),
                esc(fmt_num(r.p50_ms, 1)),
                esc(fmt_num(r.p95_ms, 1)),
                esc(r.last_seen or NO_VALUE),
                esc(r.error or NO_VALUE),
            )
        )
    table = html_table(
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
    return card("fleet", "Fleet", lead, table)


def _edge(summary: RunSummary) -> str:
    lead = "Inference latency each device measured on the model it runs (ONNX Runtime, on device)."
    samples = _edge_samples(summary)
    if samples is None:
        return card("edge", "Edge latency", lead, not_run("No device served the model."))
    if not samples:
        return card(
            "edge", "Edge latency", lead, '<p class="muted">No device reported latency.</p>'
        )
    rows = [
        (
            esc(s.device),
            esc(fmt_num(s.p50_ms, 1)),
            esc(fmt_num(s.p95_ms, 1)),
            esc(f"{s.samples:,}" if s.samples else NO_VALUE),
        )
        for s in samples
    ]
    table = html_table(("device", "p50 ms", "p95 ms", "samples"), rows, numeric=(1, 2, 3))
    return card(
        "edge",
        "Edge latency",
        lead,
        edge_plot(samples) + table + _answers(summary) + _explanations(summary),
    )


def _answers(summary: RunSummary) -> str:
    """Sample inferences: held-out sentences of every label and each device's answer."""
    if not summary.samples:
        return ""
    devices = sorted({d for sample in summary.samples for d in sample.answers})
    rows = [
        (
            esc(sample.text),
            esc(sample.expected),
            *(
                badge("ok" if sample.answers.get(d) == sample.expected else "failed")
                + " "
                + esc(sample.answers.get(d) or NO_VALUE)
                for d in devices
            ),
        )
        for sample in summary.samples
    ]
    return "<h3>Sample inferences</h3>" + html_table(("held-out text", "label", *devices), rows)


def _explanations(summary: RunSummary) -> str:
    """Why a device answered what it did: each sample's words shaded by their attribution."""
    explained = [(s, s.explanation) for s in summary.samples or () if s.explanation is not None]
    if not explained:
        return ""
    items = []
    for sample, why in explained:
        words = ((w.start, w.end, w.attribution) for w in why.words)
        timing = f", {why.ms:.0f} ms" if why.ms is not None else ""
        items.append(
            f'<li><div class="said">{attributed_text(sample.text, words)}</div>'
            f'<div class="muted">{esc(why.device)}: {esc(why.label)} '
            f"({esc(fmt_num(why.score))}), expected {esc(sample.expected)}{esc(timing)}</div>"
            "</li>"
        )
    lead = (
        "Each word shaded by how much the answer's probability dropped when the device hid it "
        "(occlusion on the int8 model it runs, POST /v1/explain): green towards the answer, red "
        "against it, darker for more; hover a word for its value."
    )
    return (
        f'<h3>Why: explanations</h3><p class="muted">{esc(lead)}</p>'
        f'<ul class="explain">{"".join(items)}</ul>'
    )


def render_body(summary: RunSummary) -> str:
    """Every section, in the order of :data:`SECTION_IDS`."""
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
    return "".join(sections)
