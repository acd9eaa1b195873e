"""Enrollment against a real ``flower-superlink --enable-supernode-auth`` and real SuperNodes.

One SuperLink (TLS, SuperNode authentication on) runs for the module, started the way
tests/server/test_deployment_engine.py starts its own; the enrollment service runs in this process over
HTTPS; data holders enroll through the ``fedge-client enroll`` command and join with
``flower-supernode --auth-supernode-private-key``. Every SuperNode runs in a process group of its
own that is stopped whatever the outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import typer

from client.node.enroll import enroll_command, generate_node_key, load_join
from client.node.supernode import SuperNodeProcess, supernode_command
from fedge.atomic import atomic_write_bytes
from fedge.cli import new_app
from fedge.enroll_token import ca_fingerprint
from server.cli.enroll import enroll_app
from server.enrollment.registry import Registry
from server.enrollment.service import Enroller, EnrollmentServer, SuperLinkControl
from tests.conftest import Result
from tests.support.superlink import SuperLink, free_port, running_superlink

pytestmark = pytest.mark.slow

JOIN_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def auth_superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuperLink]:
    """A TLS SuperLink that admits only SuperNodes whose keys were registered with it."""
    with running_superlink(tmp_path_factory.mktemp("auth-superlink"), supernode_auth=True) as link:
        yield link


def _apps() -> tuple[typer.Typer, typer.Typer]:
    """``fedge enroll`` and ``fedge-client enroll``, run through fedge's exit-code wrapper."""
    operator = new_app("fedge", "test")
    operator.add_typer(enroll_app, name="enroll")
    holder = new_app("fedge-client", "test")
    holder.command("enroll")(enroll_command)
    return operator, holder


def _supernode(
    superlink: SuperLink, state: Path, *, key: Path | None, name: str
) -> SuperNodeProcess:
    command = supernode_command(
        superlink=superlink.address,
        root_certificates=superlink.certs.ca_cert,
        runtime_port=free_port(),
        data_path=state / "no-data.tsv",  # read by a ClientApp only; none runs here
        state_dir=state,
        client_name=name,
        auth_private_key=key,
    )
    return SuperNodeProcess(command, state_dir=state, grace=5.0)


def _wait(condition: Callable[[], bool], what: str, node: SuperNodeProcess | None = None) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            log = node.log_text()[-3000:] if node is not None else ""
            pytest.fail(f"{what} did not happen within {JOIN_TIMEOUT:.0f} s\n{log}")
        time.sleep(0.5)


def _refused(node: SuperNodeProcess, reason: str) -> None:
    """The SuperNode gives up on its own with Flower's connection error and ``reason``."""
    _wait(lambda: not node.running(), "the SuperNode's refusal", node)
    code = node.stop()
    log = node.log_text()
    assert code not in (0, None), log[-3000:]
    assert "Failed to initialize the connection to the SuperLink" in log, log[-3000:]
    assert reason in log, log[-3000:]


