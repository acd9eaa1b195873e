"""Round time and coordinator memory against the number of holders, fedge beside bare Flower.

Two engines, each case run for fedge and for bare Flower (``bench/scale_flower_app.py``: FedAvg
and a ClientApp that returns arrays of the same names and shapes as fedge's trainable weights,
with no model, DP, ledger, evaluation or checkpoint) on the same settings: ``perRound`` holders
sampled a round (and that many needed), a tiny random BERT with LoRA for fedge, a few examples
per holder.

* **Simulation** (Flower's simulation engine, Ray) with 10, 100 and 1,000 holders (``--holders``).
  Each case runs in a fresh child process (its own Ray instance, kept on 127.0.0.1), so its peak
  RSS is its own: the *coordinator* is that driver process, which holds the ServerApp,
  Flower's in-memory stand-in for the SuperLink and, loaded there by Flower's runtime, the
  ClientApp's module (the kernel's ``VmHWM``, an exact peak). The
  CPUs are shared so that the ``perRound`` sampled holders run at once (``cpus / perRound`` each:
  as many Ray actors as holders in a round, whatever the population), as ``fedge train`` does.
* **Deployment Engine** with ``--supernodes`` (20) real ``flower-supernode`` processes on loopback,
  TLS, each with its own data file and state folder (fedge's node config; Flower's stock
  subprocess isolation, one ``flwr-clientapp`` process per message), and a fresh
  ``flower-superlink`` for each stack. fedge's run goes through ``fedge train --superlink``; the
  bare one through ``flwr run``. The *coordinator* is the SuperLink's process tree (the
  SuperLink, its ServerApp SuperExec and the ``flwr-serverapp`` of the run), sampled every
  0.2 s; the peak of the sum is reported. Runs start once every SuperNode is online.

*Round time* is the ServerApp's own: from sending a round's train messages to the aggregate
(fedge's ``metrics.jsonl`` ``seconds``; the bare FedAvg timed the same way), averaged over the
rounds after the first and before the last: the first loads models and asks for the initial
weights, and fedge's last also carries the final evaluation of the whole federation. *All
processes* is the peak of the summed RSS of every process of the case (the holders' Ray actors
or SuperNodes and ClientApps included; shared pages counted once per process, so an upper
bound).

On one machine the holders' work competes with the coordinator for the same CPUs: with 2 cores
a fedge round is mostly ``perRound`` DP-SGD steps and, in the Deployment Engine, ``perRound``
fresh ClientApp processes importing torch. The figures show how the coordinator scales with the
population (sampling keeps the work per round constant), not what a federation of real
machines would see.

Run: ``.venv/bin/python bench/scale.py [--holders 10,100,1000] [--supernodes 20] [--rounds 5]
[--per-round 10] [--stacks fedge,flower] [--json PATH]``; ``--quick`` is ``--holders 10
--supernodes 0 --rounds 3`` (75 s on an idle 2-core CPU). Add ``--keep`` to keep the scratch
folder. The full run took 17 minutes on an idle 2-core CPU (the Deployment Engine's fedge case,
20 SuperNodes and cold ClientApps, is 6.5 of them), over 40 under a load average of 20.

Figures beside Flower's are for the same engine: the simulation's ``InMemoryGrid`` polls for
replies every 0.1 s and a SuperLink's ``Grid`` every 3 s (fedge's round loop polls every 0.1 s
in both), so bare rounds come in multiples of those.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (str(ROOT), str(BENCH)):  # the repo's packages; scale_flower_app for Ray workers
    if _path not in sys.path:
        sys.path.insert(0, _path)

from fedge.process import LOOPBACK, free_port  # noqa: E402
from tests.support.superlink import tls_ready  # noqa: E402

STACKS = ("fedge", "flower")
BIN = Path(sys.executable).parent
PAGE = os.sysconf("SC_PAGE_SIZE")
# Ray keeps every process on 127.0.0.1 (otherwise it swaps a loopback address for the machine's
# network address and its GCS listens on every interface); no usage report, no GPU juggling.
CHILD_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Round time and coordinator RSS against the number of holders: simulation "
        "and Deployment Engine, fedge beside bare Flower.",
    )
    parser.add_argument("--holders", default="10,100,1000", help="simulated holders per case")
    parser.add_argument(
        "--supernodes", type=int, default=20, help="real SuperNodes (0: no Deployment Engine)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds per run (5)")
    parser.add_argument("--per-round", type=int, default=10, help="holders sampled a round")
    parser.add_argument("--examples", type=int, default=20, help="examples per holder (20)")
    parser.add_argument("--stacks", default="fedge,flower", help="fedge, flower or both")
    parser.add_argument("--quick", action="store_true", help="--holders 10 --supernodes 0")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return args
    if args.quick:
        args.holders, args.supernodes = "10", 0
        args.rounds = args.rounds or 3
    args.rounds = args.rounds or 5
    try:
        args.holders = _sizes(args.holders)
    except ValueError:
        parser.error("--holders: a comma-separated list of numbers, e.g. 10,100,1000")
    args.stacks = [stack.strip() for stack in args.stacks.split(",") if stack.strip()]
    if not args.stacks or any(stack not in STACKS for stack in args.stacks):
        parser.error(f"--stacks: a comma-separated list of {', '.join(STACKS)}")
    if args.rounds < 3:
        parser.error("--rounds: at least 3 (the first and the last are not averaged)")
    if args.per_round < 1 or args.examples < 10 or args.supernodes < 0:
        parser.error("--per-round at least 1, --examples at least 10, --supernodes 0 or more")
    small = [n for n in [*args.holders, args.supernodes or args.per_round] if n < args.per_round]
    if small:
        parser.error(f"every population must be at least --per-round {args.per_round}: {small}")
    return args


# --------------------------------------------------------------------------------------------
# Memory


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, RSS in bytes) of a live process; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), int(statm.split()[1]) * PAGE


def peak_rss(pid: int) -> int:
    """The kernel's high-water mark of one process's RSS (``VmHWM``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmHWM")


@dataclass
class TreeSampler:
    """Samples the summed RSS of process trees every ``interval`` s, in a thread; keeps peaks.

    ``groups`` name the roots whose trees are summed separately (``coordinator``: the SuperLink;
    ``all``: everything the case started). A tree is found anew at each sample from ``/proc``,
    so a ServerApp or ClientApp process that lives for one run is counted while it lives.
    """

    groups: dict[str, list[int]]
    interval: float = 0.2
    peaks: dict[str, int] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)  # most processes seen at once
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        table = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (found := _stat(int(entry.name))) is not None:
                table[int(entry.name)] = found
        children: dict[int, list[int]] = {}
        for pid, (parent, _rss) in table.items():
            children.setdefault(parent, []).append(pid)
        for name, roots in self.groups.items():
            seen: set[int] = set()
            todo = [root for root in roots if root in table]
            while todo:
                pid = todo.pop()
                if pid not in seen:
                    seen.add(pid)
                    todo.extend(children.get(pid, []))
            total = sum(table[pid][1] for pid in seen)
            self.peaks[name] = max(self.peaks.get(name, 0), total)
            self.processes[name] = max(self.processes.get(name, 0), len(seen))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeSampler:
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


