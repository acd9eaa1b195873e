"""``fedge demo`` end to end, reduced: tiny model, 2 data holders, 1 round, 2 edge agents.

Everything is real: the ``fedge demo`` process, Flower's simulation engine, Opacus, the
``fedge-client`` and ``fedge-agent`` processes it starts, a mosquitto with TLS and ACLs, three
libcloud LOCAL stores. Each stage's output is checked where it lands, not from the demo's own
printout; and nothing it started may outlive it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from client.contract.tiny import build_tiny_model
from cloud_adapters.placement.state import PlacementState
from fedge.artifact import verify_artifact
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
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "report:" in done.stdout and "edge fleet" in done.stdout

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

    # the report has every section
    html = (workdir / "report.html").read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in html, section
    assert "Not run" not in html.split('id="training"')[1].split("</section>")[0]
    assert "Not run" not in html.split('id="quality"')[1].split("</section>")[0]
    assert "Model accuracy" in html

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