def test_enrolled_nodes_join_and_the_rest_are_refused(
    tmp_path: Path, auth_superlink: SuperLink, cli: Callable[..., Result]
) -> None:
    started = time.monotonic()
    operator, holder = _apps()
    certs = auth_superlink.certs
    workdir = tmp_path / "coordinator"
    registry = Registry.in_workdir(workdir)
    control = SuperLinkControl(auth_superlink.flwr_home)
    enroller = Enroller(
        registry, control, superlink=auth_superlink.address, ca_cert=certs.ca_cert.read_text()
    )
    service = EnrollmentServer(enroller, certfile=certs.server_cert, keyfile=certs.server_key)
    nodes: list[SuperNodeProcess] = []
    try:
        service.start()
        coordinator = ["--coordinator", service.address]

        def token(*args: object) -> str:
            issued = cli(operator, "enroll", *args, "--ca", certs.ca_cert, "--workdir", workdir)
            assert issued.code == 0, issued.err
            return next(line for line in issued.out.splitlines() if line.startswith("fedge1."))

        # the operator issues a token; the data holder enrolls with it from its own folder
        north = tmp_path / "north"
        first = token("token", "north", "--expires", "1h")
        enrolled = cli(holder, "enroll", *coordinator, "--token", first, "--state-dir", north)
        assert enrolled.code == 0, enrolled.err
        original = load_join(north)
        assert control.nodes()[original.node_id] == "registered"

        # a used token and an expired one are refused, in one line, exit 2
        reused = cli(
            holder, "enroll", *coordinator, "--token", first, "--state-dir", tmp_path / "x"
        )
        assert reused.code == 2
        assert reused.err.count("\n") == 1, reused.err
        assert "--token: this enrollment token was already used at" in reused.err
        stale = Registry(registry.path, clock=lambda: time.time() - 7200).issue_token(
            "late", ttl=3600, ca_sha256=ca_fingerprint(certs.ca_cert.read_text()), actor="test"
        )
        expired = cli(
            holder, "enroll", *coordinator, "--token", stale.token, "--state-dir", tmp_path / "y"
        )
        assert expired.code == 2
        assert expired.err.count("\n") == 1, expired.err
        assert "--token: this enrollment token expired at" in expired.err
        assert not (tmp_path / "x" / "supernode.key").exists()
        assert not (tmp_path / "y" / "supernode.key").exists()

        # key rotation: the new key replaces the old one at the SuperLink
        rotated = cli(
            holder,
            "enroll",
            *coordinator,
            "--token",
            token("rotate", "north"),
            "--state-dir",
            north,
        )
        assert rotated.code == 0, rotated.err
        join = load_join(north)
        assert join.node_id != original.node_id
        listed = control.nodes()
        assert listed[original.node_id] == "unregistered"
        assert listed[join.node_id] == "registered"

        # the enrolled SuperNode joins
        member = _supernode(auth_superlink, north, key=Path(join.auth_private_key), name="north")
        nodes.append(member.start())
        _wait(lambda: control.nodes().get(join.node_id) == "online", "north going online", member)
        assert f"SuperNode ID: {join.node_id}" in member.log_text()

        # a SuperNode without a registered key, and one with no key at all, are refused
        stranger_state = tmp_path / "stranger"
        stranger_key = atomic_write_bytes(
            stranger_state / "supernode.key", generate_node_key()[0], mode=0o600
        )
        stranger = _supernode(auth_superlink, stranger_state, key=stranger_key, name="stranger")
        anonymous = _supernode(auth_superlink, tmp_path / "anonymous", key=None, name="anonymous")
        nodes += [stranger.start(), anonymous.start()]
        _refused(stranger, "Failed to activate SuperNode")
        _refused(anonymous, "All SuperNodes must be registered via the CLI")

        # revocation takes effect on the running SuperLink: the member is turned away
        superlink_pid = auth_superlink.process.pid
        revoked = cli(
            operator,
            "enroll",
            "revoke",
            "north",
            "--workdir",
            workdir,
            "--superlink",
            auth_superlink.address,
            "--ca",
            certs.ca_cert,
            "--reason",
            "test",
        )
        assert revoked.code == 0, revoked.err
        assert f"SuperLink node {join.node_id} unregistered" in revoked.out
        _wait(lambda: not member.running(), "the revoked SuperNode leaving", member)
        assert control.nodes()[join.node_id] == "unregistered"
        assert auth_superlink.process.poll() is None
        assert auth_superlink.process.pid == superlink_pid  # nothing was restarted

        # and it cannot come back with its key
        again = _supernode(auth_superlink, north, key=Path(join.auth_private_key), name="north")
        nodes.append(again.start())
        _refused(again, "Failed to activate SuperNode")
    finally:
        for node in nodes:
            node.stop()
        service.stop()

    assert [entry.action for entry in registry.audit(subject="north")] == [
        "holder.created",
        "token.issued",
        "token.used",
        "holder.enrolled",
        "token.refused",
        "token.issued",
        "token.used",
        "holder.rotated",
        "holder.revoked",
    ]
    print(f"enrollment lifecycle against a real SuperLink: {time.monotonic() - started:.1f} s")
