"""Run management against a real SuperLink: Ctrl-C and --timeout on ``fedge train``, ``fedge runs``.

``fedge train --superlink`` runs as a real process with no SuperNode connected, so its run waits
for holders until it is stopped; the SuperLink (tests/support/superlink.py) is real, and every
check of a run's state goes through the same ``flwr`` wrapper the commands use. The fast side
(progress, --rounds, the wrong-CA and wrong-port errors) is tests/server/test_train_progress.py.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema
import pytest

from fedge.output_schemas import schema_for
from server.cli.app import app
from server.federation.deployment_engine import RunStatus, run_status
from tests.conftest import EXAMPLES, Result
from tests.support.superlink import SuperLink, running_superlink

FEDGE = str(Path(sys.executable).with_name("fedge"))


@pytest.fixture(scope="module")
def superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuperLink]:
    with running_superlink(tmp_path_factory.mktemp("runs-superlink")) as link:
        yield link


def _train(link: SuperLink, workdir: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [
        FEDGE,
        "train",
        "--policy",
        str(EXAMPLES / "federation.yaml"),
        "--superlink",
        link.address,
        "--ca",
        str(link.certs.ca_cert),
        "--workdir",
        str(workdir),
        *extra,
    ]
    with log.open("wb") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)


def _wait_for_line(log: Path, pattern: str, process: subprocess.Popen[bytes]) -> re.Match[str]:
    deadline = time.monotonic() + 90
    while True:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {pattern!r} in fedge train's output:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def _settled(link: SuperLink, run: int) -> RunStatus:
    """The run's status once it is finished (a stop takes a moment to land), or after 30 s."""
    deadline = time.monotonic() + 30
    while not (status := run_status(run, flwr_home=link.flwr_home)).finished:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return status


def _runs(link: SuperLink, cli: Callable[..., Result], *extra: str) -> Result:
    ca = str(link.certs.ca_cert)
    return cli(app, "runs", *extra, "--superlink", link.address, "--ca", ca)


@pytest.mark.slow
def test_ctrl_c_on_fedge_train_stops_the_run_on_the_superlink(
    tmp_path: Path, superlink: SuperLink, cli: Callable[..., Result]
) -> None:
    workdir, log = tmp_path / "run", tmp_path / "train.log"
    process = _train(superlink, workdir, log, "--rounds", "2")
    try:
        run = int(_wait_for_line(log, r"submitted as Flower run (\d+)", process).group(1))
        # the ServerApp's progress reaches the operator while the run waits for holders
        _wait_for_line(log, r"waiting for 1 node \(0 connected\)", process)
        listed = _runs(superlink, cli, "--workdir", str(workdir), "-o", "json")
        assert listed.code == 0, listed
        doc = json.loads(listed.out)
        jsonschema.validate(doc, schema_for("RunList"))
        assert (doc["kind"], doc["superlink"]) == ("RunList", superlink.address)
        row = {item["run"]: item for item in doc["items"]}[str(run)]
        assert (row["state"], row["progress"], row["clients"], row["rounds"]) == (
            "running",
            "waiting",
            0,
            2,
        )
        assert (row["name"], row["workdir"]) == ("sentiment-demo", str(workdir.resolve()))
        # --watch: one document per line until Ctrl-C, which ends the watch (exit 0)
        watch = subprocess.Popen(
            [FEDGE, "runs", "--watch", "--interval", "0.5", "-o", "json", "--workdir",
             str(workdir), "--superlink", superlink.address, "--ca", str(superlink.certs.ca_cert)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert watch.stdout is not None
            for _ in range(2):
                jsonschema.validate(json.loads(watch.stdout.readline()), schema_for("RunList"))
            watch.send_signal(signal.SIGINT)
            assert watch.wait(timeout=30) == 0
        finally:
            if watch.poll() is None:
                watch.kill()
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert process.wait(timeout=60) == 130, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    assert f"stopped run {run} on the SuperLink" in output, output[-3000:]
    assert _settled(superlink, run).status == "finished:stopped"


@pytest.mark.slow
def test_keep_running_on_timeout_says_how_to_stop_and_fedge_runs_stops_it(
    tmp_path: Path, superlink: SuperLink, cli: Callable[..., Result]
) -> None:
    workdir, log = tmp_path / "run", tmp_path / "train.log"
    process = _train(superlink, workdir, log, "--timeout", "3", "--keep-running")
    try:
        assert process.wait(timeout=90) == 1, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    run = int(re.findall(r"submitted as Flower run (\d+)", output)[0])
    stop = f"fedge runs stop {run} --superlink {superlink.address} --ca {superlink.certs.ca_cert}"
    assert "--timeout 3" in output and stop in output, output[-3000:]
    assert not run_status(run, flwr_home=superlink.flwr_home).finished  # it was left going

    stopped = cli(app, *stop.split()[1:])  # the very command it printed
    assert stopped.code == 0, stopped
    assert f"stopped run {run} on the SuperLink" in stopped.out
    assert _settled(superlink, run).status == "finished:stopped"

    table = _runs(superlink, cli)
    assert table.code == 0, table
    assert re.search(rf"\b{run}\b.*finished:stopped", table.out), table.out
    logs = _runs(superlink, cli, "logs", str(run))
    assert logs.code == 0, logs
    ca = str(superlink.certs.ca_cert)
    follow = subprocess.run(  # --follow ends with the run, here already stopped
        [FEDGE, "runs", "logs", str(run), "--follow", "--superlink", superlink.address, "--ca", ca],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert follow.returncode == 0, follow.stderr[-2000:]