def _mb(value: int) -> float:
    return value / 2**20


# --------------------------------------------------------------------------------------------
# Inputs


def policy_text(model: Path, *, rounds: int, per_round: int, population: int) -> str:
    """perRound holders a round, all of them needed; the final evaluation asks as many."""
    evaluate = per_round / population
    return f"""apiVersion: fedge/v1
kind: FederationPolicy
metadata: {{name: scale}}
spec:
  model: {{source: {json.dumps(str(model))}, numLabels: 2, maxLength: 24}}
  rounds: {rounds}
  clients: {{perRound: {per_round}, minimum: {per_round}, fractionEvaluate: {evaluate!r}}}
  roundTimeout: 600
  aggregation: {{strategy: fedavg}}
  training: {{batchSize: 16, learningRate: 0.01}}
  privacy: {{targetEpsilon: 8.0, delta: 1.0e-5}}
  lora: {{rank: 4, alpha: 8}}
"""


def trainable_shapes(model: Path) -> dict[str, list[int]]:
    """The names and shapes of what fedge sends a holder: LoRA adapters and the head."""
    from client.contract.model import get_trainable, load_trainable_model
    from policies.federation import LoraSpec

    loaded = load_trainable_model(str(model), num_labels=2, lora=LoraSpec(rank=4, alpha=8))
    return {name: list(array.shape) for name, array in get_trainable(loaded.model).items()}


