"""Seconds per round spent outside training in the Deployment Engine: cold vs warm ClientApps.

One real TLS SuperLink on loopback (certificates from fedge.tls, flags as in
tests/server/test_deployment_engine.py), then, for each mode side by side in one run, two data
holders joined through ``fedge-client start`` (``--no-warm``: Flower's stock fresh
``flwr-clientapp`` process per message; ``--warm``: client/node/warm.py's forking SuperExec with the
model pre-loaded) and the operator's ``fedge train --superlink ... --ca ...``. Each mode gets its
own holders, state folders and run; the SuperLink is shared.

Figures come from the run's ``metrics.jsonl``: ``seconds`` is a round as the ServerApp timed it
(train phase plus evaluate phase, from pushing the messages to aggregating the replies) and
``train_seconds`` the slowest accepted client's own time in ``train_round``. "Outside training"
is their difference: scheduling, process start, imports and model load, (de)serialization,
transport, evaluation and aggregation, and also the ClientApp's own privacy accounting before it
trains (``plan_round``'s noise search and the ledger's check, both pricing histories with
Opacus's RDP accountant), which is fedge's work rather than the engine's. That part is replayed
afterwards from the ledgers, both clients at once as in the run, and shown as ``DP acct`` (an
estimate: the replay is not timed inside the run), with ``outside-acct`` what is left. Before a
warm run is submitted the bench waits until both SuperExecs logged that the model is loaded, so
that pre-loading is not counted as a round.

Run: ``.venv/bin/python bench/round_overhead.py [--quick] [--rounds N] [--model tiny|builtin]
[--json PATH]``. The defaults (tiny random BERT, 3 rounds, 60 examples per client) take about
4 minutes on a 2-core CPU, most of it the cold mode; ``--quick`` (2 rounds) about 3.
``--model builtin`` trains MiniLM instead (slower rounds, same overhead).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from client.contract.model import BUILTIN_MINILM  # noqa: E402
from client.contract.tiny import build_tiny_model  # noqa: E402
from client.data.synthetic import generate, write_synthetic  # noqa: E402
from fedge.process import free_port, stop_group  # noqa: E402
from fedge.tls import CertPaths, generate_federation_certs  # noqa: E402
from server.federation.deployment_engine import flower_environment, superlink_command  # noqa: E402
from tests.support.superlink import tls_ready  # noqa: E402

LOOPBACK = "127.0.0.1"
MODES = ("cold", "warm")
BIN = Path(sys.executable).parent


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Seconds per round outside training, Deployment Engine with 2 clients: "
        "fedge-client start --no-warm vs --warm, side by side in one run.",
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds per mode (3)")
    parser.add_argument("--quick", action="store_true", help="2 rounds per mode")
    parser.add_argument(
        "--model", choices=("tiny", "builtin"), default="tiny", help="tiny random BERT or MiniLM"
    )
    parser.add_argument("--examples", type=int, default=60, help="examples per client (60)")
    parser.add_argument(
        "--modes", default="cold,warm", help="modes in the order they run (cold,warm)"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if args.rounds < 1 or args.examples < 10:
        parser.error("--rounds must be at least 1 and --examples at least 10")
    if not args.modes or any(mode not in MODES for mode in args.modes):
        parser.error(f"--modes: a comma-separated list of {', '.join(MODES)}")
    return args


# --------------------------------------------------------------------------------------------
# Processes


@dataclass
class Bench:
    """Every process this bench started, so that ``close`` stops them all."""

    scratch: Path
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, command: Sequence[str], log: Path, env: dict[str, str]) -> None:
        with log.open("ab") as out:
            process = subprocess.Popen(
                list(command),
                env=env,
                cwd=self.scratch,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the bench only; it stops them in order
            )
        self.processes.append((name, process))

    def stop(self, name_prefix: str) -> None:
        """Ctrl-C the holders (``fedge-client`` stops its SuperNode itself), TERM the rest."""
        keep = []
        for name, process in self.processes:
            if not name.startswith(name_prefix):
                keep.append((name, process))
                continue
            first = signal.SIGINT if name.startswith("holder") else signal.SIGTERM
            stop_group(process, first=first, grace=30.0)
        self.processes = keep

    def close(self) -> None:
        for name, _ in reversed(list(self.processes)):
            self.stop(name)

    def leftovers(self) -> list[str]:
        """Processes still running whose command line names the scratch folder."""
        marker = str(self.scratch).encode()
        found = []
        for path in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                cmdline = path.read_bytes()
                if marker in cmdline and int(path.parent.name) != os.getpid():
                    shown = cmdline.replace(b"\0", b" ")[:160].decode(errors="replace")
                    found.append(f"{path.parent.name}: {shown}")
        return found


def start_superlink(bench: Bench, certs: CertPaths) -> str:
    env = flower_environment(bench.scratch / "superlink-home")
    executable = shutil.which("flower-superlink", path=env["PATH"])
    if executable is None:
        raise SystemExit("flower-superlink is not installed (pip install 'fedge[server]')")
    port = free_port()
    log = bench.scratch / "superlink.log"
    bench.start(
        "superlink",
        superlink_command(certs, host=LOOPBACK, port=port, executable=executable),
        log,
        env,
    )
    deadline = time.monotonic() + 60
    while not tls_ready(port, certs.ca_cert):
        if bench.processes[-1][1].poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"flower-superlink did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return f"{LOOPBACK}:{port}"


# --------------------------------------------------------------------------------------------
# One mode


def policy_text(model: str, rounds: int, name: str) -> str:
    return f"""apiVersion: fedge/v1
