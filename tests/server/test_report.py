"""The run report: built from plain values, self-contained, escaped, and rendered by a browser.

The browser test opens the page in Debian's Chromium through Playwright (no downloaded browser),
with the network switched off by the page's own Content-Security-Policy and by Chromium flags.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedge.errors import UsageError
from server.federation.metrics import MetricsLog
from server.report.page import REPORT_NAME, render_report, write_report
from server.report.sections import SECTION_IDS
from server.report.summary import (
    SUMMARY_NAME,
    SUMMARY_SCHEMA,
    ArtifactInfo,
    ClientBudget,
    EdgeLatency,
    FleetRow,
    Placement,
    PlacementRow,
    Quality,
    RoundRow,
    RunSummary,
    SampleInference,
    Stage,
    load_run_summary,
)
from tests.support.console import CHROMIUM_ARGS, chromium

EVIL = "<script>alert(1)</script>"
GENERATED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
PRESIGNED = "https://eu-store.example.test:9000/fedge/model.onnx?X-Amz-Signature=deadbeef"
__all__ = ["chromium"]  # the fixture, shared with the console's browser tests


def _rounds() -> tuple[RoundRow, ...]:
    return (
        RoundRow(
            round=1,
            clients=("hospital-a", EVIL),
            train_loss=0.69,
            eval_loss=0.64,
            eval_accuracy=0.61,
            eval_clients=2,
            epsilon={"hospital-a": 1.2, EVIL: 1.1},
            num_examples=640,
            bytes_sent=2 * 1_180_000,
            bytes_received=2 * 1_180_000,
            seconds=14.2,
        ),
        RoundRow(
            round=2,
            status="skipped",
            clients=("hospital-a",),
            declined={EVIL: "budget: 1.10 + 1.30 > 2.00"},
            train_loss=0.58,
            eval_loss=0.55,
            eval_accuracy=0.72,
            eval_clients=1,
            epsilon={"hospital-a": 2.3, EVIL: 1.1},
            num_examples=320,
            bytes_sent=2 * 1_180_000,
            bytes_received=1_180_000,
            seconds=11.0,
        ),
        RoundRow(
            round=3,
            clients=("hospital-a",),
            train_loss=0.49,
            eval_loss=0.47,
            eval_accuracy=0.79,
            eval_clients=2,
            epsilon={"hospital-a": 3.1, EVIL: 1.1},
            num_examples=320,
            bytes_sent=2 * 1_180_000,
            bytes_received=1_180_000,
            seconds=12.5,
        ),
    )


def _summary() -> RunSummary:
    return RunSummary(
        run_id="demo-20250102",
        created="2025-01-02T03:00:00Z",
        rounds=_rounds(),
        budgets=(
            ClientBudget("hospital-a", spent_epsilon=3.1, target_epsilon=4.0, delta=1e-5),
            ClientBudget(EVIL, spent_epsilon=1.1, target_epsilon=2.0, delta=1e-5),
        ),
        artifact=ArtifactInfo(
            name="minilm-sentiment",
            version="3",
            format="onnx-int8",
            digest="sha256:" + "ab" * 32,
            size_bytes=23_456_789,
            accuracy_fp32=0.79,
            accuracy_int8=0.785,
            signed_by="ed25519:1f2e3d4c",
        ),
        quality=Quality(
            heldout="data/heldout.tsv",
            examples=200,
            federated_int8=0.785,
            federated_fp32=0.79,
            floor=0.51,
            majority=0.5,
            ceiling=0.83,
            holders_own_split=0.9,
            label_names=("negative", EVIL),
            epsilon=4.0,
        ),
        samples=(
            SampleInference("the nurse was kind", "positive", {"edge-1": "positive"}),
            SampleInference(EVIL, "negative", {"edge-1": "positive"}),
        ),
        placement=Placement(
            policy="eu-only",
            enforcement="Enforce",
            health="ok",
            rows=(
                PlacementRow(
                    "eu-s3",
                    "s3",
                    "eu-west-1",
                    "eu",
                    "replica",
                    "cheapest allowed",
                    0.0005,
                    replica="intact",
                    url_host=PRESIGNED,
                ),
                PlacementRow(
                    "eu-blob",
                    "azure-blob",
                    "westeurope",
                    "eu",
                    "replica",
                    "spread",
                    0.0006,
                    replica="intact",
                    url_host="127.0.0.1:10000",
                ),
                PlacementRow(
                    "us-s3",
                    "s3",
                    "us-east-1",
                    "us",
                    "rejected",
                    "residency us not in allowed [eu]",
                    0.0004,
                ),
            ),
            warnings=("cost ceiling within 10 %",),
        ),
        fleet=(
            FleetRow(
                "edge-1",
                "clinic",
                "3",
                "3",
                "SUCCEEDED",
                "healthy",
                4.2,
                7.9,
                "2025-01-02T03:05:00Z",
            ),
            FleetRow(
                "edge-2",
                "clinic",
                "3",
                "2",
                "ROLLED_BACK",
                "unhealthy",
                5.1,
                12.3,
                "2025-01-02T03:05:02Z",
                error="p95 above 10 ms",
            ),
        ),
        edge=(EdgeLatency("edge-1", 4.2, 7.9, 200), EdgeLatency("edge-2", 5.1, 12.3, 200)),
        stages=(
            Stage("train", 37.7),
            Stage("export", 8.1),
            Stage("place", 2.4),
            Stage("deploy", 6.0, status="failed", detail="edge-2 rolled back"),
        ),
        notes=("a note with <b>markup</b> & an ampersand",),
    )


def _section(page: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}"[^>]*>(.*?)</section>', page, re.S)
    assert match, f"no section #{section_id}"
    return match.group(1)


@pytest.fixture(scope="module")
def page() -> str:
    """The full report, rendered once: drawing the plots is the slow part."""
    return render_report(_summary(), generated=GENERATED)


def test_every_section_is_rendered_with_its_plot_and_tables(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    for section_id in SECTION_IDS:
        assert "Not run." not in _section(page, section_id), section_id
    for section_id in ("training", "privacy", "traffic", "edge"):
        assert "data:image/png;base64," in _section(page, section_id), section_id
    placement = _section(page, "placement")
    assert "residency us not in allowed [eu]" in placement
    assert 'class="badge bad">rejected<' in placement
    fleet = _section(page, "fleet")
    assert "ROLLED_BACK" in fleet
    assert "p95 above 10 ms" in fleet
    assert "minilm-sentiment" in _section(page, "artifact")
    quality = _section(page, "quality")
    for shown in ("0.785", "0.510", "0.830", "0.900", "own splits", "ceiling", "floor"):
        assert shown in quality, shown
    assert (
        "Model accuracy" in page and "0.785" in page.split("<main>", maxsplit=1)[0]
    )  # the headline
    edge = _section(page, "edge")
    assert "Sample inferences" in edge and 'class="badge bad">failed<' in edge
    assert "2025-01-02 03:04:05 UTC" in page


def test_every_string_is_escaped(page: str) -> None:
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in _section(page, "privacy")
    assert "&lt;b&gt;markup&lt;/b&gt; &amp; an ampersand" in page
    assert "<script" not in page.lower()


def test_page_names_no_network_address(page: str) -> None:
    assert "http://" not in page
    assert "https://" not in page
    # A presigned URL shows as its host alone: its signature never reaches the report.
    assert "eu-store.example.test:9000" in page
    assert "X-Amz-Signature" not in page
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)
    assert "default-src 'none'" in page


def test_missing_sections_say_not_run() -> None:
    page = render_report(RunSummary(run_id="empty"), generated=GENERATED)
    for section_id in SECTION_IDS:
        assert "Not run." in _section(page, section_id), section_id
    assert "<img" not in page


def test_privacy_falls_back_to_spent_epsilon_from_rounds() -> None:
    page = render_report(RunSummary(rounds=_rounds()), generated=GENERATED)
    privacy = _section(page, "privacy")
    assert "Budget targets were not recorded" in privacy
    assert "3.100" in privacy  # hospital-a's last reported spend
    assert "Not run." in _section(page, "fleet")


def test_sparse_values_render_without_warnings() -> None:
    """A diverged or unevaluated run still draws: no number to plot is not an error."""
    rounds = (
        RoundRow(round=1, status="skipped"),
        RoundRow(round=2, train_loss=1.3, epsilon={"a": 0.5}),
    )
    many = tuple(ClientBudget(f"client-{i:02d}", spent_epsilon=0.1 * i) for i in range(12))
    fleet = (FleetRow("edge-1", "f", "2", "", "QUEUED", "unknown"),)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        page = render_report(RunSummary(rounds=rounds, budgets=many, fleet=fleet))
    assert page.count("<img") == 3  # training, privacy, traffic: no latency to draw
    assert "No device reported latency." in _section(page, "edge")
    assert "client-11" in _section(page, "privacy")


def test_summary_json_round_trips_without_rounds() -> None:
    summary = _summary()
    text = summary.to_json()
    data = json.loads(text)
    assert data["schema"] == SUMMARY_SCHEMA
    assert "rounds" not in data
    assert RunSummary.from_json(text, rounds=summary.rounds) == summary


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ('{"schema": "fedge.run-summary/v0"}', "schema"),
        (
            json.dumps({"schema": SUMMARY_SCHEMA, "budgets": [{"client": "a"}]}),
            "budgets.0.spent_epsilon",
        ),
    ],
)
def test_a_bad_summary_names_the_field(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        RunSummary.from_json(text)


def test_load_reads_metrics_and_summary(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for row in reversed(_rounds()):
        log.append(_record(row))
    summary = replace(_summary(), rounds=())
    (tmp_path / SUMMARY_NAME).write_text(summary.to_json(), encoding="utf-8")
    loaded = load_run_summary(tmp_path)
    assert loaded == replace(_summary(), rounds=_rounds())


def _record(row: RoundRow) -> dict[str, object]:
    """A metrics.jsonl line as the federation writes it, with fields the report ignores."""
    return {
        "round": row.round,
        "status": row.status,
        "clients": list(row.clients),
        "declined": dict(row.declined),
        "failed": list(row.failed),
        "train_loss": row.train_loss,
        "eval_loss": row.eval_loss,
        "eval_accuracy": row.eval_accuracy,
        "eval_clients": row.eval_clients,
        "epsilon": dict(row.epsilon),
        "noise_multiplier": {name: 1.1 for name in row.epsilon},
        "steps": {name: 10 for name in row.epsilon},
        "num_examples": row.num_examples,
        "bytes_sent": row.bytes_sent,
        "bytes_received": row.bytes_received,
        "train_seconds": 1.0,
        "seconds": row.seconds,
    }


def test_load_an_empty_workdir_renders_not_run(tmp_path: Path) -> None:
    summary = load_run_summary(tmp_path)
    assert summary.rounds == ()
    assert summary.problems == ()
    assert "Not run." in _section(render_report(summary), "training")


def test_load_shows_unreadable_files_as_problems(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"round": 1, "status": "ok"}\n{"status": 3}\n')
    (tmp_path / SUMMARY_NAME).write_text('{"schema": "other"}')
    summary = load_run_summary(tmp_path)
    assert [r.round for r in summary.rounds] == [1]
    assert any("record 2" in p for p in summary.problems)
    assert any(SUMMARY_NAME in p for p in summary.problems)
    page = render_report(summary)
    assert 'class="alert"' in page
    assert "Not run." in _section(page, "placement")


def test_load_refuses_a_missing_workdir(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a work directory"):
        load_run_summary(tmp_path / "nope")


def test_write_report_writes_the_page(page: str, tmp_path: Path) -> None:
    path = write_report(_summary(), tmp_path / "run" / REPORT_NAME, generated=GENERATED)
    assert path.read_text(encoding="utf-8") == page  # the same values draw the same page
    assert [p.name for p in path.parent.iterdir()] == [REPORT_NAME]


# --- in a real browser -----------------------------------------------------------------------


def test_report_renders_in_headless_chromium(chromium: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    report = write_report(_summary(), tmp_path / REPORT_NAME, generated=GENERATED)
    screenshot = tmp_path / "report.png"
    console: list[str] = []
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "profile",
            executable_path=str(chromium),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.new_page()
            page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report.as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => [i.alt, i.complete, i.naturalWidth])"
            )
            for section_id in SECTION_IDS:
                assert page.locator(f"section#{section_id}").is_visible(), section_id
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    assert not errors
    assert not [line for line in console if line.startswith("error")], console
    assert len(images) == 4
    assert all(complete and width > 0 for _, complete, width in images), images
    assert all(url.startswith(("file://", "data:")) for url in requests), requests
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 50_000