def holder_files(scratch: Path, population: int, examples: int) -> list[Path]:
    """``client-N`` files for ``population`` holders (the width of N follows the count)."""
    from client.data.synthetic import generate, write_synthetic

    folder = scratch / f"data-{population}"
    if not folder.is_dir():
        split = generate(num_clients=population, examples_per_client=examples, seed=0, heldout=0)
        write_synthetic(split, folder)
    return sorted(folder.glob("client-*"))


# --------------------------------------------------------------------------------------------
# Simulation: one child process per case


def run_child(spec_file: Path) -> int:
    """Inside the child: run one simulated case, write its figures next to the spec."""
    spec = json.loads(spec_file.read_text())
    result_file = spec_file.with_suffix(".result.json")
    started = time.monotonic()
    per_round, holders = int(spec["per_round"]), int(spec["holders"])
    share = (os.cpu_count() or 1) / per_round  # every sampled holder at once
    if spec["stack"] == "fedge":
        from server.federation.metrics import MetricsLog
        from server.federation.train import load_plan, train_simulated

        plan = load_plan(Path(spec["policy"]), workdir=Path(spec["workdir"]), run_id="scale")
        train_simulated(
            plan, num_clients=holders, data_dir=Path(spec["data"]), cpus_per_client=share
        )
        records = MetricsLog(Path(spec["workdir"]) / "metrics.jsonl").read()
        seconds = [float(r["seconds"]) for r in records]
        replies = [len(r["clients"]) for r in records]
        statuses = [str(r["status"]) for r in records]
    else:
        from flwr.simulation import run_simulation
        from scale_flower_app import BareSettings, client_app, make_server_app

        timing = Path(spec["workdir"]) / "timing.json"
        timing.parent.mkdir(parents=True, exist_ok=True)
        settings = BareSettings(
            shapes=spec["shapes"],
            holders=holders,
            per_round=per_round,
            rounds=int(spec["rounds"]),
            timing_file=timing,
        )
        run_simulation(
            server_app=make_server_app(settings),
            client_app=client_app,
            num_supernodes=holders,
            backend_config={
                "client_resources": {"num_cpus": share, "num_gpus": 0.0},
                "init_args": {"include_dashboard": False},
            },
        )
        figures = json.loads(timing.read_text())
        seconds, replies = figures["seconds"], figures["replies"]
        statuses = ["ok" if n >= per_round else "short" for n in replies]
    result_file.write_text(
        json.dumps(
            {
                "round_seconds": seconds,
                "replies": replies,
                "statuses": statuses,
                "coordinator_peak_rss": peak_rss(os.getpid()),
                "run_seconds": time.monotonic() - started,
            }
        )
        + "\n"
    )
    return 0


def simulate_case(
    scratch: Path, args: argparse.Namespace, *, stack: str, holders: int, inputs: dict[str, Any]
) -> dict[str, Any]:
    folder = scratch / f"sim-{stack}-{holders}"
    folder.mkdir()
    policy = folder / "federation.yaml"
    policy.write_text(
        policy_text(
            inputs["model"], rounds=args.rounds, per_round=args.per_round, population=holders
        )
    )
    holder_files(scratch, holders, args.examples)
    spec = folder / "case.json"
    spec.write_text(
        json.dumps(
            {
                "stack": stack,
                "holders": holders,
                "per_round": args.per_round,
                "rounds": args.rounds,
                "policy": str(policy),
                "workdir": str(folder / "run"),
                "data": str(scratch / f"data-{holders}"),
                "shapes": inputs["shapes"],
            }
        )
    )
    log = folder / "child.log"
    started = time.monotonic()
    with log.open("wb") as out:
        child = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(spec)],
            env={**os.environ, **CHILD_ENV},
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with TreeSampler({"all": [child.pid]}, interval=0.5) as sampler:
            code = child.wait(timeout=3600)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    if code != 0:
        raise RuntimeError(f"simulation {stack} x{holders} failed:\n{_tail(log)}")
    result: dict[str, Any] = json.loads(spec.with_suffix(".result.json").read_text())
    result["all_peak_rss"] = sampler.peaks["all"]
    result["all_processes"] = sampler.processes["all"]
    result["case_seconds"] = time.monotonic() - started
    return result


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------
# Deployment Engine


