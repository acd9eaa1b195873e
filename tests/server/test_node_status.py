"""The node-status endpoint and what ``fedge-client start`` does with it, in a second each.

The real HTTPS enrollment server and the real holder code talk over loopback; the SuperLink's
Control API is the recording stand-in of test_enrollment_endpoint.py. A signed request learns
only the state of its own key; a tampered or stale one is refused without a lookup. A revoked
holder's ``fedge-client start`` ends before anything starts, with its own exit code, and an
enrolled holder cannot join under another name. The same against a real SuperLink, with a node
revoked while it runs, is test_holder_lifecycle.py.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from client.cli import app as client_app
from client.node.enroll import enroll, load_join
from client.node.revocation import EXIT_REVOKED, node_state
from fedge.enroll_token import ca_fingerprint
from fedge.node_keys import generate_node_key
from fedge.node_status import STATUS_PATH, sign_status_request
from fedge.tls import CertPaths, generate_federation_certs
from server.enrollment.registry import Registry
from server.enrollment.service import Enroller, EnrollmentServer, revoke_holder
from tests.conftest import Result
from tests.server.test_enrollment_endpoint import FakeNodes
from tests.support.federation import make_inputs, policy_text


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[EnrollmentServer, Registry, FakeNodes, CertPaths]]:
    certs = generate_federation_certs(tmp_path / "certs")
    registry = Registry.in_workdir(tmp_path / "coordinator")
    control = FakeNodes()
    enroller = Enroller(
        registry, control, superlink="127.0.0.1:9092", ca_cert=certs.ca_cert.read_text()
    )
    with EnrollmentServer(enroller, certfile=certs.server_cert, keyfile=certs.server_key) as server:
        yield server, registry, control, certs


def _enroll(registry: Registry, certs: CertPaths, server: EnrollmentServer, name: str, state: Path):
    token = registry.issue_token(
        name, ttl=600, ca_sha256=ca_fingerprint(certs.ca_cert.read_text()), actor="test"
    ).token
    return enroll(coordinator=server.address, token=token, state_dir=state)


def _post(
    server: EnrollmentServer, certs: CertPaths, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    host, port = server.address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    try:
        connection.request(
            "POST", STATUS_PATH, json.dumps(body), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_node_learns_its_own_state_and_nothing_else(tmp_path: Path, service) -> None:
    server, registry, control, certs = service
    north = _enroll(registry, certs, server, "north", tmp_path / "north")
    assert node_state(north) == "active"

    # a stranger's valid signature over a key nobody enrolled: "unknown", no name, no hint
    stranger = sign_status_request(generate_node_key()[0])
    status, answer = _post(server, certs, stranger)
    assert status == 200 and answer["state"] == "unknown" and "name" not in answer

    # tampering with any signed field, or an old request, is refused before any lookup
    own = sign_status_request(Path(north.auth_private_key).read_bytes())
    for field, value in (("nonce", "other"), ("at", own["at"] - 1)):
        status, answer = _post(server, certs, {**own, field: value})
        assert status == 400 and "signature: does not verify" in answer["message"], answer
    stale = sign_status_request(Path(north.auth_private_key).read_bytes(), now=1_000_000_000)
    status, answer = _post(server, certs, stale)
    assert status == 400 and answer["message"].startswith("at: "), answer
    # someone else's public key with the stranger's signature: refused too
    status, answer = _post(server, certs, {**stranger, "public_key": own["public_key"]})
    assert status == 400, answer

    revoke_holder(registry, control, "north", actor="test", reason="left")
    assert node_state(north) == "revoked"
    server.stop()
    assert node_state(north) is None  # no answer is no verdict


def _start(cli: Callable[..., Result], root: Path, state: Path, *extra: object) -> Result:
    model, data = make_inputs(root, clients=1, examples=20)
    policy = root / "federation.yaml"
    policy.write_text(policy_text(model))
    return cli(
        client_app,
        "start",
        "--data",
        data / "client-0.tsv",
        "--policy",
        policy,
        "--state-dir",
        state,
        "--port",
        "1",
        *extra,
    )


def test_a_revoked_holder_is_told_so_before_anything_starts(
    tmp_path: Path, service, cli: Callable[..., Result]
) -> None:
    server, registry, control, certs = service
    state = tmp_path / "north"
    _enroll(registry, certs, server, "north", state)
    revoke_holder(registry, control, "north", actor="test")
    result = _start(cli, tmp_path, state)
    assert result.code == EXIT_REVOKED == 77, result.err
    assert result.err.count("\n") == 1, result.err
    assert result.err.startswith(
        "fedge-client: error: this node was revoked by the coordinator (data holder north"
    )
    assert f"fedge-client enroll --coordinator {server.address}" in result.err
    assert not (state / "supernode.log").exists()  # no SuperNode was started


def test_an_enrolled_holder_keeps_its_enrolled_name(
    tmp_path: Path, service, cli: Callable[..., Result]
) -> None:
    server, registry, _control, certs = service
    state = tmp_path / "north"
    _enroll(registry, certs, server, "north", state)
    result = _start(cli, tmp_path, state, "--name", "south")
    assert result.code == 2
    assert result.err.count("\n") == 1, result.err
    assert "--name south: this state folder is enrolled as north" in result.err
    assert load_join(state).name == "north"
    assert not (state / "supernode.log").exists()
