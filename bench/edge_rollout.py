"""Edge rollout: how long a new model takes to reach a fleet, staged rollout next to all at once.

One mosquitto (started here: TLS, a password file, an ACL confining each device to its own
subtree, as in production) and N edge agents as threads of this process (``edge_agent.agent.Agent``,
one per device, each with its own state folder and ONNX Runtime session), fetching a tiny signed
ONNX classifier from a stdlib HTTP server on loopback. Each deployment is a real download, signature
check, install and sample inference on every agent. Two arms, side by side in one run:

- ``rollout``: ``server.fleet.controller.run_rollout`` with a RolloutPolicy of one canary, a
near-zero soak
  and one batch of everything else (what ``fedge deploy`` does: publish to the canary, decide again
  as soon as it reports, then publish to the rest);
- ``all-at-once``: the operator publishes the retained ``desired`` document to every device (all
  in flight at once, as the controller publishes a batch) and waits for nothing.

For each: seconds from the first ``desired`` publication to the last device reporting
``SUCCEEDED``, and per device the seconds from its own ``desired`` to its ``SUCCEEDED`` (p50/p95).
Times are taken by one monitoring MQTT client (the operator's account) when it receives the
messages, so both arms are measured the same way. The ratio rollout / all-at-once is the price of
the canary gate. A warm-up deployment (every agent's first install) runs first and is not counted;
the full run repeats the arms in ABBA order.
Peak RSS is this process's (agents, controller, monitor) and mosquitto's.

Run: ``.venv/bin/python bench/edge_rollout.py [--agents N] [--quick] [--json PATH]``; ``--quick`` is
20 agents and one run per arm.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import pwd
import resource
import secrets
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers  # noqa: E402

from edge_agent.agent import Agent  # noqa: E402
from edge_agent.config import AgentSettings, BrokerSettings  # noqa: E402
from edge_agent.protocol import DesiredState  # noqa: E402
from fedge.artifact import sign_artifact  # noqa: E402
from fedge.errors import FedgeError  # noqa: E402
from fedge.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest  # noqa: E402
from fedge.payload import (  # noqa: E402
    INFERENCE_FILE,
    INPUT_NAMES,
    MODEL_FILE,
    TOKENIZER_FILE,
    inference_document,
)
from fedge.process import ManagedProcess, free_port  # noqa: E402
from fedge.signing import KeyPair, generate_keypair  # noqa: E402
from fedge.tls import CertPaths, generate_federation_certs  # noqa: E402
from policies.rollout import RolloutSpec  # noqa: E402
from server.fleet.controller import BrokerEndpoint, FleetClient, desired_for_artifact, run_rollout  # noqa: E402

LOOPBACK = "127.0.0.1"
FLEET = "bench"
OPERATOR = "operator"
SOAK_S = 0.001
POLL_S = 0.5  # run_rollout's default; it also decides again whenever a device reports
ARMS = ("rollout", "all-at-once")
WORDS = ["[PAD]", "[UNK]", "good", "bad", "fine", "movie", "fedge", "health", "check", "model"]


# -- the broker -----------------------------------------------------------------------------------


@dataclass
class Broker:
    """A mosquitto of our own: TLS only, passwords, per-device ACL, no persistence."""

    workdir: Path
    devices: Sequence[str]
    port: int = field(default_factory=free_port)
    passwords: dict[str, str] = field(default_factory=dict)
    certs: CertPaths | None = None
    process: ManagedProcess | None = None

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        passwd_tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        if not Path(binary).exists() or not Path(passwd_tool).exists():
            raise SystemExit(
                "mosquitto and mosquitto_passwd are needed (apt-get install mosquitto)"
            )
        self.certs = generate_federation_certs(self.workdir / "pki", hosts=(LOOPBACK,))
        self.passwords = {OPERATOR: secrets.token_urlsafe(12)}
        self.passwords.update({device: secrets.token_urlsafe(12) for device in self.devices})
        passwd = self.workdir / "passwd"
        passwd.write_text("".join(f"{u}:{p}\n" for u, p in self.passwords.items()))
        passwd.chmod(0o600)
        subprocess.run([passwd_tool, "-U", str(passwd)], check=True, capture_output=True)
        acl = self.workdir / "acl"
        # A device's username is its id: %u confines it to fedge/v1/<fleet>/<its id>/#.
        acl.write_text(
            f"user {OPERATOR}\ntopic readwrite fedge/v1/#\n\n"
            f"pattern readwrite fedge/v1/{FLEET}/%u/#\n"
        )
        lines = [
            f"listener {self.port} {LOOPBACK}",
            f"cafile {self.certs.ca_cert}",
            f"certfile {self.certs.server_cert}",
            f"keyfile {self.certs.server_key}",
            "tls_version tlsv1.2",
            "allow_anonymous false",
            f"password_file {passwd}",
            f"acl_file {acl}",
            "persistence false",
            "max_queued_messages 10000",
            f"log_dest file {self.workdir / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
        ]
        if os.getuid() == 0:  # mosquitto would switch to user "mosquitto", who cannot read the keys
            lines.append(f"user {pwd.getpwuid(os.getuid()).pw_name}")
        config = self.workdir / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        self.process = ManagedProcess(
            [binary, "-c", str(config)], log_path=self.workdir / "stderr.log", name="mosquitto"
        ).start()
        try:
            self.process.wait_for_port(self.port, timeout=20)
        except FedgeError as exc:
            raise SystemExit(f"{exc}; see {self.workdir / 'mosquitto.log'}") from exc

    def peak_rss_mb(self) -> float | None:
        if self.process is None:
            return None
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    @property
    def operator(self) -> BrokerEndpoint:
        assert self.certs is not None
        return BrokerEndpoint(
            host=LOOPBACK,
            port=self.port,
            ca_file=self.certs.ca_cert,
            username=OPERATOR,
            password=self.passwords[OPERATOR],
        )


# -- artifacts and their store --------------------------------------------------------------------


def build_artifact(directory: Path, key: KeyPair, *, version: str, favour: int) -> Path:
    """A signed text classifier following the export contract, as small as one can be."""
    directory.mkdir(parents=True)
    vocab = {word: index for index, word in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))  # noqa: S106
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(directory / TOKENIZER_FILE))
    rng = np.random.default_rng(len(version))
    embeddings = rng.normal(0, 0.1, (len(WORDS), 2)).astype(np.float32)
    bias = np.zeros(2, dtype=np.float32)
    bias[favour] = 5.0
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["embeddings", "input_ids"], ["tokens"]),
            helper.make_node("ReduceMean", ["tokens"], ["pooled"], axes=[1], keepdims=0),
            helper.make_node("Add", ["pooled", "bias"], ["logits"]),
        ],
        "bench-classifier",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[
            numpy_helper.from_array(embeddings, "embeddings"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(directory / MODEL_FILE))
    inference = inference_document(
        max_length=16, labels=["negative", "positive"], inputs=INPUT_NAMES[:1]
    )
    (directory / INFERENCE_FILE).write_text(json.dumps(inference))
    sign_artifact(directory, key, name="bench-cls", version=version, format="onnx-fp32")
    return directory


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def http_store(root: Path) -> Iterator[str]:
    """Serve ``root`` on loopback (playing the presigned URLs of a cloud store)."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer((LOOPBACK, 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def desired_for(artifact: Path, base_url: str) -> DesiredState:
    manifest = Manifest.from_bytes((artifact / MANIFEST_NAME).read_bytes())
    prefix = f"{base_url}/{artifact.name}"
    replica = {
        "manifest": f"{prefix}/{MANIFEST_NAME}",
        "signature": f"{prefix}/{SIGNATURE_NAME}",
        "files": {entry.path: f"{prefix}/{entry.path}" for entry in manifest.files},
    }
    urls = {"artifact": manifest.name, "version": manifest.version, "replicas": [replica]}
    return desired_for_artifact(artifact, urls)


