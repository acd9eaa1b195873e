"""Enrolled data holders end to end: their names, their progress, SIGTERM, and revocation.

Real processes throughout, as on separate machines: one ``flower-superlink`` with SuperNode
authentication, fedge's enrollment endpoint (in this process), two holders enrolled with tokens
and started with ``fedge-client start`` WITHOUT ``--name``, ``fedge train --superlink`` for two
rounds, and ``fedge export``. Then the two ways a holder's node ends that are not Ctrl-C:

* SIGTERM (systemd, ``docker stop``) on one holder's ``fedge-client start``: it exits 0 and no
  process of its own (SuperNode, SuperExec, ClientApps) is left, its Runtime API port is free;
* ``fedge enroll revoke`` of the other: its ``fedge-client start`` ends with "this node was
  revoked by the coordinator" and exit code 77, also with nothing left behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from client.data.synthetic import generate, write_synthetic
from client.node.enroll import JoinInfo, enroll
from client.node.revocation import EXIT_REVOKED
from fedge.cli import new_app
from fedge.enroll_token import ca_fingerprint
from fedge.process import LOOPBACK, listening
from server.cli.enroll import enroll_app
from server.enrollment.registry import Registry
from server.enrollment.service import Enroller, EnrollmentServer, SuperLinkControl
from tests.conftest import Result
from tests.support.federation import policy_text
from tests.support.superlink import SuperLink, free_port, running_superlink

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
NAMES = ("north", "south")


@pytest.fixture(scope="module")
def auth_superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuperLink]:
    with running_superlink(tmp_path_factory.mktemp("auth-superlink"), supernode_auth=True) as link:
        yield link


@dataclass
class Holder:
    name: str
    state: Path
    port: int
    process: subprocess.Popen[bytes]
    output: Path

    def text(self) -> str:
        return self.output.read_text(errors="replace")


def _own_processes(marker: Path) -> list[str]:
    """Command lines of live processes that name ``marker`` (a holder's state folder)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone while we looked
            continue
        if stat[stat.rfind(")") + 2 :].startswith("Z"):
            continue
        if str(marker).encode() in cmdline:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def _port_free(port: int) -> bool:
    """Nobody listens on ``port`` and a new server could bind it (as gRPC does, with
    SO_REUSEADDR: connections the old one closed may linger in TIME_WAIT for a minute)."""
    if listening(LOOPBACK, port):
        return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _wait(condition: Callable[[], object], what: str, holders: list[Holder], limit: float) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {h.name}\n{h.text()[-2000:]}" for h in holders)
            pytest.fail(f"{what} did not happen within {limit:.0f} s\n{logs}")
        time.sleep(0.2)


def _start(join: JoinInfo, state: Path, data: Path, policy: Path) -> Holder:
    port = free_port()
    output = state.parent / f"{join.name}.out"
    command = [str(BIN / "fedge-client"), "start", "--data", str(data), "--policy", str(policy)]
    command += ["--state-dir", str(state), "--port", str(port)]  # no --name: the enrolled one
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with output.open("wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    return Holder(join.name, state, port, process, output)


def _operator() -> typer.Typer:
    app = new_app("fedge", "test")
    app.add_typer(enroll_app, name="enroll")
    return app


def test_enrolled_holders_train_under_their_names_and_end_cleanly(
    tmp_path: Path, auth_superlink: SuperLink, cli: Callable[..., Result]
) -> None:
    started = time.monotonic()
    certs = auth_superlink.certs
    workdir = tmp_path / "coordinator"
    registry = Registry.in_workdir(workdir)
    control = SuperLinkControl(auth_superlink.flwr_home)
    enroller = Enroller(
        registry, control, superlink=auth_superlink.address, ca_cert=certs.ca_cert.read_text()
    )
    from client.contract.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "model")
    files = write_synthetic(
        generate(num_clients=2, examples_per_client=60, seed=0, heldout=40), tmp_path / "data"
    )
    policy = tmp_path / "federation.yaml"
    policy.write_text(policy_text(model, name="lifecycle", rounds=2, per_round=2, minimum=2))
    holders: list[Holder] = []
    with EnrollmentServer(enroller, certfile=certs.server_cert, keyfile=certs.server_key) as svc:
        try:
            for name, data in zip(NAMES, files[:2], strict=True):
                token = registry.issue_token(
                    name, ttl=600, ca_sha256=ca_fingerprint(certs.ca_cert.read_text()), actor="t"
                ).token
                state = tmp_path / "holders" / name
                join = enroll(coordinator=svc.address, token=token, state_dir=state)
                holders.append(_start(join, state, data, policy))
            _wait(lambda: all("joined" in h.text() for h in holders), "both joining", holders, 90)
            marks = {"joined": time.monotonic() - started}
            train = subprocess.run(
                [str(BIN / "fedge"), "train", "--policy", str(policy),
                 "--superlink", auth_superlink.address, "--ca", str(certs.ca_cert),
                 "--workdir", str(workdir), "--run-id", "lifecycle", "--timeout", "240"],
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            logs = "\n".join(h.text()[-1500:] for h in holders)
            assert train.returncode == 0, f"{train.stdout[-3000:]}\n{train.stderr[-3000:]}\n{logs}"

            # 1. the coordinator's metrics name each holder as it enrolled
            lines = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
            assert [line["round"] for line in lines] == [1, 2]
            for line in lines:
                assert sorted(line["clients"]) == list(NAMES), line
                assert sorted(line["epsilon"]) == list(NAMES), line

            # 2. each holder printed a line per round: round, epsilon of its budget, time
            _wait(lambda: all("round 2/2" in h.text() for h in holders), "round lines", holders, 10)
            for holder in holders:
                text = holder.text()
                assert f"as {holder.name} with 60 examples" in text, text
                for round_ in (1, 2):
                    line = next(x for x in text.splitlines() if x.startswith(f"round {round_}/2"))
                    assert "(run lifecycle): trained on" in line and " s; epsilon " in line, line
                    assert line.endswith("of 8 spent"), line

            # SIGTERM, as systemd and docker stop send it: everything of north's goes
            north, south = holders
            marks["trained"] = time.monotonic() - started
            assert _own_processes(north.state), "north's SuperNode should be running"
            north.process.send_signal(signal.SIGTERM)
            assert north.process.wait(timeout=60) == 0, north.text()[-2000:]
            assert "stopped on SIGTERM" in north.text()
            _wait(lambda: not _own_processes(north.state), "north's children leaving", holders, 15)
            assert _port_free(north.port), f"port {north.port} is still held"

            # revocation: south is told, with its own exit code, and leaves nothing either
            revoked = cli(
                _operator(), "enroll", "revoke", "south", "--workdir", workdir,
                "--superlink", auth_superlink.address, "--ca", certs.ca_cert,
            )  # fmt: skip
            assert revoked.code == 0, revoked.err
            marks["terminated"] = time.monotonic() - started
            _wait(lambda: south.process.poll() is not None, "south ending", holders, 120)
            assert south.process.returncode == EXIT_REVOKED, south.text()[-3000:]
            last = south.text().strip().splitlines()[-1]
            assert last.startswith(
                "fedge-client: error: this node was revoked by the coordinator (data holder south"
            ), last
            assert "fedge-client enroll --coordinator" in last
            _wait(lambda: not _own_processes(south.state), "south's children leaving", holders, 15)
            assert _port_free(south.port)
            marks["revoked"] = time.monotonic() - started
        finally:
            for holder in holders:
                if holder.process.poll() is None:
                    holder.process.send_signal(signal.SIGINT)
                    try:
                        holder.process.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        holder.process.kill()

    # 3. the exported artifact's provenance carries both enrolled names' epsilon
    from server.cli.app import app as operator_app

    key, artifact = tmp_path / "keys", tmp_path / "artifact"
    assert cli(operator_app, "keys", "generate", "--out", key).code == 0
    exported = cli(
        operator_app, "export", "--policy", policy, "--workdir", workdir,
        "--heldout", files[2], "--key", key / "signing.key", "--out", artifact,
    )  # fmt: skip
    assert exported.code == 0, exported.err[-3000:]
    manifest = json.loads((artifact / "manifest.json").read_text())
    spent = manifest["provenance"]["epsilonPerClient"]
    assert sorted(spent) == list(NAMES), manifest["provenance"]
    assert all(value == lines[-1]["epsilon"][name] for name, value in spent.items())
    marks["exported"] = time.monotonic() - started
    print("enrolled holders, SIGTERM, revocation, export:", {k: round(v) for k, v in marks.items()})
