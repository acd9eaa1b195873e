"""Headless Chromium for the browser tests (the run report, the console), and a paced simulation.

``chromium`` is the fixture both ``tests/server/test_report.py`` and
``tests/server/test_console_browser.py`` use: Debian's Chromium driven by Playwright, required
under CI and skipped elsewhere when missing. :class:`ConsoleBrowser` is one page of the console
that records what would show a broken page: console errors, uncaught exceptions, responses of 400
or more, and Content-Security-Policy violations (reported by the browser's own
``securitypolicyviolation`` event). :func:`chart_pixels` reads back what each uPlot chart drew.

``python -m tests.support.console --policy P --data D --workdir W --gate G`` runs a real
simulated federation (``train_simulated``, the Ray backend, the tiny model) that stops after the
line of round ``--pause-after`` is written until the file ``G/go`` exists, so that a test can look
at a page between two rounds without racing the federation.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "ConsoleBrowser",
    "chart_pixels",
    "chromium",
    "open_console",
]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Reports each CSP violation to Python: init scripts run before the page's own and are not
# subject to its policy, so this sees every violation the page causes.
_CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.fedgeCspViolation(
    `${event.effectiveDirective} blocked ${event.blockedURI || "inline"} ` +
    `at ${event.sourceFile || "?"}:${event.lineNumber}`);
});
"""

# For each chart of the view: its canvas size, and how many pixels are drawn and in colour (the
# axes and grid are grey; the series are the palette's colours).
_CHART_PIXELS = """
() => [...document.querySelectorAll("#view figure.chart")].map((figure) => {
  const canvas = figure.querySelector("canvas");
  const found = { title: figure.dataset.chart, empty: !!figure.querySelector(".empty") };
  if (!canvas) return { ...found, canvas: false, width: 0, height: 0, inked: 0, coloured: 0 };
  const { width, height } = canvas;
  const pixels = canvas.getContext("2d").getImageData(0, 0, width, height).data;
  let inked = 0;
  let coloured = 0;
  for (let i = 0; i < pixels.length; i += 4) {
    if (pixels[i + 3] === 0) continue;
    inked += 1;
    const [r, g, b] = [pixels[i], pixels[i + 1], pixels[i + 2]];
    if (Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured += 1;
  }
  return { ...found, canvas: true, width, height, inked, coloured };
})
"""


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium and the Playwright driver: required under CI, skipped without it."""
    missing = []
    if shutil.which(str(CHROMIUM)) is None:
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("playwright (pip install -e '.[dev]')")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"missing: {', '.join(missing)}")
        pytest.skip(f"missing: {', '.join(missing)}")
    return CHROMIUM


class ConsoleBrowser:
    """One console page in headless Chromium, recording everything that would show a fault."""

    def __init__(self, context: BrowserContext, base_url: str) -> None:
        self.context = context
        self.base_url = base_url.rstrip("/")
        self.console: list[str] = []
        self.errors: list[str] = []
        self.failed: list[str] = []
        self.csp: list[str] = []
        self.requests: list[str] = []  # "METHOD path" of every request the page made
        context.expose_function("fedgeCspViolation", self._violation)
        context.add_init_script(_CSP_LISTENER)
        self.page: Page = context.new_page()
        self.page.set_default_timeout(30_000)
        self.page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("request", lambda r: self.requests.append(f"{r.method} {r.url}"))
        self.page.on(
            "response",
            lambda r: self.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )

    def _violation(self, text: str) -> None:
        self.csp.append(text)

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, failed responses, CSP violations."""
        noisy = [line for line in self.console if line.startswith(("error", "warning"))]
        return noisy + [f"pageerror: {e}" for e in self.errors] + self.failed + self.csp

    def forget(self) -> None:
        """Drop what was recorded so far (after a step that fails on purpose)."""
        for found in (self.console, self.errors, self.failed, self.csp):
            found.clear()

    def login(self, token: str) -> None:
        """Open the console, which sends a stranger to /login, and log in with ``token``."""
        page = self.page
        page.goto(self.base_url + "/")
        page.wait_for_url("**/login")
        page.fill("#token", token)
        page.click("#login button[type=submit]")
        page.wait_for_url("**/#/overview")
        page.wait_for_selector("#view .view-overview")
        page.wait_for_selector("#live.on")  # the event stream said hello

    def show(self, view: str) -> None:
        """Go to ``#/<view>`` the way a click on a link does (no reload) and wait for it."""
        shown = self.page.query_selector("#view > .view")
        self.page.evaluate("(hash) => { window.location.hash = hash; }", f"#/{view}")
        self.page.wait_for_function(
            """([old, name]) => {
              const now = document.querySelector("#view > .view");
              return now !== null && now !== old && now.classList.contains(name);
            }""",
            arg=[shown, f"view-{view.split('/', maxsplit=1)[0]}"],
        )

    def mark(self) -> None:
        """Leave a value in the page's window that a reload would lose (see :meth:`reloaded`)."""
        self.page.evaluate("() => { window.fedgeNotReloaded = true; }")

    def reloaded(self) -> bool:
        return not self.page.evaluate("() => window.fedgeNotReloaded === true")

    def record(self, selector: str) -> None:
        """From now on, collect every text the elements matching ``selector`` show (live
        re-renders replace them), in ``window.fedgeSeen``; read with :meth:`seen`."""
        self.page.evaluate(
            """(selector) => {
              window.fedgeSeen = [];
              const note = () => {
                for (const node of document.querySelectorAll(selector)) {
                  const text = node.textContent;
                  if (window.fedgeSeen[window.fedgeSeen.length - 1] !== text) {
                    window.fedgeSeen.push(text);
                  }
                }
              };
              note();
              new MutationObserver(note).observe(
                document.getElementById("view"), { childList: true, subtree: true,
                                                   characterData: true });
            }""",
            selector,
        )

    def seen(self) -> list[str]:
        found: list[str] = self.page.evaluate("() => window.fedgeSeen || []")
        return found

    def charts(self) -> list[dict[str, Any]]:
        return chart_pixels(self.page)

    def screenshot(self, path: Path) -> Path:
        self.page.screenshot(path=str(path), full_page=True)
        return path