@dataclass
class Federation:
    """A SuperLink and its SuperNodes, all started here and all stopped by ``close``."""

    folder: Path
    superlink: Any = None  # fedge.process.ManagedProcess
    address: str = ""
    supernodes: list[Any] = field(default_factory=list)  # SuperNodeProcess

    def close(self) -> None:
        for node in self.supernodes:
            node.stop()
        if self.superlink is not None:
            self.superlink.stop()


@contextlib.contextmanager
def federation(
    folder: Path, certs: Any, *, files: Sequence[Path], policy: Path
) -> Iterator[Federation]:
    """A TLS SuperLink on loopback and one stock SuperNode per data file, every one online."""
    from client.node.supernode import SuperNodeProcess, supernode_command
    from fedge.errors import FederationError
    from fedge.process import ManagedProcess
    from server.federation.deployment_engine import (
        CONNECTION,
        flower_environment,
        flwr_json,
        superlink_command,
        write_flwr_home,
    )

    fed = Federation(folder)
    try:
        env = flower_environment(folder / "superlink-home")
        port = free_port()
        fed.superlink = ManagedProcess(
            superlink_command(certs, host=LOOPBACK, port=port),
            log_path=folder / "superlink.log",
            name="flower-superlink",
            env=env,
            cwd=folder,
            error=FederationError,
        ).start()
        fed.address = f"{LOOPBACK}:{port}"
        deadline = time.monotonic() + 60
        while not tls_ready(port, certs.ca_cert):
            if not fed.superlink.running() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the SuperLink did not come up:\n{_tail(folder / 'superlink.log')}"
                )
            time.sleep(0.2)
        for data in files:
            state = folder / "holders" / data.stem
            command = supernode_command(
                superlink=fed.address,
                root_certificates=certs.ca_cert,
                runtime_port=free_port(),
                data_path=data,
                state_dir=state,
                client_name=data.stem,
                policy_path=policy,
            )
            fed.supernodes.append(SuperNodeProcess(command, state_dir=state).start())
        home = folder / "operator-flwr"
        write_flwr_home(home, address=fed.address, root_certificates=certs.ca_cert)
        deadline = time.monotonic() + 300
        while True:
            payload, _ = flwr_json(
                ["supernode", "ls", CONNECTION, "--format", "json"], flwr_home=home, flwr="flwr"
            )
            online = [n for n in payload.get("nodes") or [] if n.get("status") == "online"]
            if len(online) >= len(files):
                break
            dead = [n for n in fed.supernodes if not n.running()]
            if dead or time.monotonic() > deadline:
                why = dead[0].log_text()[-3000:] if dead else "timed out"
                raise RuntimeError(f"{len(online)} of {len(files)} SuperNodes online:\n{why}")
            time.sleep(1.0)
        yield fed
    finally:
        fed.close()


