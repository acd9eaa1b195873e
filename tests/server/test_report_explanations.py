"""The report's explanations: the demo's sample sentences with each word shaded by attribution.

The page is static HTML under a Content-Security-Policy without script: the shading is inline
style on escaped spans, the value in each word's tooltip, and words whose offsets a damaged
``summary.json`` got wrong are left unshaded rather than trusted.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime

from server.report.markup import attributed_text
from server.report.page import render_report
from server.report.summary import (
    EdgeLatency,
    ExplainedWord,
    RunSummary,
    SampleExplanation,
    SampleInference,
)

EVIL = "<script>alert(1)</script> was awful"
GENERATED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def _summary() -> RunSummary:
    nurse = SampleExplanation(
        device="edge-1",
        label="positive",
        score=0.982,
        words=(
            ExplainedWord("The", 0, 3, -0.005),
            ExplainedWord("nurse", 4, 9, 0.01),
            ExplainedWord("was", 10, 13, 0.012),
            ExplainedWord("wonderful", 14, 23, 0.34),
            ExplainedWord(".", 23, 24, -0.005),
        ),
        ms=19.0,
    )
    evil = SampleExplanation(
        device="edge-1",
        label="negative",
        score=0.9,
        words=(
            ExplainedWord("<script>", 0, 8, -0.2),
            ExplainedWord("awful", 30, 35, 0.5),
            ExplainedWord("overlap", 2, 6, 1.0),  # inside a word already shaded
            ExplainedWord("past the end", 30, 99, 9.0),
            ExplainedWord("backwards", 9, 3, 9.0),
        ),
    )
    return RunSummary(
        run_id="explained",
        edge=(EdgeLatency("edge-1", 1.0, 2.0, 4),),
        samples=(
            SampleInference("The nurse was wonderful.", "positive", {"edge-1": "positive"}, nurse),
            SampleInference(EVIL, "negative", {"edge-1": "negative"}, evil),
            SampleInference("not explained", "negative", {"edge-1": "negative"}),
        ),
    )


def _text(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def test_the_edge_section_shades_each_sample_by_attribution() -> None:
    page = render_report(_summary(), generated=GENERATED)
    edge = page.split('id="edge"', 1)[1].split("</section>", 1)[0]
    assert "Why: explanations" in edge
    said = re.findall(r'<div class="said">(.*?)</div>', edge)
    assert [_text(s) for s in said] == ["The nurse was wonderful.", EVIL]  # the text, whole
    nurse = said[0]
    assert 'style="background:rgba(21,128,61,0.68)" title="+0.3400">wonderful</span>' in nurse
    assert 'style="background:rgba(185,28,28,0.09)" title="-0.0050">The</span>' in nurse
    assert "edge-1: positive (0.982), expected positive, 19 ms" in edge
    assert "<script" not in page and "&lt;script&gt;" in said[1]
    assert said[1].count('class="attr"') == 2  # the three broken words are left unshaded
    assert "not explained" not in edge.split("Why: explanations", 1)[1]


def test_no_explanation_no_heading_and_the_summary_keeps_them() -> None:
    summary = _summary()
    assert summary.samples is not None
    plain = RunSummary(run_id="plain", edge=summary.edge, samples=summary.samples[2:])
    assert "Why: explanations" not in render_report(plain, generated=GENERATED)
    again = RunSummary.from_json(summary.to_json())
    assert again.samples == summary.samples
    assert again.samples is not None and again.samples[0].explanation is not None
    assert again.samples[0].explanation.words[3] == ExplainedWord("wonderful", 14, 23, 0.34)


def test_attributed_text_without_words_or_signal() -> None:
    assert attributed_text("a & b", []) == "a &amp; b"
    flat = attributed_text("a b", [(0, 1, 0.0), (2, 3, float("nan"))])
    assert (
        flat
        == '<span class="attr" style="background:rgba(185,28,28,0.08)" title="+0.0000">a</span> b'
    )