kind: FederationPolicy
metadata: {{name: {name}}}
spec:
  model: {{source: {json.dumps(model)}, numLabels: 2, maxLength: 24}}
  rounds: {rounds}
  clients: {{perRound: 2, minimum: 2, fractionEvaluate: 1.0}}
  roundTimeout: 300
  aggregation: {{strategy: fedavg}}
  training: {{batchSize: 16, learningRate: 0.01}}
  privacy: {{targetEpsilon: 8.0, delta: 1.0e-5}}
  lora: {{rank: 4, alpha: 8}}
"""


def wait_warm(states: Sequence[Path], timeout: float = 180.0) -> float:
    """Wait until every warm SuperExec logged that its model is loaded; seconds waited."""
    started = time.monotonic()
    while True:
        logs = [state / "superexec.log" for state in states]
        texts = [log.read_text(errors="replace") if log.exists() else "" for log in logs]
        if all("pre-loaded" in text for text in texts):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError("a warm SuperExec did not pre-load in time:\n" + "\n".join(texts))
        time.sleep(0.2)


def run_mode(
    bench: Bench,
    args: argparse.Namespace,
    *,
    mode: str,
    superlink: str,
    certs: CertPaths,
    model: str,
    data_files: Sequence[Path],
) -> dict[str, Any]:
    folder = bench.scratch / mode
    policy = folder / "federation.yaml"
    folder.mkdir()
    policy.write_text(policy_text(model, args.rounds, f"overhead-{mode}"))
    env = flower_environment(folder / "flwr-home")
    states = []
    for index, data in enumerate(data_files):
        state = folder / "holders" / data.stem
        state.mkdir(parents=True)
        states.append(state)
        bench.start(
            f"holder-{mode}-{index}",
            [
                str(BIN / "fedge-client"),
                "start",
                "--superlink",
                superlink,
                "--ca",
                str(certs.ca_cert),
                "--data",
                str(data),
                "--policy",
                str(policy),
                "--state-dir",
                str(state),
                "--name",
                data.stem,
                "--port",
                str(free_port()),
                "--warm" if mode == "warm" else "--no-warm",
            ],
            state / "fedge-client.log",
            env,
        )
    waited = wait_warm(states) if mode == "warm" else 0.0
    workdir = folder / "coordinator"
    started = time.monotonic()
    train = subprocess.run(
        [
            str(BIN / "fedge"),
            "train",
            "--policy",
            str(policy),
            "--superlink",
            superlink,
            "--ca",
            str(certs.ca_cert),
            "--workdir",
            str(workdir),
            "--run-id",
            f"overhead-{mode}",
            "--timeout",
            str(120 + 120 * args.rounds),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180 + 120 * args.rounds,
        check=False,
    )
    wall = time.monotonic() - started
    bench.stop(f"holder-{mode}-")
    if train.returncode != 0:
        holder_logs = "\n".join(
            (state / name).read_text(errors="replace")[-2000:]
            for state in states
            for name in ("fedge-client.log", "supernode.log", "superexec.log")
            if (state / name).exists()
        )
        raise RuntimeError(
            f"{mode}: fedge train failed:\n{train.stdout[-3000:]}\n{train.stderr[-3000:]}\n"
            f"{holder_logs}"
        )
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    bad = [line for line in lines if line["status"] != "ok" or len(line["clients"]) != 2]
    if len(lines) != args.rounds or bad:
        raise RuntimeError(f"{mode}: expected {args.rounds} rounds with 2 clients, got {lines}")
    rounds = [float(line["seconds"]) for line in lines]
    training = [float(line["train_seconds"]) for line in lines]
    outside = [r - t for r, t in zip(rounds, training, strict=True)]
    accounting = replay_all(states, rounds=args.rounds)
    if len(accounting) != len(outside):
        accounting = [0.0] * len(outside)
    return {
        "mode": mode,
        "rounds": len(lines),
        "round_seconds": rounds,
        "train_seconds": training,
        "outside_seconds": outside,
        "mean_round_seconds": statistics.fmean(rounds),
        "mean_train_seconds": statistics.fmean(training),
        "mean_outside_seconds": statistics.fmean(outside),
        "accounting_seconds_replayed": accounting,
        "mean_accounting_seconds_replayed": statistics.fmean(accounting),
        "mean_outside_without_accounting_seconds": statistics.fmean(
            o - a for o, a in zip(outside, accounting, strict=True)
        ),
        "run_wall_seconds": wall,
        "preload_wait_seconds": waited,
        "eval_accuracy": lines[-1].get("eval_accuracy"),
    }


def replay_all(states: Sequence[Path], *, rounds: int) -> list[float]:
    """Every holder's accounting replayed at the same time, as in the run; the slowest per round.

    Each replay runs in a fresh (spawned) process: the round waits for the slowest client, and
    the clients price their rounds concurrently on the same CPU, as they did in the run.
    """
    ledgers = [next(iter(sorted((state / "privacy").glob("*.json"))), None) for state in states]
    if any(ledger is None for ledger in ledgers):
        return []
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(len(ledgers), mp_context=context) as pool:
        futures = [pool.submit(replay_accounting, ledger, rounds=rounds) for ledger in ledgers]
        per_client = [future.result() for future in futures]
    return [max(seconds) for seconds in zip(*per_client, strict=True)]


def replay_accounting(ledger_file: Path | None, *, rounds: int) -> list[float]:
    """Seconds one ClientApp's privacy accounting took per round, replayed (estimate).

    ``_train`` plans the round's noise (``plan_round``: a bisection over Opacus's accountant,
    pricing the ledger's history plus the rounds still planned) and checks the charge before
    training; both happen outside ``train_seconds``. This replays the same calls on the same
    histories with a cold cache, so the table can show what is left when the accounting is
    taken out.
    """
    if ledger_file is None:
        return []
    from client.privacy import accounting as accounting_module
    from client.privacy.accounting import epsilon_for, noise_for_budget

    data = json.loads(ledger_file.read_text())
    charges = sorted(data["charges"], key=lambda charge: int(charge["round"]))
    delta, accountant = float(data["delta"]), data["accountant"]
    seconds = []
    for index, charge in enumerate(charges):
        history = [
            (float(c["noiseMultiplier"]), float(c["sampleRate"]), int(c["steps"]))
            for c in charges[:index]
        ]
        mechanism = (
            float(charge["noiseMultiplier"]),
            float(charge["sampleRate"]),
            int(charge["steps"]),
        )
        accounting_module._epsilon.cache_clear()  # each ClientApp process starts with no cache
        started = time.perf_counter()
        noise_for_budget(
            target_epsilon=float(charge["targetEpsilon"]),
            delta=delta,
            sample_rate=mechanism[1],
            steps_per_round=mechanism[2],
            rounds=max(1, rounds - int(charge["round"]) + 1),
            accountant=accountant,
            history=history,
        )
        epsilon_for(history, delta=delta, accountant=accountant)
        epsilon_for([*history, mechanism], delta=delta, accountant=accountant)
        seconds.append(time.perf_counter() - started)
    return seconds


# --------------------------------------------------------------------------------------------
# Main


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


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print()
    print("seconds per round (means); 'outside' = round - training; 'DP acct' = the ClientApp's")
    print("privacy accounting before training, replayed (estimate); last column: outside per round")
    header = f"{'mode':<6} {'rounds':>6} {'round':>8} {'train':>8} {'outside':>8} {'DP acct':>8}"
    print(header + f" {'outside-acct':>12}   per round")
    for mode, result in results.items():
        print(
            f"{mode:<6} {result['rounds']:>6} {result['mean_round_seconds']:>8.2f} "
            f"{result['mean_train_seconds']:>8.2f} {result['mean_outside_seconds']:>8.2f} "
            f"{result['mean_accounting_seconds_replayed']:>8.2f} "
            f"{result['mean_outside_without_accounting_seconds']:>12.2f}   "
            + ", ".join(f"{s:.2f}" for s in result["outside_seconds"])
        )
    if "cold" in results and "warm" in results:
        cold, warm = results["cold"], results["warm"]
        key = "mean_outside_without_accounting_seconds"
        ratio = cold[key] / warm[key] if warm[key] > 0 else math.inf
        print(
            f"cold/warm: round {cold['mean_round_seconds'] / warm['mean_round_seconds']:.1f}x, "
            f"outside training {cold['mean_outside_seconds'] / warm['mean_outside_seconds']:.1f}x, "
            f"outside training and accounting {ratio:.1f}x"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for key, value in {
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
    }.items():
        os.environ.setdefault(key, value)
    scratch = Path(tempfile.mkdtemp(prefix="fedge-round-overhead-"))
    bench = Bench(scratch)
    results: dict[str, dict[str, Any]] = {}
    try:
        with terminate_as_interrupt():
            certs = generate_federation_certs(scratch / "certs")
            model = (
                BUILTIN_MINILM if args.model == "builtin" else str(build_tiny_model(scratch / "m"))
            )
            split = generate(num_clients=2, examples_per_client=args.examples, seed=0, heldout=0)
            data_files = write_synthetic(split, scratch / "data")
            superlink = start_superlink(bench, certs)
            print(
                f"SuperLink {superlink} (TLS); model {args.model}, 2 clients x {args.examples} "
                f"examples, {args.rounds} rounds per mode; scratch {scratch}",
                flush=True,
            )
            for mode in args.modes:
                print(f"{mode}: running ...", flush=True)
                results[mode] = run_mode(
                    bench,
                    args,
                    mode=mode,
                    superlink=superlink,
                    certs=certs,
                    model=model,
                    data_files=data_files,
                )
                seconds = ", ".join(f"{s:.2f}" for s in results[mode]["round_seconds"])
                wall = results[mode]["run_wall_seconds"]
                print(f"{mode}: rounds {seconds} s; run {wall:.1f} s", flush=True)
    except KeyboardInterrupt:
        print("interrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        bench.close()
        left = bench.leftovers()
        if left:
            print("WARNING: processes outlived the bench:\n" + "\n".join(left), file=sys.stderr)
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print_table(results)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"model": args.model, "examples": args.examples, "results": results}, indent=2
            )
            + "\n"
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