def deploy_case(
    scratch: Path, args: argparse.Namespace, *, stack: str, inputs: dict[str, Any]
) -> dict[str, Any]:
    from server.federation.deployment_engine import submit_run, wait_for_run, write_flwr_home

    nodes = args.supernodes
    folder = scratch / f"deploy-{stack}-{nodes}"
    folder.mkdir()
    policy = folder / "federation.yaml"
    policy.write_text(
        policy_text(inputs["model"], rounds=args.rounds, per_round=args.per_round, population=nodes)
    )
    files = holder_files(scratch, nodes, args.examples)
    started = time.monotonic()
    with federation(folder, inputs["certs"], files=files, policy=policy) as fed:
        online = time.monotonic() - started
        roots = {
            "coordinator": [fed.superlink.pid],
            "all": [fed.superlink.pid, *(node.pid for node in fed.supernodes)],
        }
        run_started = time.monotonic()
        with TreeSampler(roots, interval=0.2) as sampler:
            if stack == "fedge":
                workdir = folder / "coordinator"
                train = subprocess.run(
                    [
                        str(BIN / "fedge"),
                        "train",
                        "--policy",
                        str(policy),
                        "--superlink",
                        fed.address,
                        "--ca",
                        str(inputs["certs"].ca_cert),
                        "--workdir",
                        str(workdir),
                        "--run-id",
                        "scale",
                        "--timeout",
                        str(600 * args.rounds),
                    ],
                    env={**os.environ, **CHILD_ENV},
                    capture_output=True,
                    text=True,
                    timeout=600 * args.rounds + 120,
                    check=False,
                )
                if train.returncode != 0:
                    raise RuntimeError(
                        f"fedge train failed:\n{train.stdout[-3000:]}\n{train.stderr[-3000:]}"
                    )
                records = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
                seconds = [float(r["seconds"]) for r in records]
                replies = [len(r["clients"]) for r in records]
                statuses = [str(r["status"]) for r in records]
            else:
                app = folder / "app"
                app.mkdir()
                shutil.copyfile(BENCH / "scale_flower_app.py", app / "scale_flower_app.py")
                timing = folder / "timing.json"
                (app / "pyproject.toml").write_text(
                    _bare_pyproject(
                        shapes=inputs["shapes"],
                        holders=nodes,
                        per_round=args.per_round,
                        rounds=args.rounds,
                        timing=timing,
                    )
                )
                home = folder / "bare-flwr"
                write_flwr_home(
                    home, address=fed.address, root_certificates=inputs["certs"].ca_cert
                )
                run_id = submit_run(app, flwr_home=home)
                wait_for_run(run_id, flwr_home=home, timeout=600 * args.rounds)
                figures = json.loads(timing.read_text())
                seconds, replies = figures["seconds"], figures["replies"]
                statuses = ["ok" if n >= args.per_round else "short" for n in replies]
        run_seconds = time.monotonic() - run_started
    return {
        "round_seconds": seconds,
        "replies": replies,
        "statuses": statuses,
        "coordinator_peak_rss": sampler.peaks["coordinator"],
        "coordinator_processes": sampler.processes["coordinator"],
        "all_peak_rss": sampler.peaks["all"],
        "all_processes": sampler.processes["all"],
        "run_seconds": run_seconds,
        "startup_seconds": online,
        "case_seconds": time.monotonic() - started,
    }