# -- watching the fleet ---------------------------------------------------------------------------


class Monitor:
    """The operator's eyes: when each device's ``desired`` and ``SUCCEEDED`` were seen."""

    def __init__(self, broker: Broker) -> None:
        assert broker.certs is not None
        self._cond = threading.Condition()
        self.online: set[str] = set()
        self.desired_at: dict[tuple[str, str], float] = {}
        self.succeeded_at: dict[tuple[str, str], float] = {}
        self.failed: dict[tuple[str, str], str] = {}
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"bench-monitor-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv5,
        )
        client.username_pw_set(OPERATOR, broker.passwords[OPERATOR])
        client.tls_set(ca_certs=str(broker.certs.ca_cert), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        self.client = client
        self.port = broker.port

    def __enter__(self) -> Monitor:
        self.client.connect(LOOPBACK, self.port, keepalive=30)
        self.client.loop_start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, *_args: Any) -> None:
        for channel in ("desired", "reported", "status"):
            client.subscribe(f"fedge/v1/{FLEET}/+/{channel}", qos=1)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        parts = message.topic.split("/")
        if len(parts) != 5 or not message.payload:
            return
        device, channel = parts[3], parts[4]
        doc = json.loads(message.payload)
        with self._cond:
            if channel == "status":
                (self.online.add if doc["state"] == "online" else self.online.discard)(device)
            elif channel == "desired" and not message.retain:
                self.desired_at.setdefault((device, doc["deploymentId"]), now)
            elif channel == "reported" and doc.get("deploymentId"):
                key = (device, doc["deploymentId"])
                if doc["phase"] == "SUCCEEDED":
                    self.succeeded_at.setdefault(key, now)
                elif doc["phase"] in ("FAILED", "ROLLED_BACK"):
                    self.failed[key] = f"{doc['phase']}: {doc.get('error')}"
            self._cond.notify_all()

    def wait(self, what: str, done: Any, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done():
                if self.failed:
                    raise SystemExit(f"a device failed: {self.failed}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
                self._cond.wait(0.2)


# -- the arms -------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def deploy(
    arm: str,
    broker: Broker,
    monitor: Monitor,
    desired: DesiredState,
    devices: Sequence[str],
    *,
    timeout: float,
) -> dict[str, float]:
    deployment = desired.deployment_id
    controller_done: float | None = None
    if arm == "rollout":
        spec = RolloutSpec.model_validate(
            {
                "canary": {"devices": 1},
                "soakTime": SOAK_S,
                "batchSize": len(devices),
                "timeout": timeout,
            }
        )
        state = run_rollout(
            broker.operator, FLEET, desired, spec, devices=devices, discover=1.0, poll=POLL_S
        )
        controller_done = time.monotonic()
        if state.stage != "succeeded":
            raise SystemExit(f"rollout {state.stage}: {state.reason}")
    else:
        with FleetClient(broker.operator, FLEET) as connection:
            connection.desire_all(dict.fromkeys(devices, desired))
    keys = [(device, deployment) for device in devices]
    monitor.wait(
        f"{len(devices)} devices on {desired.version}",
        lambda: all(key in monitor.succeeded_at and key in monitor.desired_at for key in keys),
        timeout=timeout,
    )
    sent = [monitor.desired_at[key] for key in keys]
    done = [monitor.succeeded_at[key] for key in keys]
    first = min(sent)
    own = [end - start for start, end in zip(sent, done, strict=True)]
    from_start = [end - first for end in done]
    figures = {
        "total_s": max(done) - first,
        "publish_s": max(sent) - first,
        "p50_device_s": percentile(own, 50),
        "p95_device_s": percentile(own, 95),
        "p50_from_first_s": percentile(from_start, 50),
        "p95_from_first_s": percentile(from_start, 95),
    }
    if controller_done is not None:
        canary = sorted(devices)[0]
        figures["canary_s"] = monitor.succeeded_at[(canary, deployment)] - first
        figures["controller_returned_s"] = controller_done - first
    return figures


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rollout_benchmark(agents: int, *, quick: bool) -> dict[str, Any]:
    """Start a broker and ``agents`` agents, deploy through both arms, return the figures.

    ``quick`` runs each arm once; otherwise twice, in ABBA order (rollout, all-at-once,
    all-at-once, rollout) so that drift over the run falls on both arms alike.
    """
    if agents < 2:
        raise ValueError("agents must be at least 2 (a canary and the rest)")
    order = list(ARMS) if quick else [ARMS[0], ARMS[1], ARMS[1], ARMS[0]]
    devices = [f"dev-{index:03d}" for index in range(agents)]
    timeout = 120.0 + 2.0 * agents
    logging.getLogger("edge_agent").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="fedge-bench-rollout-") as temp:
        work = Path(temp)
        key = generate_keypair()
        store = work / "store"
        artifacts = [
            build_artifact(store / f"v{n}", key, version=f"{n}.0.0", favour=n % 2)
            for n in range(1, len(order) + 2)
        ]
        broker = Broker(work / "broker", devices)
        broker.workdir.mkdir()
        fleet: list[Agent] = []
        try:
            broker.start()
            assert broker.certs is not None
            with http_store(store) as base_url, Monitor(broker) as monitor:
                started = time.monotonic()
                for device in devices:
                    settings = AgentSettings(
                        device_id=device,
                        fleet=FLEET,
                        broker=BrokerSettings(
                            host=LOOPBACK,
                            port=broker.port,
                            ca_file=broker.certs.ca_cert,
                            username=device,
                            password=broker.passwords[device],
                        ),
                        trusted_keys=(key.public,),
                        state_dir=work / "agents" / device,
                    )
                    agent = Agent(settings, inference_threads=1)
                    fleet.append(agent)
                    agent.start()
                monitor.wait(
                    f"{agents} agents online",
                    lambda: monitor.online >= set(devices),
                    timeout=timeout,
                )
                start_s = time.monotonic() - started
                rss_started = peak_rss_mb()
                # Warm-up: every agent's first install (a cold path), not counted.
                warmup = deploy(
                    "all-at-once",
                    broker,
                    monitor,
                    desired_for(artifacts[0], base_url),
                    devices,
                    timeout=timeout,
                )
                runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
                for arm, artifact in zip(order, artifacts[1:], strict=True):
                    desired = desired_for(artifact, base_url)
                    runs[arm].append(
                        deploy(arm, broker, monitor, desired, devices, timeout=timeout)
                    )
                versions = {agent.current.version for agent in fleet if agent.current}
        finally:
            with ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(lambda agent: agent.stop(), fleet))
            broker_rss = broker.peak_rss_mb()
            broker.stop()
    summary = {
        arm: {name: statistics.median(run[name] for run in runs[arm]) for name in runs[arm][0]}
        for arm in ARMS
    }
    return {
        "agents": agents,
        "quick": quick,
        "order": order,
        "soak_s": SOAK_S,
        "poll_s": POLL_S,
        "start_agents_s": start_s,
        "warmup_first_install": warmup,
        "arms": summary,
        "runs": runs,
        "rollout_over_all_at_once": summary["rollout"]["total_s"]
        / summary["all-at-once"]["total_s"],
        "final_versions": sorted(versions),
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_start_mb": rss_started,
        "broker_peak_rss_mb": broker_rss,
        "cpus": os.cpu_count(),
    }