def chart_pixels(page: Page) -> list[dict[str, Any]]:
    """Per ``figure.chart`` of the view: title, empty, canvas, width, height, inked, coloured."""
    found: list[dict[str, Any]] = page.evaluate(_CHART_PIXELS)
    return found


@contextmanager
def open_console(chromium: Path, profile: Path, base_url: str) -> Iterator[ConsoleBrowser]:
    """A fresh Chromium profile with one :class:`ConsoleBrowser` page, closed at the end."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(chromium),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield ConsoleBrowser(context, base_url)
        finally:
            context.close()


# -- a simulated federation that waits between two rounds --------------------------------------


def _paced_training(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.console")
    parser.add_argument("--policy", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--gate", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--pause-after", type=int, default=1)
    parser.add_argument("--wait", type=float, default=300.0)
    args = parser.parse_args(argv)

    from server.federation.rounds import RoundReport
    from server.federation.train import load_plan, train_simulated

    def progress(report: RoundReport) -> None:
        print(f"round {report.round}: {report.status}", flush=True)
        if report.round != args.pause_after:
            return
        (args.gate / f"round-{report.round}").touch()
        deadline = time.monotonic() + args.wait
        while not (args.gate / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    args.gate.mkdir(parents=True, exist_ok=True)
    plan = load_plan(args.policy, workdir=args.workdir, run_id="console-browser")
    train_simulated(
        plan,
        num_clients=args.clients,
        data_dir=args.data,
        progress=progress,
        cpus_per_client=1.0 / args.clients,
    )
    print("done", flush=True)


if __name__ == "__main__":
    _paced_training(sys.argv[1:])
