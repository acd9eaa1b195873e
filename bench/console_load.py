"""The console under load while a federation runs: latency, errors, and the rounds' own time.

Issue 15's load target: 50 browser-like clients on loopback polling the overview and each
holding an event stream for 60 s while a federation runs, with a p95 response under 200 ms, no
errors, and the federation's round time unchanged within noise.

What runs, all real and on this machine:

1. Inputs: the tiny random BERT (``client/contract/tiny.py``), synthetic data for 2 holders, and a
   FederationPolicy like the federation tests' (LoRA rank 4, max length 24).
2. Without load: ``fedge train --simulate 2`` (Flower's simulation engine, its own process) runs
   ``--rounds`` rounds into ``runs/baseline``; no console is running.
3. With load: ``fedge console`` (its own process, on 127.0.0.1) serves the folder, and
   ``fedge train`` runs again into ``runs/loaded`` (enough rounds to outlast the load) while
   ``--clients`` clients, each with its own connections and cookie, as a browser tab:
   log in with the token, hold ``/api/events`` open, ``GET /api/overview`` once a second, and on
   a ``change`` event render the overview as the page does (``/api/overview`` and the latest
   run's ``/api/runs/<name>``). Clients start spread over the first second.

Every request's latency (send to full body) is recorded; an error is a status other than 200, a
transport error, or an event stream that ended before the load did. A round's time is the
``seconds`` of its ``metrics.jsonl`` line (the ServerApp's own timing, push to aggregate); round 1
(engine start, first model load) is reported apart and left out of the comparison, and only the
loaded run's rounds that finished while the load was on are compared. "Within noise" is
Welch's t below 2 or the means within 10 %.

Run: ``.venv/bin/python bench/console_load.py [--clients 50] [--seconds 60] [--quick]
[--rounds 8] [--examples 300] [--out PATH] [--keep]``. ``--quick`` is 10 clients for 15 s. The
full run takes about as long as the two federations (a few minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from client.contract.tiny import build_tiny_model  # noqa: E402
from client.data.synthetic import generate, write_synthetic  # noqa: E402
from fedge.process import free_port, stop_group  # noqa: E402

LOOPBACK = "127.0.0.1"
BIN = Path(sys.executable).parent
P95_TARGET_MS = 200.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="fedge console under browser-like load while a simulated federation runs."
    )
    parser.add_argument("--clients", type=int, default=None, help="browser-like clients (50)")
    parser.add_argument("--seconds", type=float, default=None, help="load duration (60)")
    parser.add_argument("--quick", action="store_true", help="10 clients for 15 s")
    parser.add_argument("--rounds", type=int, default=8, help="rounds without load (8)")
    parser.add_argument(
        "--examples", type=int, default=300, help="examples per holder (300: ~1 s rounds)"
    )
    parser.add_argument("--out", type=Path, default=None, metavar="PATH", help="write JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    args.clients = args.clients or (10 if args.quick else 50)
    args.seconds = args.seconds or (15.0 if args.quick else 60.0)
    if args.clients < 1 or args.seconds < 5 or args.rounds < 3 or args.examples < 10:
        parser.error("--clients >= 1, --seconds >= 5, --rounds >= 3, --examples >= 10")
    return args


# --------------------------------------------------------------------------------------------
# The federation and the console, each its own process


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        RAY_USAGE_STATS_ENABLED="0",
    )
    return env


def write_inputs(scratch: Path, examples: int) -> tuple[Path, Path]:
    """(policy file, data folder) for 2 holders on the tiny model."""
    model = build_tiny_model(scratch / "model")
    split = generate(num_clients=2, examples_per_client=examples, seed=0, heldout=0)
    write_synthetic(split, scratch / "data")
    policy = scratch / "federation.yaml"
    policy.write_text(
        f"""apiVersion: fedge/v1
kind: FederationPolicy
metadata: {{name: console-load}}
spec:
  model: {{source: "{model}", maxLength: 24}}
  rounds: 3
  protection: none
  clients: {{perRound: 2, minimum: 2}}
  roundTimeout: 300
  aggregation: {{strategy: fedavg, serverLearningRate: 0.05}}
  training: {{batchSize: 16, learningRate: 0.01}}
  privacy: {{targetEpsilon: 100.0, delta: 1.0e-5}}
  lora: {{rank: 4, alpha: 8}}
