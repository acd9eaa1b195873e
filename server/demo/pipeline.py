"""``fedge demo``: the whole pipeline on one machine, every persona through its own entry point.

The operator's process (this one) runs what the operator runs: the enrollment endpoint, the
federation (Flower's simulation engine), placement and the rollout. The data holders' steps
(making data, enrolling, the HE key custodian) run as ``fedge-client`` processes, the edge
devices as ``fedge-agent`` processes, the broker as a mosquitto with TLS, passwords and per-device
ACLs (server/demo/mosquitto.py), and the export as ``fedge export``, so the demo crosses the same
process boundaries a real deployment does (DESIGN.md section 2). Everything it starts is registered
on an exit stack and stopped when it ends, on an error, or on Ctrl-C.

Each stage is timed and written to ``summary.json``; ``report.html`` is rendered from it and
from ``metrics.jsonl`` at the end (server/report/page.py).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fedge.errors import FedgeError, UsageError
from fedge.logs import get_logger

__all__ = ["DemoOptions", "run_demo"]

log = get_logger(__name__)
FLEET = "clinics"
LOOPBACK = "127.0.0.1"
SAMPLES_PER_LABEL = 2
"""Sample inferences: held-out sentences of each label, so the demo asks the edge model about
text like what it was trained for, and shows whether it tells the classes apart."""


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path
    clients: int = 2
    rounds: int = 3
    epsilon: float = 8.0
    protection: str = "none"
    data: Path | None = None
    model: str = "builtin:all-MiniLM-L6-v2"
    examples: int = 200
    devices: int = 2
    soak: float = 3.0
    max_length: int = 64


@dataclass
class _State:
    stages: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _tool(args: Sequence[str], *, what: str, cwd: Path | None = None) -> str:
    """Run one of fedge's own commands as its own process; its last error line on failure."""
    done = subprocess.run(list(args), capture_output=True, text=True, check=False, cwd=cwd)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise FedgeError(f"{what} failed: {lines[-1] if lines else f'exit {done.returncode}'}")
    return done.stdout