def print_table(result: dict[str, Any]) -> None:
    arms = result["arms"]
    base = arms["all-at-once"]["total_s"]
    print(
        f"\nedge rollout to {result['agents']} agents (threads of one process), one mosquitto "
        f"with TLS, passwords and ACL; soak {result['soak_s']:g} s, poll {result['poll_s']:g} s"
    )
    header = (
        f"{'arm':<13}{'to all (s)':>11}{'vs plain':>10}{'device p50':>12}{'device p95':>12}"
        f"{'done p50':>10}{'done p95':>10}{'publish (s)':>12}{'canary (s)':>12}"
    )
    print(header)
    print("-" * len(header))
    for arm in ARMS:
        row = arms[arm]
        canary = f"{row['canary_s']:.2f}" if "canary_s" in row else "-"
        print(
            f"{arm:<13}{row['total_s']:>11.2f}{row['total_s'] / base:>9.2f}x"
            f"{row['p50_device_s']:>12.2f}{row['p95_device_s']:>12.2f}"
            f"{row['p50_from_first_s']:>10.2f}{row['p95_from_first_s']:>10.2f}"
            f"{row['publish_s']:>12.2f}{canary:>12}"
        )
    warm = result["warmup_first_install"]
    print(
        f"first install (warm-up, all at once): {warm['total_s']:.2f} s to all; "
        f"agents online after {result['start_agents_s']:.2f} s"
    )
    rss = result["broker_peak_rss_mb"]
    print(
        f"peak RSS: {result['peak_rss_mb']:.0f} MB this process "
        f"({result['rss_after_start_mb']:.0f} MB once the agents were up), "
        f"mosquitto {rss:.1f} MB"
        if rss is not None
        else "mosquitto -"
    )
    print(
        "device: its own desired -> its SUCCEEDED; done: first desired -> a device's SUCCEEDED "
        f"(median of {len(result['order']) // 2} run(s) per arm)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=None, help="agents (100; --quick 20)")
    parser.add_argument("--quick", action="store_true", help="20 agents, one run per arm")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = parser.parse_args(argv)
    agents = args.agents or (20 if args.quick else 100)
    if agents < 2:
        parser.error("--agents must be at least 2")
    result = rollout_benchmark(agents, quick=args.quick)
    print_table(result)
    if args.json is not None:
        from fedge.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