""",
        encoding="utf-8",
    )
    return policy, scratch / "data"


def start_federation(
    policy: Path, data: Path, workdir: Path, rounds: int, log: Path
) -> subprocess.Popen[bytes]:
    command = [
        str(BIN / "fedge"), "train", "--policy", str(policy), "--simulate", "2",
        "--data", str(data), "--workdir", str(workdir), "--run-id", workdir.name,
        "--rounds", str(rounds),
    ]  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def finish(process: subprocess.Popen[bytes], log: Path, *, timeout: float) -> None:
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(process)
        raise SystemExit(f"the federation took over {timeout:.0f} s; see {log}") from None
    if code != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise SystemExit(f"fedge train exited {code}:\n{tail}")


def round_seconds(workdir: Path) -> list[tuple[int, float]]:
    path = workdir / "metrics.jsonl"
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            row = json.loads(line)
            if row["status"] != "ok" or row["declined"]:  # a budget ran out: not a full round
                raise SystemExit(f"{path}: round {row['round']} {row['status']} {row['declined']}")
            rows.append((int(row["round"]), float(row["seconds"])))
    return rows


def start_console(workdir: Path, port: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``fedge console`` on the folder; its token once it answers."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(BIN / "fedge"), "console", "--workdir", str(workdir), "--port", str(port)],
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"fedge console exited {process.returncode}; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://{LOOPBACK}:{port}/healthz", timeout=1).status_code == 200:
                token = (workdir / ".console" / "token").read_text(encoding="utf-8").strip()
                return process, token
        time.sleep(0.2)
    stop_group(process)
    raise SystemExit(f"fedge console did not answer within 60 s; see {log}")


# --------------------------------------------------------------------------------------------
# The browser-like clients


@dataclass
class Load:
    """What the clients saw: latency per request kind (ms), errors, events."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    change_events: int = 0
    streams_opened: int = 0
    streams_held: int = 0  # streams still open when the load ended

    def record(self, kind: str, started: float) -> None:
        self.latencies.setdefault(kind, []).append((time.perf_counter() - started) * 1000)


async def _get(client: httpx.AsyncClient, path: str, kind: str, load: Load) -> Any:
    started = time.perf_counter()
    try:
        answer = await client.get(path)
        body = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        load.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
        return None
    load.record(kind, started)
    if answer.status_code != 200:
        load.errors.append(f"{kind}: HTTP {answer.status_code}")
        return None
    return body


async def _render_overview(client: httpx.AsyncClient, load: Load) -> None:
    """What the page's overview does on a change: the overview, then the latest run's rounds."""
    overview = await _get(client, "/api/overview", "overview", load)
    runs = overview.get("runs", []) if isinstance(overview, dict) else []
    if runs:
        await _get(client, f"/api/runs/{runs[-1]['name']}", "run", load)


async def _hold_stream(
    client: httpx.AsyncClient, load: Load, stop_at: float, changed: asyncio.Event
) -> None:
    """Hold ``/api/events`` as EventSource does; reconnect (counted as an error) if it ends."""
    while time.monotonic() < stop_at:
        try:
            async with client.stream(
                "GET", "/api/events", timeout=httpx.Timeout(10, read=None)
            ) as stream:
                if stream.status_code != 200:
                    load.errors.append(f"events: HTTP {stream.status_code}")
                    await asyncio.sleep(2)
                    continue
                load.streams_opened += 1
                try:
                    async for line in stream.aiter_lines():
                        if line == "event: change":
                            load.change_events += 1
                            changed.set()
                finally:
                    if time.monotonic() >= stop_at:
                        load.streams_held += 1
            if time.monotonic() < stop_at:
                load.errors.append("events: the stream ended early")
        except httpx.HTTPError as exc:
            load.errors.append(f"events: {type(exc).__name__}: {exc}")
        await asyncio.sleep(2)  # EventSource's retry (the stream says "retry: 2000")


async def _browser(
    base: str, token: str, load: Load, *, start_at: float, stop_at: float, tls: ssl.SSLContext
) -> None:
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    limits = httpx.Limits(max_connections=6, max_keepalive_connections=6)  # a browser's per host
    # one shared SSL context: httpx would build (and load CAs into) one per client otherwise,
    # tens of milliseconds of this process's loop that would show up as console latency
    async with httpx.AsyncClient(base_url=base, timeout=10, limits=limits, verify=tls) as client:
        started = time.perf_counter()
        try:
            login = await client.post("/api/login", json={"token": token})
        except httpx.HTTPError as exc:
            load.errors.append(f"login: {type(exc).__name__}: {exc}")
            return
        load.record("login", started)
        if login.status_code != 200:
            load.errors.append(f"login: HTTP {login.status_code}")
            return
        changed = asyncio.Event()
        stream = asyncio.create_task(_hold_stream(client, load, stop_at, changed))
        await _render_overview(client, load)
        tick = time.monotonic()
        while time.monotonic() < stop_at:
            tick += 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=max(0.0, tick - time.monotonic()))
            if changed.is_set():  # a change event: render, then wait for the next second
                changed.clear()
                await _render_overview(client, load)
                await asyncio.sleep(max(0.0, tick - time.monotonic()))
            if time.monotonic() < stop_at:
                await _get(client, "/api/overview", "overview", load)
        await asyncio.sleep(0.5)  # let the stream see the end of the load as held
        stream.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stream