@contextlib.contextmanager
def _process(args: Sequence[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own process group, stopped (TERM, then KILL) whatever happens."""
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            list(args), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)


class _Demo:
    def __init__(self, options: DemoOptions, console: Console, stack: contextlib.ExitStack) -> None:
        self.o = options
        self.w = options.workdir.resolve()
        self.console = console
        self.stack = stack
        self.state = _State()
        self.run_dir = self.w / "run"
        self.data_dir = self.w / "data"

    # -- bookkeeping

    @contextlib.contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[dict[str, Any]]:
        record: dict[str, Any] = {"name": name, "seconds": 0.0, "status": "ok", "detail": detail}
        started = time.monotonic()
        self.console.print(f"[bold]{name}[/bold] {detail}")
        try:
            yield record
        except BaseException:
            record["status"] = "failed"
            raise
        finally:
            record["seconds"] = round(time.monotonic() - started, 2)
            self.state.stages.append(record)
            self.write_summary()

    def write_summary(self) -> None:
        from fedge.atomic import atomic_write_text
        from server.report.page import SUMMARY_NAME, SUMMARY_SCHEMA

        document = {
            "schema": SUMMARY_SCHEMA,
            "run_id": "demo",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **self.state.summary,
            "stages": self.state.stages,
            "notes": self.state.notes,
        }
        atomic_write_text(self.w / SUMMARY_NAME, json.dumps(document, indent=2) + "\n")

    # -- stages

    def data(self) -> Path:
        folder = self.data_dir
        with self.stage("data", "non-IID data for each data holder"):
            if self.o.data is not None:
                args = [_bin("fedge-client"), "data", "split", str(self.o.data), "--out"]
                args += [str(folder), "--clients", str(self.o.clients), "--heldout", "0.2"]
                args += ["--alpha", "0.5"]
            else:
                args = [_bin("fedge-client"), "data", "synth", "--out", str(folder)]
                args += ["--clients", str(self.o.clients), "--examples", str(self.o.examples)]
                args += ["--heldout", "200"]
            _tool(args, what="fedge-client data")
        return folder

    def policy(self) -> Path:
        path = self.w / "federation.yaml"
        document = {
            "apiVersion": "fedge/v1",
            "kind": "FederationPolicy",
            "metadata": {"name": "sentiment-demo", "labels": {"app": "sentiment"}},
            "spec": {
                "model": {"source": self.o.model, "numLabels": 2, "maxLength": self.o.max_length},
                "rounds": self.o.rounds,
                "clients": {"perRound": self.o.clients, "minimum": self.o.clients},
                "roundTimeout": "10m",
                "protection": self.o.protection,
                # batch, epochs and learning rate: chosen per holder by the DP-aware plan
                "privacy": {"targetEpsilon": self.o.epsilon, "delta": 1.0e-5},
                # no `lora`: only the mean-pooled head trains (a DP linear probe)
            },
        }
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        return path

    def enroll(self) -> None:
        from fedge.tls import generate_federation_certs
        from server.enrollment.registry import Registry, ca_fingerprint
        from server.enrollment.service import Enroller, EnrollmentServer

        names = [f"client-{i:0{len(str(self.o.clients - 1))}d}" for i in range(self.o.clients)]
        with self.stage("enroll", f"{len(names)} data holders, one-time tokens"):
            certs = generate_federation_certs(self.w / "pki")
            he_public = None
            if self.o.protection == "he":  # a data holder acts as the key custodian
                from server.federation.train import simulated_he_keys

                _secret, public = simulated_he_keys(self.run_dir / "he")
                he_public = public.read_bytes()
            ca = certs.ca_cert.read_text(encoding="utf-8")
            registry = Registry.in_workdir(self.w / "coordinator")
            enroller = Enroller(
                registry,
                _SimulatedNodes(),
                superlink="simulation",
                ca_cert=ca,
                he_public_context=he_public,
            )
            server = EnrollmentServer(
                enroller, certfile=certs.server_cert, keyfile=certs.server_key
            ).start()
            self.stack.callback(server.stop)
            for name in names:
                issued = registry.issue_token(
                    name, ttl=600, ca_sha256=ca_fingerprint(ca), actor="demo"
                )
                _tool(
                    [
                        _bin("fedge-client"),
                        "enroll",
                        "--coordinator",
                        server.address,
                        "--token",
                        issued.token,
                        "--state-dir",
                        str(self.run_dir / "clients" / name),
                    ],
                    what=f"fedge-client enroll ({name})",
                )
            active = [h.name for h in registry.holders() if h.state == "active"]
            self.state.notes.append(
                f"enrolled {', '.join(active)}: keys made by each holder, tokens one-time; the "
                "simulation engine's virtual nodes stand in for their SuperNodes"
            )

    def train(self, data: Path, policy: Path) -> None:
        from server.federation.rounds import RoundReport
        from server.federation.train import load_plan, train_simulated

        plan = load_plan(policy, workdir=self.run_dir, run_id="demo")
        columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
        with (
            self.stage("train", f"{self.o.rounds} rounds, DP epsilon {self.o.epsilon:g}"),
            Progress(*columns, console=self.console) as progress,
        ):
            task = progress.add_task("federated rounds", total=self.o.rounds)

            def advance(report: RoundReport) -> None:
                accuracy = report.eval_accuracy
                progress.update(
                    task,
                    completed=report.round,
                    description=f"round {report.round}: accuracy "
                    + (f"{accuracy:.3f}" if accuracy is not None else "-"),
                )

            train_simulated(plan, num_clients=self.o.clients, data_dir=data, progress=advance)
        # the run's metrics and checkpoints live in run/; the report reads metrics from there
        self.state.summary["budgets"] = self.budgets()

    def budgets(self) -> list[dict[str, Any]]:
        rows = []
        for line in _metrics(self.run_dir)[-1:]:
            for client, spent in sorted(line.get("epsilon", {}).items()):
                rows.append(
                    {
                        "client": client,
                        "spent_epsilon": spent,
                        "target_epsilon": self.o.epsilon,
                        "delta": 1e-5,
                    }
                )
        return rows

    def export(self, data: Path, policy: Path) -> Path:
        from fedge.signing import generate_keypair

        artifact = self.w / "artifact"
        with self.stage("export", "merged, ONNX int8, signed"):
            keys = generate_keypair()
            keys.save(self.w / "keys")
            _tool(
                [
                    _bin("fedge"),
                    "export",
                    "--policy",
                    str(policy),
                    "--workdir",
                    str(self.run_dir),
                    "--heldout",
                    str(data / "heldout.tsv"),
                    "--key",
                    str(self.w / "keys" / "signing.key"),
                    "--out",
                    str(artifact),
                    "--label",
                    "app=sentiment",
                    "--version",
                    "1.0.0",
                    "--max-length",
                    str(self.o.max_length),
                    *self.label_names_option(data / "heldout.tsv"),
                    "--force",
                ],
                what="fedge export",
            )
            manifest = json.loads((artifact / "manifest.json").read_text(encoding="utf-8"))
            metrics = manifest.get("metrics", {})
            self.state.summary["artifact"] = {
                "name": manifest["name"],
                "version": manifest["version"],
                "format": manifest.get("format", ""),
                "digest": manifest.get("contentDigest", ""),
                "size_bytes": sum(int(f["size"]) for f in manifest.get("files", [])),
                "accuracy_fp32": metrics.get("accuracy_fp32"),
                "accuracy_int8": metrics.get("accuracy_int8"),
                "signed_by": keys.public.key_id,
            }
        return artifact

    @staticmethod
    def label_names_option(heldout: Path) -> list[str]:
        """Names for a two-label set written as 0/1 (the synthetic data and SST-2 are both
        0 = negative, 1 = positive), so predictions read as words, not indices."""
        with heldout.open(encoding="utf-8") as handle:
            labels = {line.rstrip("\n").rsplit("\t", 1)[-1] for line in list(handle)[1:]}
        return ["--label-names", "negative,positive"] if labels <= {"0", "1"} else []

    def quality(self, data: Path, policy: Path) -> None:
        """The exported model next to the untrained floor and the non-private ceiling."""
        out = self.w / "quality.json"
        holders = sorted(data.glob("client-*.tsv"))
        with self.stage("quality", "held-out accuracy: floor, federated DP, ceiling"):
            args = [_bin("fedge-client"), "baseline", "--policy", str(policy)]
            for path in holders:
                args += ["--data", str(path)]
            args += ["--heldout", str(data / "heldout.tsv"), "--json", str(out)]
            _tool(args, what="fedge-client baseline")
            reference = json.loads(out.read_text(encoding="utf-8"))
            artifact = self.state.summary.get("artifact", {})
            own = [r.get("eval_accuracy") for r in _metrics(self.run_dir)]
            own = [a for a in own if a is not None]
            manifest = json.loads((self.w / "artifact" / "manifest.json").read_text("utf-8"))
            inference = json.loads((self.w / "artifact" / "inference.json").read_text("utf-8"))
            self.state.summary["quality"] = {
                "heldout": "data/heldout.tsv",
                "examples": int(manifest["metrics"].get("heldout_examples", 0)),
                "federated_int8": artifact.get("accuracy_int8"),
                "federated_fp32": artifact.get("accuracy_fp32"),
                "floor": reference["floor"],
                "majority": reference["majority"],
                "ceiling": reference["ceiling"],
                "holders_own_split": own[-1] if own else None,
                "label_names": inference.get("labels", []),
                "epsilon": self.o.epsilon,
            }

    def place(self, artifact: Path) -> Path:
        from cloud_adapters.placement.planner import plan_placement
        from fedge.manifest import Manifest
        from policies import CloudInventory, PlacementPolicy, load_one

        clouds = self.w / "clouds"
        inventory, placement = self.w / "clouds.yaml", self.w / "placement.yaml"
        targets = [("eu-west", "eu", 0.020), ("eu-central", "eu", 0.023), ("us-east", "us", 0.010)]
        inventory.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "fedge/v1",
                    "kind": "CloudInventory",
                    "metadata": {"name": "demo-clouds"},
                    "spec": {
                        "targets": [
                            {
                                "name": name,
                                "provider": "local",
                                "path": str(clouds / name),
                                "region": name,
                                "residency": tag,
                                "pricing": {"storagePerGBMonth": price},
                            }
                            for name, tag, price in targets
                        ]
                    },
                },
                sort_keys=False,
            ),
            encoding="utf-8",
        )
        placement.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "fedge/v1",
                    "kind": "PlacementPolicy",
                    "metadata": {"name": "eu-only"},
                    "spec": {
                        "artifacts": {"matchLabels": {"app": "sentiment"}},
                        "providers": ["local"],
                        "residency": ["eu"],
                        "replicas": {"min": 2, "max": 2},
                        "strategy": {"type": "ordered", "preference": ["eu-west", "eu-central"]},
                        "retention": {"keepVersions": 3},
                    },
                },
                sort_keys=False,
            ),
            encoding="utf-8",
        )
        for name, _, _ in targets:
            (clouds / name).mkdir(parents=True, exist_ok=True)
        state, urls = self.w / "placement.sqlite", self.w / "urls.json"
        common = ["--policy", str(placement), "--inventory", str(inventory)]
        with self.stage("place", "three local 'clouds', residency eu only"):
            _tool(
                [
                    _bin("fedge"),
                    "place",
                    "apply",
                    *common,
                    "--artifact",
                    str(artifact),
                    "--state",
                    str(state),
                ],
                what="fedge place apply",
            )
            _tool(
                [
                    _bin("fedge"),
                    "place",
                    "urls",
                    "--inventory",
                    str(inventory),
                    "--artifact",
                    str(artifact),
                    "--state",
                    str(state),
                    "-o",
                    str(urls),
                ],
                what="fedge place urls",
            )
            plan = plan_placement(
                load_one(placement, PlacementPolicy),
                load_one(inventory, CloudInventory),
                Manifest.from_bytes((artifact / "manifest.json").read_bytes()),
            )
            placed = {r["target"] for r in json.loads(urls.read_text())["replicas"]}
            self.state.summary["placement"] = {
                "policy": plan.policy,
                "enforcement": plan.enforcement,
                "health": "degraded" if plan.degraded else "ok",
                "rows": [
                    {
                        "target": d.target,
                        "provider": d.provider,
                        "region": d.region,
                        "residency": d.residency,
                        "decision": d.decision,
                        "reason": d.reason,
                        "monthly_usd": d.monthly_usd,
                        "replica": "intact" if d.target in placed else "",
                        "url_host": "file (local store)" if d.target in placed else "",
                    }
                    for d in plan.decisions
                ],
                "warnings": list(plan.warnings),
            }
        return urls

    def fleet(self, artifact: Path, urls: Path) -> None:
        from fedge.signing import load_public_key
        from fedge.tls import generate_federation_certs
        from policies import RolloutPolicy
        from server.demo.mosquitto import OPERATOR, LocalBroker, free_port
        from server.fleet.controller import (
            OperatorBroker,
            desired_for_artifact,
            fleet_snapshot,
            run_rollout,
        )

        devices = [f"edge-{i + 1}" for i in range(self.o.devices)]
        with self.stage("broker+agents", f"mosquitto (TLS, ACL) and {len(devices)} agents"):
            certs = generate_federation_certs(self.w / "broker-pki")
            broker = LocalBroker(self.w / "broker", certs, [(FLEET, d) for d in devices])
            self.stack.enter_context(broker)
            trusted = load_public_key(self.w / "keys" / "signing.pub").inline
            ports = {}
            for device in devices:
                folder = self.w / "devices" / device
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
                self.stack.enter_context(
                    _process([_bin("fedge-agent"), "run", "--config", str(config)], folder / "log")
                )
            operator = OperatorBroker(
                host=LOOPBACK,
                port=broker.port,
                ca_file=certs.ca_cert,
                username=OPERATOR,
                password=broker.passwords[OPERATOR],
            )
            _wait(
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
                    "soakTime": self.o.soak,
                    "batchSize": 10,
                    "timeout": "5m",
                },
            }
        ).spec
        with self.stage("rollout", "canary first, soak, then the rest"):
            final = run_rollout(operator, FLEET, desired, spec, devices=devices)
            self.state.notes.append(f"rollout {final.stage}: {final.reason}")
            if final.stage != "succeeded":
                raise FedgeError(f"rollout halted: {final.reason}")
        with self.stage("inference", "sample inputs to every agent over 127.0.0.1 HTTP"):
            samples = _samples(self.data_dir / "heldout.tsv")
            texts = [text for text, _expected in samples]
            answers = {d: _classify(ports[d], texts) for d in devices}
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
                    "last_seen": record.last_seen.isoformat()
                    if record and record.last_seen
                    else "",
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
            self.state.notes.append(f"{device} answered: {labels}")
        self.state.summary["samples"] = [
            {
                "text": text,
                "expected": expected,
                "answers": {d: answers[d][i].get("label") for d in devices},
            }
            for i, (text, expected) in enumerate(samples)
        ]
        self.state.summary["fleet"] = fleet_rows
        self.state.summary["edge"] = edge_rows

    def report(self) -> Path:
        from server.report.page import REPORT_NAME, load_run_summary, write_report

        self.write_summary()
        summary = load_run_summary(self.w)
        # metrics live in run/: the report's training sections read them from the summary folder
        if not summary.rounds:
            from dataclasses import replace

            summary = replace(summary, rounds=load_run_summary(self.run_dir).rounds)
        return write_report(summary, self.w / REPORT_NAME)


class _SimulatedNodes:
    """Enrollment's node control for the simulation engine, which has no SuperLink.

    The registry, the tokens, the keys made on the holders' side and the audit log are the real
    ones; only the registration with a SuperLink is skipped, since the simulation's virtual
    nodes need none. The Deployment Engine uses server.enrollment.service.SuperLinkControl.
    """

    def __init__(self) -> None:
        self._nodes: dict[int, str] = {}

    def register(self, key: Any, *, name: str) -> int:
        node_id = len(self._nodes) + 1
        self._nodes[node_id] = name
        return node_id

    def unregister(self, node_id: int) -> None:
        self._nodes.pop(node_id, None)

    def nodes(self) -> dict[int, str]:
        return dict(self._nodes)


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    from server.federation.metrics import MetricsLog

    path = run_dir / "metrics.jsonl"
    return MetricsLog(path).read() if path.exists() else []


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


def _wait(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise FedgeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.5)


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


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run_demo(options: DemoOptions, console: Console) -> Path:
    """Run every stage; returns the report's path. Stops everything it started, always."""
    if options.protection not in ("none", "secagg", "he"):
        raise UsageError(f"--protection {options.protection!r}: expected none, secagg or he")
    if options.clients < 2:
        raise UsageError("--clients: a federation needs at least 2 data holders")
    options.workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        demo = _Demo(options, console, stack)
        data = demo.data()
        policy = demo.policy()
        demo.enroll()
        demo.train(data, policy)
        artifact = demo.export(data, policy)
        demo.quality(data, policy)
        urls = demo.place(artifact)
        demo.fleet(artifact, urls)
        demo.state.notes.append(f"the demo took {time.monotonic() - started:.0f} s")
        report = demo.report()
    _print_summary(console, demo)
    return report


def _print_summary(console: Console, demo: _Demo) -> None:
    """What a newcomer wants to see at the end, in the terminal; report.html has the rest."""
    from rich.table import Table

    rounds = Table(title="training (simulation engine, DP per holder)")
    for column in ("round", "accuracy (own splits)", "loss", "clients", "epsilon per client"):
        rounds.add_column(column)
    for line in _metrics(demo.run_dir):
        accuracy, loss = line.get("eval_accuracy"), line.get("eval_loss")
        epsilons = ", ".join(f"{k} {v:.2f}" for k, v in sorted(line.get("epsilon", {}).items()))
        rounds.add_row(
            str(line["round"]),
            f"{accuracy:.3f}" if accuracy is not None else "-",
            f"{loss:.3f}" if loss is not None else "-",
            str(len(line.get("clients", []))),
            epsilons,
        )
    console.print(rounds)
    summary = demo.state.summary
    budgets = ", ".join(
        f"{b['client']} {b['spent_epsilon']:.2f} of {b['target_epsilon']:g}"
        for b in summary.get("budgets", [])
    )
    console.print(f"privacy budget spent: {budgets}")
    artifact = summary.get("artifact", {})
    console.print(
        f"artifact {artifact.get('name')} {artifact.get('version')} ({artifact.get('format')}, "
        f"{artifact.get('size_bytes', 0) / 1e6:.1f} MB)"
    )
    quality = summary.get("quality")
    if quality:
        console.print(
            f"[bold]model accuracy[/bold] on {quality['examples']} held-out examples no holder "
            f"trained on: exported int8 {_fmt(quality['federated_int8'])} (DP, epsilon "
            f"{quality['epsilon']:g}) | untrained {_fmt(quality['floor'])} | non-private "
            f"central {_fmt(quality['ceiling'])} | holders' own splits "
            f"{_fmt(quality['holders_own_split'])}"
        )
    placement = Table(title="placement (policy eu-only)")
    for column in ("target", "residency", "decision", "why"):
        placement.add_column(column)
    for row in summary.get("placement", {}).get("rows", []):
        placement.add_row(row["target"], row["residency"], row["decision"], row["reason"])
    console.print(placement)
    fleet = Table(title="edge fleet")
    for column in ("device", "version", "phase", "p50 ms", "p95 ms"):
        fleet.add_column(column)
    for row in summary.get("fleet", []):
        p50, p95 = row.get("p50_ms"), row.get("p95_ms")
        fleet.add_row(
            row["device"],
            row["reported_version"],
            row["phase"],
            f"{p50:.2f}" if p50 is not None else "-",
            f"{p95:.2f}" if p95 is not None else "-",
        )
    console.print(fleet)