def _bare_pyproject(
    *, shapes: dict[str, list[int]], holders: int, per_round: int, rounds: int, timing: Path
) -> str:
    config = {
        "shapes": json.dumps(shapes),
        "holders": holders,
        "per-round": per_round,
        "rounds": rounds,
        "timing-file": str(timing),
        "round-timeout": 600.0,
    }
    lines = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        'name = "bare-scale"',
        'version = "1.0.0"',
        'license = "Apache-2.0"',
        "dependencies = []",
        "",
        "[tool.hatch.build.targets.wheel]",
        'packages = ["."]',
        "",
        "[tool.flwr.app]",
        'publisher = "bench"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "scale_flower_app:server_app"',
        'clientapp = "scale_flower_app:client_app"',
        "",
        "[tool.flwr.app.config]",
    ]
    for key, value in config.items():
        lines.append(f"{json.dumps(key)} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Figures


def summarize(result: dict[str, Any], *, per_round: int) -> dict[str, Any]:
    """Mean round time over rounds 2..R-1; every round must have had ``per_round`` replies."""
    seconds = result["round_seconds"]
    bad = [
        (i + 1, status, n)
        for i, (status, n) in enumerate(zip(result["statuses"], result["replies"], strict=True))
        if status != "ok" or n < per_round
    ]
    middle = seconds[1:-1]
    return {
        **result,
        "mean_round_seconds": statistics.fmean(middle) if middle else None,
        "stdev_round_seconds": statistics.stdev(middle) if len(middle) > 1 else 0.0,
        "incomplete_rounds": bad,
    }


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for result in results:
        rows.setdefault((result["engine"], result["holders"]), {})[result["stack"]] = result

    def cell(result: dict[str, Any] | None, key: str, scale: float = 1.0, fmt: str = ".2f") -> str:
        if result is None or result.get(key) is None:
            return "-"
        return f"{result[key] / scale:{fmt}}"

    def ratio(pair: dict[str, dict[str, Any]], key: str) -> str:
        fedge, flower = pair.get("fedge"), pair.get("flower")
        if not fedge or not flower or not fedge.get(key) or not flower.get(key):
            return "-"
        return f"{fedge[key] / flower[key]:.1f}x"

    lines = [
        f"perRound {args.per_round} (minimum {args.per_round}), {args.rounds} rounds, "
        f"{args.examples} examples per holder; round = mean of rounds 2..{args.rounds - 1}; "
        "RSS peaks in MiB",
        "",
        "| engine | holders | round s fedge | round s Flower | fedge/Flower | coordinator RSS "
        "fedge | coordinator RSS Flower | all processes RSS fedge | all processes RSS Flower |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (engine, holders), pair in rows.items():  # in the order the cases ran
        fedge, flower = pair.get("fedge"), pair.get("flower")
        lines.append(
            f"| {engine} | {holders} | {cell(fedge, 'mean_round_seconds')} | "
            f"{cell(flower, 'mean_round_seconds')} | {ratio(pair, 'mean_round_seconds')} | "
            f"{cell(fedge, 'coordinator_peak_rss', 2**20, '.0f')} | "
            f"{cell(flower, 'coordinator_peak_rss', 2**20, '.0f')} | "
            f"{cell(fedge, 'all_peak_rss', 2**20, '.0f')} | "
            f"{cell(flower, 'all_peak_rss', 2**20, '.0f')} |"
        )
    incomplete = [
        f"{r['engine']} {r['holders']} {r['stack']}: rounds {r['incomplete_rounds']}"
        for r in results
        if r["incomplete_rounds"]
    ]
    if incomplete:
        lines += ["", "rounds short of perRound replies: " + "; ".join(incomplete)]
    return "\n".join(lines)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so the ``finally`` below stops everything either way."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def leftovers(scratch: Path, *, wait: float = 15.0) -> list[str]:
    """Processes whose command line names the scratch folder, still running after ``wait`` s.

    A SuperNode's or the SuperLink's SuperExec runs in a session of its own and leaves by
    itself once it sees its parent gone (``--parent-pid``), a moment after the group was
    stopped: only what is still there after the wait is reported.
    """
    marker = str(scratch).encode()
    deadline = time.monotonic() + wait
    while True:
        found = []
        for path in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):  # the process ended while we looked
                cmdline = path.read_bytes()
                if marker in cmdline and int(path.parent.name) != os.getpid():
                    shown = cmdline.replace(b"\0", b" ")[:160].decode(errors="replace")
                    found.append(f"{path.parent.name}: {shown}")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return run_child(args.child)
    os.environ.update(CHILD_ENV)
    from client.contract.tiny import build_tiny_model
    from fedge.tls import generate_federation_certs

    scratch = Path(tempfile.mkdtemp(prefix="fedge-scale-"))
    results: list[dict[str, Any]] = []
    print(f"scratch {scratch}", flush=True)
    try:
        with terminate_as_interrupt():
            model = build_tiny_model(scratch / "model")
            inputs = {
                "model": model,
                "shapes": trainable_shapes(model),
                "certs": generate_federation_certs(scratch / "certs"),
            }
            cases = [("simulation", n) for n in args.holders]
            if args.supernodes:
                cases.append(("deployment", args.supernodes))
            for engine, holders in cases:
                for stack in args.stacks:
                    print(f"{engine} x{holders} {stack}: running ...", flush=True)
                    if engine == "simulation":
                        raw = simulate_case(
                            scratch, args, stack=stack, holders=holders, inputs=inputs
                        )
                    else:
                        raw = deploy_case(scratch, args, stack=stack, inputs=inputs)
                    result = {
                        "engine": engine,
                        "holders": holders,
                        "stack": stack,
                        **summarize(raw, per_round=args.per_round),
                    }
                    results.append(result)
                    rounds = ", ".join(f"{s:.2f}" for s in result["round_seconds"])
                    print(
                        f"{engine} x{holders} {stack}: rounds {rounds} s; coordinator "
                        f"{_mb(result['coordinator_peak_rss']):.0f} MiB, all "
                        f"{_mb(result['all_peak_rss']):.0f} MiB ({result['all_processes']} "
                        f"processes); {result['case_seconds']:.0f} s",
                        flush=True,
                    )
    except KeyboardInterrupt:
        print("interrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        left = leftovers(scratch)
        if left:
            print("WARNING: processes outlived the bench:\n" + "\n".join(left), file=sys.stderr)
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(markdown(results, args))
    if args.json is not None:
        settings = {
            "holders": args.holders,
            "supernodes": args.supernodes,
            "rounds": args.rounds,
            "per_round": args.per_round,
            "examples": args.examples,
            "cpus": os.cpu_count(),
        }
        args.json.write_text(
            json.dumps({"settings": settings, "results": results}, indent=2) + "\n"
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
