"""``fedge demo`` end to end, reduced: tiny model, 2 data holders, 1 round, 2 edge agents.

Everything is real: the ``fedge demo`` process, Flower's simulation engine, Opacus, the
``fedge-client`` and ``fedge-agent`` processes it starts, a mosquitto with TLS and ACLs, three
libcloud LOCAL stores. Each stage's output is checked where it lands, not from the demo's own
printout; and nothing it started may outlive it. The demo runs with ``--console`` (one demo run
for both): once it is done its console serves the run and the live fleet until SIGTERM.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from client.contract.tiny import build_tiny_model
from cloud_adapters.placement.state import PlacementState
from fedge.artifact import verify_artifact
from fedge.enroll_token import ca_fingerprint, parse_token
from fedge.signing import load_public_key
from server.federation.metrics import MetricsLog
from tests.support.mqtt_broker import BrokerMissingError, mosquitto_binary

pytestmark = pytest.mark.slow

SECTIONS = ("quality", "training", "privacy", "traffic", "artifact", "placement", "fleet", "edge")


def test_a_reduced_demo_runs_every_stage(tmp_path: Path) -> None:
    try:
        mosquitto_binary()
    except BrokerMissingError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    model = build_tiny_model(tmp_path / "tiny")
    workdir = tmp_path / "demo"
    command = [
        str(Path(sys.executable).with_name("fedge")),
        "demo",
        "--workdir",
        str(workdir),
        "--clients",
        "2",
        "--rounds",
        "1",
        "--model",
        str(model),
        "--examples",
        "40",
        "--console",
        "--console-port",
        "0",
    ]
    done = _run_with_console(command, workdir, tmp_path / "demo.stderr")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "report:" in done.stdout and "edge fleet" in done.stdout
    assert "stopped (SIGTERM)" in done.stdout

    # training: one round with both holders, each holder's ledger charged once
    lines = MetricsLog(workdir / "run" / "metrics.jsonl").read()
    assert [line["round"] for line in lines] == [1]
    assert sorted(lines[0]["clients"]) == ["client-0", "client-1"]
    for name in ("client-0", "client-1"):
        ledger = json.loads(
            (workdir / "run" / "clients" / name / "privacy" / "sentiment-demo.json").read_text()
        )
        assert len(ledger["charges"]) == 1 and ledger["charges"][0]["epsilonAfter"] <= 8.0
        assert (workdir / "run" / "clients" / name / "join.json").is_file(), "not enrolled"

    # artifact: signed by the demo's key, verified as an agent would
    trusted = load_public_key(workdir / "keys" / "signing.pub")
    manifest = verify_artifact(workdir / "artifact", [trusted])
    assert manifest.format == "onnx-int8"

    # placement: two intact replicas in the eu stores, none in the us one
    with PlacementState(workdir / "placement.sqlite") as state:
        replicas = state.replicas(manifest.name, manifest.version)
    assert sorted(r.target for r in replicas if r.status == "intact") == ["eu-central", "eu-west"]
    assert not any((workdir / "clouds" / "us-east").iterdir())
    summary = json.loads((workdir / "summary.json").read_text())
    rejected = {r["target"]: r["reason"] for r in summary["placement"]["rows"]}
    assert "residency" in rejected["us-east"]

    # fleet: both agents report the new version, as stored in their own state
    fleet = {row["device"]: row for row in summary["fleet"]}
    assert set(fleet) == {"edge-1", "edge-2"}
    for row in fleet.values():
        assert (row["reported_version"], row["phase"]) == (manifest.version, "SUCCEEDED")

    # quality: the exported model on the held-out set, next to the floor and the ceiling
    quality = summary["quality"]
    assert quality["examples"] == manifest.metrics["heldout_examples"] > 0
    assert quality["federated_int8"] == manifest.metrics["accuracy_int8"]
    for key in ("federated_int8", "floor", "ceiling", "majority"):
        assert 0.0 <= quality[key] <= 1.0, key
    assert quality["label_names"] == ["negative", "positive"]
    samples = summary["samples"]  # held-out sentences of both labels, asked of every device
    assert sorted(s["expected"] for s in samples) == ["negative"] * 2 + ["positive"] * 2
    for sample in samples:
        assert set(sample["answers"]) == {"edge-1", "edge-2"}
        assert set(sample["answers"].values()) <= {"negative", "positive"}, sample
        why = sample["explanation"]  # edge-1 explained each sample (POST /v1/explain)
        assert why["device"] == "edge-1" and why["label"] == sample["answers"]["edge-1"], why
        assert why["words"] and all(
            sample["text"][w["start"] : w["end"]] == w["word"] for w in why["words"]
        ), why

    # the report has every section
    html = (workdir / "report.html").read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in html, section
    assert "Not run" not in html.split('id="training"')[1].split("</section>")[0]
    assert "Not run" not in html.split('id="quality"')[1].split("</section>")[0]
    assert "Model accuracy" in html
    assert "Why: explanations" in html and 'class="attr"' in html

    # nothing the demo started outlives it (its process is gone; no orphans by name)
    leftovers = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
            except OSError:
                continue
            if str(workdir) in args:
                leftovers.append(args)
    assert leftovers == []


def _run_with_console(
    command: list[str], workdir: Path, stderr_path: Path
) -> subprocess.CompletedProcess[str]:
    """Run the demo; once its console is up, check it over HTTP, then SIGTERM the demo."""
    lines: queue.Queue[str | None] = queue.Queue()
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
        assert process.stdout is not None
        stdout = process.stdout

        def read() -> None:
            for line in stdout:
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        seen: list[str] = []
        try:
            deadline = time.monotonic() + 900
            url = token = None
            while token is None and time.monotonic() < deadline:
                try:
                    line = lines.get(timeout=5)
                except queue.Empty:
                    continue
                if line is None:
                    break  # the demo ended without a console
                seen.append(line)
                if line.startswith("console: "):
                    url = line.split()[1]
                if line.startswith("token: "):
                    token = line.split()[1]
            assert url and token, "".join(seen)[-3000:] + stderr_path.read_text()[-3000:]
            _check_console(url, token, workdir)
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        reader.join(10)
    while not lines.empty() and (line := lines.get_nowait()) is not None:
        seen.append(line)
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    with socket.socket() as probe:  # the console went with the demo
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return subprocess.CompletedProcess(command, code, "".join(seen), stderr_path.read_text())


def _check_console(url: str, token: str, workdir: Path) -> None:
    """The demo's console: its run with its rounds, its holders, placement and live devices."""
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/")
    with httpx.Client(base_url=url.rstrip("/"), timeout=30) as client:
        assert client.get("/api/runs").status_code == 401
        login = client.post("/api/login", json={"token": token})
        assert login.status_code == 200, login.text
        csrf = login.json()["csrf"]

        runs = client.get("/api/runs").json()["items"]
        assert [(r["name"], r["round"], r["clients"]) for r in runs] == [("run", 1, 2)], runs
        run = client.get("/api/runs/run").json()
        assert [r["round"] for r in run["rounds"]] == [1]
        assert sorted(run["epsilonPerHolder"]) == ["client-0", "client-1"]
        assert run["budget"]["epsilon"] == 8.0

        holders = client.get("/api/holders").json()["items"]
        assert sorted((h["name"], h["state"]) for h in holders) == [
            ("client-0", "active"),
            ("client-1", "active"),
        ]
        placement = client.get("/api/placement").json()["items"]
        assert [v["health"] for v in placement] == ["ok"]
        explained = client.get("/api/explanations").json()["items"]
        assert len(explained) == 4 and {e["device"] for e in explained} == {"edge-1"}, explained
        assert all(e["words"] for e in explained)

        fleet = client.get("/api/fleet").json()
        deadline = time.monotonic() + 30  # retained shadows arrive right after the connect
        while len(fleet["items"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            fleet = client.get("/api/fleet").json()
        devices = {d["device"]: d for d in fleet["items"]}
        assert fleet["fleet"] == "clinics"
        assert sorted(devices) == ["edge-1", "edge-2"], fleet
        for device in devices.values():
            assert device["online"] is True and device["phase"] == "SUCCEEDED", device

        # an action works against the demo's own CA and still-running enrollment endpoint
        issued = client.post(
            "/api/actions/token",
            json={"confirm": True, "name": "client-9"},
            headers={"X-CSRF-Token": csrf},
        )
        assert issued.status_code == 200, issued.text
        ca = (workdir / "pki" / "ca.crt").read_text()
        assert parse_token(issued.json()["token"])[1] == ca_fingerprint(ca)
        coordinator = issued.json()["command"].split("--coordinator ")[1].split()[0]
        host, port = coordinator.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5):
            pass  # the enrollment endpoint is still up
