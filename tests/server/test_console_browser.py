"""The console's page in a real headless Chromium, against real servers.

* A tour of every view over a folder with a finished run, holders, an audit log and placement:
  the login page and its token, no console error, no Content-Security-Policy violation (and a
  proof that the policy does block inline script), every chart drawn, a screenshot of each view.
* A real simulated federation (Ray, the tiny model) paced between rounds: the run view shows
  round 2 appear from the event stream, without a reload.
* A real ``flower-superlink --enable-supernode-auth``: a token issued from the page enrolls a
  holder whose SuperNode joins; revoking it from the page turns the node away and the audit table
  shows ``holder.revoked``.
* A real mosquitto and a real agent process: the fleet view follows the device's phase to
  SUCCEEDED during a rollout.

Screenshots are left in each test's ``tmp_path`` (``<view>.png``).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from fedge.process import ManagedProcess
from server.console.actions import ActionSettings
from server.console.fleet_watch import FleetSettings
from server.console.serve import ConsoleServer, ConsoleSettings
from tests.conftest import REPO, Result
from tests.support import edge_agents, http_files, mqtt_broker
from tests.support.console import ConsoleBrowser, chromium, open_console
from tests.support.edge_agents import AgentProcess
from tests.support.http_files import FileServer
from tests.support.mqtt_broker import MosquittoBroker

# The shared fixtures, under the names the tests ask for.
agents = edge_agents.agents
files = http_files.files
broker_certs = mqtt_broker.broker_certs
mosquitto = mqtt_broker.mosquitto
__all__ = ["agents", "broker_certs", "chromium", "files", "mosquitto"]

PNG = b"\x89PNG\r\n\x1a\n"
NONE = "\N{EN DASH}"  # what the page shows for a missing value


@pytest.fixture
def console_server() -> Iterator[Callable[..., ConsoleServer]]:
    """Factory: ``console_server(workdir=..., ...)`` serves a console on a free loopback port."""
    started: list[ConsoleServer] = []

    def start(**settings: Any) -> ConsoleServer:
        server = ConsoleServer(ConsoleSettings(port=0, interval=0.25, **settings)).start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def _screenshot(browser: ConsoleBrowser, folder: Path, view: str) -> Path:
    path = browser.screenshot(folder / f"{view.replace('/', '-')}.png")
    data = path.read_bytes()
    assert data.startswith(PNG), path
    assert len(data) > 10_000, f"{path}: {len(data)} bytes"
    return path


def _assert_charts_drawn(browser: ConsoleBrowser, with_data: set[str]) -> None:
    """Every chart of the view that has data drew its series; ``with_data`` must have data."""
    charts = {chart["title"]: chart for chart in browser.charts()}
    assert with_data <= set(charts), charts
    for title, chart in charts.items():
        if chart["empty"] and title not in with_data:
            assert not chart["canvas"], chart
            continue
        assert not chart["empty"], chart
        assert chart["canvas"] and chart["width"] > 0 and chart["height"] > 0, chart
        # axes, grid and labels are grey or black: colour is a series (one point is ~20 pixels)
        assert chart["coloured"] > 5, f"chart {title} drew no series: {chart}"


def _cell(browser: ConsoleBrowser, table: str, key: str, column: int) -> str:
    text: str = browser.page.locator(f"#{table} tr[data-key='{key}'] td").nth(column).inner_text()
    return text


# -- a tour of every view ------------------------------------------------------------------------


def _finished_run(folder: Path) -> None:
    """A run folder as ``fedge train`` leaves it: three rounds of metrics and its app folder."""
    from fedge import messages as m
    from server.federation.app_dir import write_app_dir
    from server.federation.metrics import MetricsLog
    from server.federation.rounds import RoundReport
    from tests.support.federation import policy_text

    log = MetricsLog(folder / "metrics.jsonl")
    for round_, (accuracy, loss) in enumerate([(0.55, 0.69), (0.68, 0.61), (0.74, 0.52)], 1):
        report = RoundReport(
            round=round_,
            status="ok",
            clients=["north", "south"],
            declined={"west": "budget"} if round_ == 3 else {},
            train_loss=loss + 0.05,
            eval_loss=loss,
            eval_accuracy=accuracy,
            eval_clients=2,
            epsilon={"north": 2.5 * round_, "south": 2.0 * round_},
            num_examples=120,
            bytes_sent=11_280,
            bytes_received=11_280,
            seconds=1.5,
        )
        log.append(report.to_dict())
    write_app_dir(
        folder / "app", {m.POLICY: policy_text(Path("/models/tiny"), rounds=3, epsilon=8.0)}
    )


def _registry(folder: Path) -> None:
    from server.enrollment.registry import Registry

    registry = Registry.in_workdir(folder)
    for name in ("north", "south", "west"):
        registry.issue_token(name, ttl=3600, ca_sha256="0" * 64, actor="test")
    registry.revoke("west", actor="test", reason="left the consortium")


def _placement(path: Path) -> None:
    from cloud_adapters.placement.state import PlacementState, ReplicaRecord, VersionRecord

    with PlacementState(path) as state:
        state.put_version(
            VersionRecord(
                artifact="tiny-cls",
                version="1.0.0",
                manifest_digest="ab" * 32,
                created="2025-01-02T03:04:05Z",
                size_bytes=123_456,
                policy="eu-two-clouds",
                preferred=("s3-eu", "azure-eu"),
                actual=("s3-eu", "azure-eu"),
                health="ok",
            )
        )
        for target, provider in (("s3-eu", "s3"), ("azure-eu", "azure")):
            state.put_replica(
                ReplicaRecord("tiny-cls", "1.0.0", target, provider, "fedge", "intact")
            )


def test_every_view_renders_under_the_csp_with_its_charts(
    chromium: Path, tmp_path: Path, console_server: Callable[..., ConsoleServer]
) -> None:
    from playwright.sync_api import expect

    workdir = tmp_path / "operator"
    _finished_run(workdir / "runs" / "alpha")
    _finished_run(workdir)  # the console's own folder is a run too: it is named "."
    _registry(workdir / "coordinator")
    _placement(workdir / "placement.sqlite")
    server = console_server(workdir=workdir)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with open_console(chromium, tmp_path / "profile", server.url) as browser:
        page = browser.page
        # a wrong token is refused on the page, and nothing else happens
        page.goto(server.url)
        page.wait_for_url("**/login")
        page.fill("#token", "not-the-token")
        page.click("#login button[type=submit]")
        expect(page.locator("#login-error")).to_have_text("wrong token")
        assert page.url.endswith("/login")
        assert any(line.startswith("401 ") for line in browser.failed), browser.failed
        browser.forget()

        browser.login(server.token)
        # the session lives in an HttpOnly cookie the page's script cannot read
        cookies = {c["name"]: c for c in browser.context.cookies()}
        assert cookies["fedge_console"]["httpOnly"], cookies
        assert "fedge_console" not in page.evaluate("() => document.cookie")
        assert page.locator(".tile").count() == 4
        assert page.locator("#runs tbody tr").count() == 2
        _assert_charts_drawn(browser, {"accuracy: runs/alpha"})
        _screenshot(browser, shots, "overview")

        browser.show("runs")
        assert _cell(browser, "runs", "runs/alpha", 2) == "3/3"  # the policy plans 3
        _screenshot(browser, shots, "runs")
        page.click("#runs a[href='#/runs/.']")
        expect(page.locator("#view h2")).to_have_text("Run .")
        assert page.locator("#rounds tbody tr").count() == 3
        browser.show("runs")

        page.click("#runs a[href='#/runs/runs%2Falpha']")  # through the link, as an operator
        page.wait_for_selector("#round-count")
        assert page.locator("#round-count").get_attribute("data-rounds") == "3"
        assert "round 3 of 3" in page.locator("#view p").first.inner_text()  # the policy's rounds
        assert page.locator("#rounds tbody tr").count() == 3
        assert _cell(browser, "rounds", "3", 3) == "west: budget"
        _assert_charts_drawn(browser, {"accuracy", "loss", "epsilon per holder"})
        _screenshot(browser, shots, "run")

        browser.show("holders")
        assert _cell(browser, "holders", "north", 1) == "pending"
        assert _cell(browser, "holders", "west", 1) == "revoked"
        assert page.locator("button[data-revoke='west']").count() == 0
        assert page.locator("button[data-revoke='north']").count() == 1
        actions = page.locator("#audit tr td:nth-child(3)").all_inner_texts()
        assert actions.count("token.issued") == 3 and actions[0] == "holder.revoked", actions
        _screenshot(browser, shots, "holders")

        browser.show("placement")
        assert page.locator("#view h3").inner_text() == "tiny-cls 1.0.0"
        assert page.locator("#view table tr[data-key='azure-eu']").count() == 1
        _screenshot(browser, shots, "placement")

        browser.show("fleet")
        assert page.locator("#devices").inner_text() == "no device has reported yet"
        _assert_charts_drawn(browser, set())
        _screenshot(browser, shots, "fleet")

        # the page itself broke no rule of its Content-Security-Policy ...
        assert browser.problems() == []
        # ... which does hold: an inline script is refused and reported
        ran = page.evaluate(
            """() => { const s = document.createElement("script");
                       s.textContent = "window.fedgeInlineRan = true;";
                       document.body.append(s); return window.fedgeInlineRan === true; }"""
        )
        assert ran is False
        deadline = time.monotonic() + 10
        while not browser.csp and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        assert browser.csp and "script-src" in browser.csp[0], browser.csp
    views = ["overview", "runs", "run", "holders", "placement", "fleet"]
    assert sorted(p.stem for p in shots.iterdir()) == sorted(views)


# -- a live federation ---------------------------------------------------------------------------


def _until(condition: Callable[[], bool], what: str, *, timeout: float, alive: Any = None) -> None:
    """Poll ``condition``; fail naming ``what`` on timeout or when ``alive()`` turns false."""
    deadline = time.monotonic() + timeout
    while not condition():
        if alive is not None and not alive():
            pytest.fail(f"gave up waiting for {what}: the process behind it exited")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_run_view_shows_round_two_arrive_without_a_reload(
    chromium: Path, tmp_path: Path, console_server: Callable[..., ConsoleServer]
) -> None:
    from playwright.sync_api import expect

    from tests.support.federation import make_inputs, policy_text

    inputs = tmp_path / "inputs"
    model, data = make_inputs(inputs, clients=2, examples=40, seed=1)
    policy = inputs / "federation.yaml"
    policy.write_text(policy_text(model, name="console-live", rounds=2, per_round=2, minimum=2))
    workdir = tmp_path / "operator"
    workdir.mkdir()
    gate = tmp_path / "gate"
    log = tmp_path / "train.log"
    server = console_server(workdir=workdir)
    # a real simulated federation (Ray, Opacus, the tiny model) that waits after round 1's line
    trainer = ManagedProcess(
        [sys.executable, "-m", "tests.support.console", "--policy", str(policy),
         "--data", str(data), "--workdir", str(workdir / "live"), "--gate", str(gate)],
        log_path=log,
        name="paced training",
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        grace=30.0,
    ).start()  # fmt: skip
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        with open_console(chromium, tmp_path / "profile", server.url) as browser:
            page = browser.page
            browser.login(server.token)
            browser.mark()
            _until((gate / "round-1").exists, "round 1", timeout=240, alive=trainer.running)
            # the overview lists the run as soon as its first round is recorded
            expect(page.locator("#runs tr[data-key='live']")).to_have_count(1, timeout=30_000)
            _assert_charts_drawn(browser, {"accuracy: live"})
            page.click("#runs a[href='#/runs/live']")
            count = page.locator("#round-count")
            expect(count).to_have_attribute("data-rounds", "1")
            assert page.locator("#rounds tbody tr").count() == 1
            _assert_charts_drawn(browser, {"accuracy", "loss", "epsilon per holder"})
            browser.record("#round-count")

            (gate / "go").touch()  # round 2 goes on, with the page left as it is
            expect(count).to_have_attribute("data-rounds", "2", timeout=120_000)
            expect(page.locator("#rounds tbody tr")).to_have_count(2)
            assert not browser.reloaded()
            seen = browser.seen()
            assert seen[0] == "1 round(s) recorded" and seen[-1] == "2 round(s) recorded", seen
            assert page.locator("#rounds tr[data-key='2'] td").nth(1).inner_text() == "ok"
            _assert_charts_drawn(browser, {"accuracy", "loss", "epsilon per holder"})
            _screenshot(browser, shots, "run")
            browser.show("runs")
            assert _cell(browser, "runs", "live", 2).startswith("2/")
            _screenshot(browser, shots, "runs")
            browser.show("overview")
            _assert_charts_drawn(browser, {"accuracy: live"})
            _screenshot(browser, shots, "overview")
            assert browser.problems() == []
        assert trainer.process is not None
        assert trainer.process.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        trainer.stop()


# -- revoking a holder against a real SuperLink --------------------------------------------------


def _apps() -> tuple[typer.Typer, typer.Typer]:
    """``fedge enroll`` and ``fedge-client enroll``, run through fedge's exit-code wrapper."""
    from client.node.enroll import enroll_command
    from fedge.cli import new_app
    from server.cli.enroll import enroll_app

    operator = new_app("fedge", "test")
    operator.add_typer(enroll_app, name="enroll")
    holder = new_app("fedge-client", "test")
    holder.command("enroll")(enroll_command)
    return operator, holder


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_revoking_a_holder_from_the_page_turns_its_node_away(
    chromium: Path,
    tmp_path: Path,
    console_server: Callable[..., ConsoleServer],
    cli: Callable[..., Result],
) -> None:
    from playwright.sync_api import expect

    from client.node.enroll import load_join
    from client.node.supernode import SuperNodeProcess, supernode_command
    from server.enrollment.registry import Registry
    from server.enrollment.service import Enroller, EnrollmentServer, SuperLinkControl
    from tests.support.superlink import free_port, running_superlink

    _, holder_app = _apps()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with running_superlink(tmp_path / "superlink", supernode_auth=True) as link:
        workdir = tmp_path / "operator"
        coordinator = workdir / "coordinator"
        registry = Registry.in_workdir(coordinator)
        control = SuperLinkControl(link.flwr_home)
        enroller = Enroller(
            registry, control, superlink=link.address, ca_cert=link.certs.ca_cert.read_text()
        )
        service = EnrollmentServer(
            enroller, certfile=link.certs.server_cert, keyfile=link.certs.server_key
        )
        node: SuperNodeProcess | None = None
        try:
            service.start()
            server = console_server(
                workdir=workdir,
                registry_dir=coordinator,
                actions=ActionSettings(
                    ca=link.certs.ca_cert, superlink=link.address, coordinator=service.address
                ),
            )
            with open_console(chromium, tmp_path / "profile", server.url) as browser:
                page = browser.page
                browser.login(server.token)
                browser.show("holders")

                # the operator issues an enrollment token from the page
                page.click("#issue-token")
                page.fill("#confirm-fields input[name='name']", "north")
                page.click("#confirm-ok")
                shown = page.locator("#new-token")
                expect(shown).to_have_text(re.compile(r"^fedge1\."))
                token = shown.inner_text()

                # the holder enrolls with it; the page shows its node, live
                north = tmp_path / "north"
                enrolled = cli(
                    holder_app, "enroll", "--coordinator", service.address,
                    "--token", token, "--state-dir", north,
                )  # fmt: skip
                assert enrolled.code == 0, enrolled.err
                join = load_join(north)
                row = page.locator("#holders tr[data-key='north'] td")
                expect(row.nth(1)).to_have_text("active")
                expect(row.nth(2)).to_have_text(str(join.node_id))
                # the one-time token stays on screen through the live updates
                assert shown.is_visible() and shown.inner_text() == token

                # its SuperNode joins the SuperLink
                node = SuperNodeProcess(
                    supernode_command(
                        superlink=link.address,
                        root_certificates=link.certs.ca_cert,
                        runtime_port=free_port(),
                        data_path=north / "no-data.tsv",  # read by a ClientApp only
                        state_dir=north,
                        client_name="north",
                        auth_private_key=Path(join.auth_private_key),
                    ),
                    state_dir=north,
                    grace=5.0,
                ).start()
                _until(
                    lambda: control.nodes().get(join.node_id) == "online",
                    "north going online",
                    timeout=90,
                    alive=node.running,
                )

                # a question dismissed with Escape revokes nothing (the last answer was "ok")
                page.click("button[data-revoke='north']")
                expect(page.locator("#confirm")).to_be_visible()
                page.keyboard.press("Escape")
                expect(page.locator("#confirm")).to_be_hidden()
                page.wait_for_timeout(500)
                assert not [r for r in browser.requests if "/api/actions/revoke" in r]
                assert registry.holder("north").state == "active"

                # revoked from the page: confirmed, audited, and the node is turned away
                page.click("button[data-revoke='north']")
                page.fill("#confirm-fields input[name='reason']", "left the consortium")
                page.click("#confirm-ok")
                latest = page.locator("#audit tbody tr").first.locator("td")
                expect(latest.nth(2)).to_have_text("holder.revoked", timeout=60_000)
                assert latest.nth(3).inner_text() == "north"
                assert "left the consortium" in latest.nth(4).inner_text()
                assert latest.nth(5).inner_text().startswith("console")
                expect(row.nth(1)).to_have_text("revoked")
                assert page.locator("button[data-revoke='north']").count() == 0
                _screenshot(browser, shots, "holders")
                assert browser.problems() == []
            assert registry.holder("north").state == "revoked"
            assert [e.action for e in registry.audit(subject="north")][-1] == "holder.revoked"
            assert control.nodes()[join.node_id] == "unregistered"
            _until(lambda: not node.running(), "the revoked SuperNode leaving", timeout=90)
            assert link.process.poll() is None  # nothing was restarted
        finally:
            if node is not None:
                node.stop()
            service.stop()


