"""The edge stages: the mosquitto broker and ``fedge-agent`` devices, the rollout, inference.

The operator's broker and agents are started here and registered on the demo's exit stack; the
rollout runs from this process over MQTT; sample held-out sentences are then asked of every
device over its local HTTP endpoint, and what each answered goes into the summary. The first
device also explains each sample (``POST /v1/explain``: which words made its int8 model answer
so), which the report shades and the console shows; a few tens of milliseconds a sentence.
"""

from __future__ import annotations

import csv
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from fedge.errors import FedgeError
from fedge.process import LOOPBACK, ManagedProcess
from server.demo.context import DemoContext
from server.demo.processes import fedge_bin, wait_for

__all__ = ["FLEET", "LOOPBACK", "SAMPLES_PER_LABEL", "run_fleet"]

FLEET = "clinics"

SAMPLES_PER_LABEL = 2
"""Sample inferences: held-out sentences of each label, so the demo asks the edge model about
text like what it was trained for, and shows whether it tells the classes apart."""


def run_fleet(ctx: DemoContext, artifact: Path, urls: Path) -> None:
    from fedge.signing import load_public_key
    from fedge.tls import generate_federation_certs
    from policies import RolloutPolicy
    from server.demo.mosquitto import OPERATOR, LocalBroker, free_port
    from server.fleet.controller import (
        BrokerEndpoint,
        desired_for_artifact,
        fleet_snapshot,
        run_rollout,
    )

    devices = [f"edge-{i + 1}" for i in range(ctx.o.devices)]
    with ctx.stage("broker+agents", f"mosquitto (TLS, ACL) and {len(devices)} agents"):
        certs = generate_federation_certs(ctx.w / "broker-pki")
        broker = LocalBroker(ctx.w / "broker", certs, [(FLEET, d) for d in devices])
        ctx.stack.enter_context(broker)
        trusted = load_public_key(ctx.w / "keys" / "signing.pub").inline
        ports = {}
        for device in devices:
            folder = ctx.w / "devices" / device
            folder.mkdir(parents=True, exist_ok=True)
            ports[device] = free_port()
            config = _agent_config(
                folder,
                device=device,
                broker=broker,
                ca=certs.ca_cert,
                trusted=trusted,
                http_port=ports[device],
            )
            ctx.stack.enter_context(
                ManagedProcess(
                    [fedge_bin("fedge-agent"), "run", "--config", str(config)],
                    log_path=folder / "log",
                    name=f"fedge-agent {device}",
                    grace=15.0,
                )
            )
        operator = BrokerEndpoint(
            host=LOOPBACK,
            port=broker.port,
            ca_file=certs.ca_cert,
            username=OPERATOR,
            password=broker.passwords[OPERATOR],
        )
        wait_for(
            lambda: len(fleet_snapshot(operator, FLEET, settle=0.5)) >= len(devices),
            timeout=60,
            what="the agents to come online",
        )
    desired = desired_for_artifact(artifact, json.loads(urls.read_text(encoding="utf-8")))
    spec = RolloutPolicy.model_validate(
        {
            "apiVersion": "fedge/v1",
            "kind": "RolloutPolicy",
            "metadata": {"name": "demo-canary"},
            "spec": {
                "canary": {"devices": 1},
                "health": {"maxErrorRate": 0.05, "maxP95LatencyMs": 1000, "minSamples": 0},
                "soakTime": ctx.o.soak,
                "batchSize": 10,
                "timeout": "5m",
            },
        }
    ).spec
    with ctx.stage("rollout", "canary first, soak, then the rest"):
        final = run_rollout(operator, FLEET, desired, spec, devices=devices)
        ctx.state.notes.append(f"rollout {final.stage}: {final.reason}")
        if final.stage != "succeeded":
            raise FedgeError(f"rollout halted: {final.reason}")
    with ctx.stage("inference", "sample inputs to every agent over 127.0.0.1 HTTP"):
        samples = _samples(ctx.data_dir / "heldout.tsv")
        texts = [text for text, _expected in samples]
        answers = {d: _classify(ports[d], texts) for d in devices}
        explainer = devices[0]
        explanations = [_explain(explainer, ports[explainer], text) for text in texts]
        time.sleep(2.5)  # one telemetry interval, so reported health carries the samples
        records = fleet_snapshot(operator, FLEET)
    fleet_rows, edge_rows = [], []
    for device in devices:
        record = records.get(device)
        reported = record.reported if record else None
        health = reported.health if reported else None
        fleet_rows.append(
            {
                "device": device,
                "fleet": FLEET,
                "desired_version": record.desired.version if record and record.desired else "",
                "reported_version": reported.current.version
                if reported and reported.current
                else "",
                "phase": reported.phase.value if reported and reported.phase else "",
                "health": "healthy" if reported and not reported.error else "unhealthy",
                "p50_ms": health.p50_ms if health else None,
                "p95_ms": health.p95_ms if health else None,
                "last_seen": record.last_seen.isoformat() if record and record.last_seen else "",
                "error": (reported.error or "") if reported else "",
            }
        )
        latencies = [a["latency_ms"] for a in answers[device] if "latency_ms" in a]
        edge_rows.append(
            {
                "device": device,
                "p50_ms": health.p50_ms if health and health.p50_ms else _pct(latencies, 50),
                "p95_ms": health.p95_ms if health and health.p95_ms else _pct(latencies, 95),
                "samples": health.samples if health else len(latencies),
            }
        )
        labels = ", ".join(str(a.get("label", "?")) for a in answers[device])
        ctx.state.notes.append(f"{device} answered: {labels}")
    ctx.state.summary["samples"] = [
        {
            "text": text,
            "expected": expected,
            "answers": {d: answers[d][i].get("label") for d in devices},
            "explanation": explanations[i],
        }
        for i, (text, expected) in enumerate(samples)
    ]
    for number, why in enumerate(explanations, start=1):
        top = max(why["words"], key=lambda w: w["attribution"], default=None)
        shown = f"{top['word']!r} {top['attribution']:+.3f}" if top else "no words"
        note = f"{why['device']} explains sample {number} ({why['label']}): top word {shown}"
        ctx.state.notes.append(note)
    ctx.state.summary["fleet"] = fleet_rows
    ctx.state.summary["edge"] = edge_rows


