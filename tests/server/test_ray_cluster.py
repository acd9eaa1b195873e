"""``fedge train --simulate N --ray-address HOST:PORT``: the simulation joins a running Ray cluster.

The flag's checks run without Ray (a malformed address is a usage error, a port where nothing
listens a runtime error, both one line naming the flag, before Ray could retry for minutes). The
slow test starts a real Ray head on loopback (``ray start --head --block`` in a process group of
its own, stopped with the group), runs a one-round federation through the real ``fedge train``
command against it, and then asks the head's GCS which actors ran: the run's ``ClientAppActor``
actors must be there, as many as the cluster's CPUs allow at the share fedge derived from the
cluster (not from this machine), and belong to a job other than the one asking.

``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps the head and both drivers on 127.0.0.1: without it
Ray replaces a loopback address with the machine's network address and its GCS listens on every
interface.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fedge.errors import FederationError
from fedge.process import LOOPBACK, ManagedProcess, listening
from server.cli.app import app
from server.federation.metrics import MetricsLog
from tests.conftest import EXAMPLES, Result
from tests.support.federation import make_inputs, policy_text
from tests.support.superlink import free_port

POLICY = EXAMPLES / "federation.yaml"
HEAD_CPUS = 1
LOOPBACK_RAY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def _train(cli: Callable[..., Result], tmp_path: Path, *extra: str) -> Result:
    return cli(
        app,
        "train",
        "--policy",
        POLICY,
        "--simulate",
        "2",
        "--data",
        tmp_path,
        "--workdir",
        tmp_path / "run",
        *extra,
    )


@pytest.mark.parametrize(
    "address",
    ["nonsense", "ray://127.0.0.1:6379", "127.0.0.1:99999", "127.0.0.1:", ":6379", "a b:1"],
)
def test_a_malformed_address_is_a_usage_error(
    cli: Callable[..., Result], tmp_path: Path, address: str
) -> None:
    result = _train(cli, tmp_path, "--ray-address", address)
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "--ray-address" in lines[0] and "HOST:PORT" in lines[0], result.err
    assert not (tmp_path / "run").exists()


def test_an_address_where_nothing_listens_fails_at_once(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    port = free_port()  # bound and released: nothing listens there now
    started = time.monotonic()
    result = _train(cli, tmp_path, "--ray-address", f"{LOOPBACK}:{port}")
    assert result.code == 1, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and f"--ray-address {LOOPBACK}:{port}" in lines[0], result.err
    assert "nothing accepts connections" in lines[0]
    assert time.monotonic() - started < 10  # Ray itself would retry for minutes


def test_ray_address_is_only_for_the_simulation(cli: Callable[..., Result], tmp_path: Path) -> None:
    result = cli(
        app,
        "train",
        "--policy",
        POLICY,
        "--superlink",
        "127.0.0.1:9092",
        "--ca",
        tmp_path / "ca.crt",
        "--ray-address",
        "127.0.0.1:6379",
    )
    assert result.code == 2, result
    assert "--ray-address is for --simulate" in result.err


# ---------------------------------------------------------------------------- a real Ray head


@contextlib.contextmanager
def ray_head(*, cpus: int) -> Iterator[tuple[str, Path]]:
    """A Ray head on a free loopback port, its own temp folder; the whole group stopped at the end.

    The folder is a short one under /tmp: Ray puts Unix sockets in it, whose paths may not be
    longer than 107 bytes (pytest's tmp_path can be).
    """
    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    if ray is None:
        message = "ray is not installed (flwr[simulation] brings it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    temp = Path(tempfile.mkdtemp(prefix="fray-", dir="/tmp"))
    port = free_port()
    head = ManagedProcess(
        [
            ray,
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            LOOPBACK,
            "--port",
            str(port),
            "--num-cpus",
            str(cpus),
            "--num-gpus",
            "0",
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
            "--temp-dir",
            str(temp),
        ],
        log_path=temp / "head.log",
        name="ray head",
        env={**os.environ, **LOOPBACK_RAY},
        grace=20,
        error=FederationError,
    ).start()
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in head.log_text() or not listening(LOOPBACK, port):
            if not head.running() or time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not start:\n{head.log_tail(3000)}")
            time.sleep(0.3)
        yield f"{LOOPBACK}:{port}", temp
    finally:
        head.stop()
        leftovers = _processes_naming(temp)
        shutil.rmtree(temp, ignore_errors=True)
        assert leftovers == [], f"Ray processes outlived the head: {leftovers}"


def _processes_naming(folder: Path) -> list[str]:
    marker = str(folder).encode()
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmdline = path.read_bytes()
        except OSError:  # the process ended while we looked
            continue
        if marker in cmdline:
            found.append(cmdline.replace(b"\0", b" ")[:200].decode(errors="replace"))
    return found


_CLUSTER_ACTORS = """
import json, sys
import ray
from ray._private import state
ray.init(address=sys.argv[1], include_dashboard=False, logging_level="ERROR", log_to_driver=False)
me = ray.get_runtime_context().get_job_id()
actors = [
    {"class": a["ActorClassName"], "job": a["JobID"], "state": a["State"]}
    for a in state.actors().values()
]
print(json.dumps({"me": me, "actors": actors, "cpus": ray.cluster_resources().get("CPU")}))
ray.shutdown()
"""


def _cluster_actors(address: str) -> dict[str, object]:
    """What the head's GCS knows about every actor (asked from a driver of its own)."""
    done = subprocess.run(
        [sys.executable, "-c", _CLUSTER_ACTORS, address],
        env={**os.environ, **LOOPBACK_RAY},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


@pytest.mark.slow
def test_the_simulation_runs_on_the_cluster_it_is_given(tmp_path: Path) -> None:
    model, data = make_inputs(tmp_path, clients=2, examples=40)
    policy = tmp_path / "federation.yaml"
    policy.write_text(policy_text(model, name="ray-cluster", rounds=1, per_round=2, minimum=2))
    workdir = tmp_path / "run"
    with ray_head(cpus=HEAD_CPUS) as (address, _temp):
        before = _cluster_actors(address)
        assert before["actors"] == [] and before["cpus"] == HEAD_CPUS
        train = subprocess.run(
            [
                str(Path(sys.executable).with_name("fedge")),
                "train",
                "--policy",
                str(policy),
                "--simulate",
                "2",
                "--data",
                str(data),
                "--workdir",
                str(workdir),
                "--ray-address",
                address,
            ],
            env={**os.environ, **LOOPBACK_RAY},
            capture_output=True,
            text=True,
            timeout=400,
            check=False,
        )
        assert train.returncode == 0, f"{train.stdout[-3000:]}\n{train.stderr[-3000:]}"
        assert f"Ray cluster {address}" in train.stdout
        after = _cluster_actors(address)
    records = MetricsLog(workdir / "metrics.jsonl").read()
    assert [(r["round"], r["status"], sorted(r["clients"])) for r in records] == [
        (1, "ok", ["client-0", "client-1"])
    ]
    actors = after["actors"]
    assert isinstance(actors, list)
    clients = [a for a in actors if a["class"] == "ClientAppActor"]
    # one CPU in the cluster, two clients: a share of 0.5 each, so two actors (this machine's
    # CPU count would have given each client a whole CPU, and one actor)
    assert len(clients) == 2, actors
    assert {a["job"] for a in clients} != {after["me"]}
    assert all(a["state"] == "DEAD" for a in clients), clients  # the run left, the head stayed