# -- a rollout against a real mosquitto -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_fleet_view_follows_a_device_through_a_rollout(
    chromium: Path,
    tmp_path: Path,
    console_server: Callable[..., ConsoleServer],
    mosquitto: Callable[..., MosquittoBroker],
    agents: list[AgentProcess],
    files: FileServer,
) -> None:
    from playwright.sync_api import expect

    from fedge.signing import generate_keypair
    from server.fleet.controller import BrokerEndpoint
    from tests.support.edge_agents import FLEET, deploy, start_agent
    from tests.support.edge_artifacts import make_artifact
    from tests.support.mqtt_broker import LOOPBACK

    key = generate_keypair()
    make_artifact(tmp_path / "v1", key, version="1.0.0")
    broker = mosquitto([(FLEET, "dev-1")])
    agent = start_agent(agents, broker, tmp_path, "dev-1", key)
    username, password = broker.operator
    endpoint = BrokerEndpoint(
        host=LOOPBACK,
        port=broker.port,
        ca_file=broker.certs.ca_cert,
        username=username,
        password=password,
    )
    workdir = tmp_path / "operator"
    workdir.mkdir()
    server = console_server(workdir=workdir, fleet=FleetSettings(endpoint=endpoint, fleet=FLEET))
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with open_console(chromium, tmp_path / "profile", server.url) as browser:
        page = browser.page
        browser.login(server.token)
        browser.show("fleet")
        expect(page.locator("#view h2")).to_have_text(f"Fleet {FLEET}")
        row = page.locator("#devices tr[data-key='dev-1'] td")
        expect(row.nth(1)).to_have_text("yes", timeout=60_000)  # the agent came online
        phase = page.locator("span.phase[data-device='dev-1']")
        before = phase.inner_text()
        assert before != "SUCCEEDED"
        browser.mark()
        browser.record("span.phase[data-device='dev-1']")

        with broker.client(*broker.operator) as operator:
            deploy(operator, ["dev-1"], tmp_path / "v1", files, "dep-1")
            expect(phase).to_have_text("SUCCEEDED", timeout=90_000)
        expect(row.nth(3)).to_have_text("1.0.0")  # reported
        assert row.nth(2).inner_text() == "1.0.0"  # desired
        assert not browser.reloaded()
        seen = browser.seen()
        assert seen[0] == before and seen[-1] == "SUCCEEDED", seen

        # a request served on the device reaches the latency chart through its telemetry
        status, body = agent.classify("a lovely film")
        assert status == 200 and body["version"] == "1.0.0"
        chart = page.locator("figure.chart[data-chart='latency by device (ms)'] canvas")
        expect(chart).to_have_count(1, timeout=60_000)
        _assert_charts_drawn(browser, {"latency by device (ms)"})
        _screenshot(browser, shots, "fleet")
        browser.show("overview")
        expect(page.locator(".tile").nth(2).locator("strong")).to_have_text("1/1")
        assert browser.problems() == []