async def run_load(base: str, token: str, clients: int, seconds: float) -> Load:
    load = Load()
    now = time.monotonic()
    stop_at = now + seconds
    rng = random.Random(0)
    tls = ssl.create_default_context()
    await asyncio.gather(
        *(
            _browser(base, token, load, start_at=now + rng.random(), stop_at=stop_at, tls=tls)
            for _ in range(clients)
        )
    )
    return load


def cpu_seconds(pids: Sequence[int]) -> float:
    """User and system CPU seconds of these processes (from /proc; 0 for those gone)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def session_pids(session: int) -> list[int]:
    """The processes of a session (the federation's: fedge train, Ray and its workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == session:  # field 6: the session id
                    found.append(int(entry.name))
    return found


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------------------------
# Figures


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = q / 100 * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_rows(load: Load) -> dict[str, dict[str, float]]:
    rows = {}
    every = [v for values in load.latencies.values() for v in values]
    for kind, values in [*sorted(load.latencies.items()), ("all", every)]:
        rows[kind] = {
            "requests": len(values),
            "p50_ms": percentile(values, 50),
            "p95_ms": percentile(values, 95),
            "max_ms": max(values, default=math.nan),
        }
    return rows


def spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "mean_s": statistics.fmean(values) if values else math.nan,
        "sd_s": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def within_noise(a: dict[str, float], b: dict[str, float]) -> tuple[bool, float]:
    """Welch's t of the two means; within noise when |t| < 2 or the means are within 10 %."""
    se = math.sqrt(a["sd_s"] ** 2 / max(a["n"], 1) + b["sd_s"] ** 2 / max(b["n"], 1))
    t = (b["mean_s"] - a["mean_s"]) / se if se > 0 else 0.0
    close = abs(b["mean_s"] - a["mean_s"]) <= 0.10 * a["mean_s"]
    return abs(t) < 2 or close, t


def report(result: dict[str, Any]) -> None:
    print()
    print(
        f"console load: {result['clients']} clients for {result['seconds']:.0f} s "
        f"(loopback, a federation running)"
    )
    print(f"{'requests':<10} {'count':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for kind, row in result["latency"].items():
        print(
            f"{kind:<10} {row['requests']:>7} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} "
            f"{row['max_ms']:>8.1f}"
        )
    print(
        f"errors {len(result['errors'])}; change events received {result['change_events']}; "
        f"streams held to the end {result['streams_held']}/{result['clients']}"
    )
    for error in result["errors"][:10]:
        print(f"  {error}")
    base, loaded = result["rounds"]["without"], result["rounds"]["with"]
    print()
    print(f"{'round time (s)':<22} {'without load':>16} {'with load':>16}")
    print(
        f"{'rounds 2..':<22} {base['mean_s']:>8.2f} ± {base['sd_s']:<5.2f} "
        f"{loaded['mean_s']:>8.2f} ± {loaded['sd_s']:<5.2f}"
    )
    print(f"{'rounds compared':<22} {base['n']:>16} {loaded['n']:>16}")
    print(
        f"{'round 1 (warm-up)':<22} {result['rounds']['first_without']:>16.2f} "
        f"{result['rounds']['first_with']:>16.2f}"
    )
    cpu = result.get("cpu")
    if cpu:
        print(
            f"{'CPU during load':<22} console {cpu['console_s']:.1f} s, load generator "
            f"{cpu['load_generator_s']:.1f} s, federation {cpu['federation_s']:.1f} s "
            f"(of {cpu['cores']} cores x {cpu['seconds']:.0f} s)"
        )
    verdict = result["verdict"]
    print()
    print(
        f"p95 {result['latency']['all']['p95_ms']:.1f} ms "
        f"({'under' if verdict['p95_ok'] else 'OVER'} {P95_TARGET_MS:.0f}); "
        f"errors {'none' if verdict['no_errors'] else len(result['errors'])}; "
        f"round time {'within noise' if verdict['rounds_ok'] else 'CHANGED'} "
        f"(Welch t {verdict['welch_t']:+.2f}, {verdict['round_change_pct']:+.1f} %)"
    )


def summarize(
    args: argparse.Namespace,
    load: Load,
    baseline: list[tuple[int, float]],
    loaded: list[tuple[int, float]],
    during: list[tuple[int, float]],
) -> dict[str, Any]:
    """The JSON document: latency, errors, events, and rounds 2.. without and during the load."""
    without = spread([s for r, s in baseline if r > 1])
    with_load = spread([s for r, s in during if r > 1])
    ok_rounds, t = within_noise(without, with_load)
    latency = latency_rows(load)
    return {
        "clients": args.clients,
        "seconds": args.seconds,
        "examples": args.examples,
        "latency": latency,
        "errors": load.errors,
        "change_events": load.change_events,
        "streams_opened": load.streams_opened,
        "streams_held": load.streams_held,
        "rounds": {
            "without": without,
            "with": with_load,
            "first_without": baseline[0][1] if baseline else math.nan,
            "first_with": loaded[0][1] if loaded else math.nan,
            "all_without": baseline,
            "all_with": loaded,
            "during_load": during,
        },
        "verdict": {
            "p95_ok": latency["all"]["p95_ms"] < P95_TARGET_MS,
            "no_errors": not load.errors,
            "rounds_ok": ok_rounds,
            "welch_t": t,
            "round_change_pct": 100 * (with_load["mean_s"] / without["mean_s"] - 1)
            if without["mean_s"]
            else math.nan,
        },
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }


# --------------------------------------------------------------------------------------------


def without_load(
    args: argparse.Namespace, scratch: Path, started: list[subprocess.Popen[bytes]]
) -> list[tuple[int, float]]:
    policy, data = scratch / "federation.yaml", scratch / "data"
    print(f"[1/2] without load: fedge train --simulate 2, {args.rounds} rounds", flush=True)
    began = time.monotonic()
    workdir = scratch / "ops" / "runs" / "baseline"
    started.append(start_federation(policy, data, workdir, args.rounds, scratch / "baseline.log"))
    finish(started[-1], scratch / "baseline.log", timeout=1800)
    baseline = round_seconds(workdir)
    per_round = statistics.fmean([s for r, s in baseline if r > 1] or [s for _r, s in baseline])
    took = time.monotonic() - began
    print(f"      {len(baseline)} rounds in {took:.0f} s ({per_round:.2f} s a round)")
    return baseline


def with_load(
    args: argparse.Namespace,
    scratch: Path,
    started: list[subprocess.Popen[bytes]],
    per_round: float,
) -> tuple[Load, list[tuple[int, float]], list[tuple[int, float]], dict[str, float]]:
    """(what the clients saw, every round of the loaded run, the rounds during the load, CPU)."""
    root = scratch / "ops"
    # enough rounds to outlast the load (the engine's start-up is about the first round)
    rounds = max(args.rounds, math.ceil((args.seconds + 5) / per_round) + 2)
    port = free_port()
    console, token = start_console(root, port, scratch / "console.log")
    started.append(console)
    print(
        f"[2/2] with load: fedge console on :{port}, {args.clients} clients for "
        f"{args.seconds:.0f} s, fedge train {rounds} rounds",
        flush=True,
    )
    loaded_dir, log = root / "runs" / "loaded", scratch / "loaded.log"
    federation = start_federation(
        scratch / "federation.yaml", scratch / "data", loaded_dir, rounds, log
    )
    started.append(federation)
    # the load starts when the federation's first round is done (the engine is up)
    deadline = time.monotonic() + 600
    while not round_seconds(loaded_dir) and time.monotonic() < deadline:
        if federation.poll() is not None:
            finish(federation, log, timeout=1)
        time.sleep(0.2)
    before = len(round_seconds(loaded_dir))
    fed_pids = session_pids(federation.pid)
    cpu_before = (cpu_seconds([console.pid]), self_cpu(), cpu_seconds(fed_pids))
    wall = time.monotonic()
    load = asyncio.run(run_load(f"http://{LOOPBACK}:{port}", token, args.clients, args.seconds))
    wall = time.monotonic() - wall
    fed_pids = sorted(set(fed_pids) | set(session_pids(federation.pid)))
    cpu_after = (cpu_seconds([console.pid]), self_cpu(), cpu_seconds(fed_pids))
    during = round_seconds(loaded_dir)[before:]
    finish(federation, log, timeout=1800)
    used = [after - was for after, was in zip(cpu_after, cpu_before, strict=True)]
    cpu = {
        "seconds": wall,
        "cores": float(os.cpu_count() or 0),
        "console_s": used[0],
        "load_generator_s": used[1],
        "federation_s": used[2],  # approximate: processes that left early are not counted
    }
    return load, round_seconds(loaded_dir), during, cpu


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="fedge-console-load-"))
    started: list[subprocess.Popen[bytes]] = []
    try:
        write_inputs(scratch, args.examples)
        (scratch / "ops" / "runs").mkdir(parents=True)
        baseline = without_load(args, scratch, started)
        per_round = statistics.fmean([s for r, s in baseline if r > 1] or [s for _r, s in baseline])
        load, loaded, during, cpu = with_load(args, scratch, started, per_round)
        result = summarize(args, load, baseline, loaded, during)
        result["cpu"] = cpu
        report(result)
        if args.out is not None:
            args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            print(f"\nJSON: {args.out}")
        return 0
    finally:
        for process in reversed(started):
            if process.poll() is None:
                stop_group(process, first=signal.SIGTERM)
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