def _agent_config(
    folder: Path, *, device: str, broker: Any, ca: Path, trusted: str, http_port: int
) -> Path:
    user = broker.username(FLEET, device)
    document = {
        "apiVersion": "fedge/v1",
        "kind": "AgentConfig",
        "metadata": {"name": device},
        "spec": {
            "deviceId": device,
            "fleet": FLEET,
            "broker": {
                "host": LOOPBACK,
                "port": broker.port,
                "tls": {"enabled": True, "caFile": str(ca)},
                "username": user,
                "passwordRef": {"file": str(broker.password_file(user))},
                "keepalive": "10s",
            },
            "trustedKeys": [trusted],
            "stateDir": "state",
            "input": {"folder": "inbox", "http": {"port": http_port}},
            "telemetry": {"interval": "2s"},
        },
    }
    path = folder / "agent.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def _samples(heldout: Path) -> list[tuple[str, str]]:
    """The first held-out sentences of each label (by name where names are known)."""
    names = {"0": "negative", "1": "positive"}
    with heldout.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    picked: dict[str, list[str]] = {}
    for row in rows:
        label = names.get(row["label"], row["label"])
        chosen = picked.setdefault(label, [])
        if len(chosen) < SAMPLES_PER_LABEL:
            chosen.append(row["text"])
    return [(text, label) for label, texts in sorted(picked.items()) for text in texts]


def _classify(port: int, texts: Sequence[str]) -> list[dict[str, Any]]:
    answers = []
    for text in texts:
        body = json.dumps({"text": text}).encode()
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{port}/v1/classify",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            answer = json.loads(response.read())
        prediction = answer["predictions"][0]
        answers.append({**prediction, "latency_ms": (time.perf_counter() - started) * 1000})
    return answers


def _explain(device: str, port: int, text: str) -> dict[str, Any]:
    """The device's explanation of ``text``, as the report's ``SampleExplanation`` reads it."""
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{port}/v1/explain",
        data=json.dumps({"text": text}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise FedgeError(
            f"{device} refused to explain a sample: {exc.code} {exc.read()[:200]!r}"
        ) from exc
    return {
        "device": device,
        "label": answer["label"],
        "score": answer["score"],
        "words": answer["words"],
        "ms": answer["ms"],
    }


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
