"""``fedge enroll sync``: the SuperLink's node list and the registry, reconciled both ways.

From the registry to the SuperLink: keys a restarted SuperLink forgot are registered again and
revoked holders' nodes unregistered. From the SuperLink to the registry: a node that no data
holder has (registered through the Control API behind fedge's back) is reported, and removed with
``--unregister-unknown``. Every action leaves an audit row; anything left disagreeing is a
problem, and the command exits 1. The fast tests drive a recording stand-in for the Control API;
the slow one a real ``flower-superlink --enable-supernode-auth`` through ``flwr``, where a key
unregistered behind fedge's back can never be registered again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer

import server.enrollment.service as service
from fedge.cli import new_app
from fedge.enroll_token import ca_fingerprint
from fedge.errors import FederationError
from fedge.node_keys import generate_node_key
from fedge.tls import CertPaths, generate_federation_certs
from server.cli.enroll import enroll_app
from server.enrollment.registry import Registry
from server.enrollment.rules import NodePublicKey, parse_node_public_key, parse_token
from server.enrollment.service import Enroller, NodeControl, SuperLinkControl, sync_nodes
from tests.conftest import Result
from tests.support.superlink import SuperLink, running_superlink

ACTOR = "operator test"


@dataclass
class FakeNodes:
    """The Control API as enrollment sees it; ``refuse``: keys ``register`` will not take."""

    nodes_by_id: dict[int, str] = field(default_factory=dict)
    refuse: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    next_id: int = 100

    def register(self, key: NodePublicKey, *, name: str) -> int:
        self.calls.append(f"register {name}")
        if key.fingerprint in self.refuse:
            raise FederationError(
                "`flwr supernode register` failed: Public key already in use while registering"
            )
        self.next_id += 1
        self.nodes_by_id[self.next_id] = "registered"
        return self.next_id

    def unregister(self, node_id: int) -> None:
        self.calls.append(f"unregister {node_id}")
        self.nodes_by_id[node_id] = "unregistered"

    def nodes(self) -> dict[int, str]:
        return dict(self.nodes_by_id)


@dataclass
class Coordinator:
    certs: CertPaths
    registry: Registry
    control: NodeControl

    def enroll(self, name: str) -> int:
        """Enroll ``name`` the way the endpoint does; its node id."""
        issued = self.registry.issue_token(
            name, ttl=600, ca_sha256=ca_fingerprint(self.certs.ca_cert.read_text()), actor=ACTOR
        )
        enroller = Enroller(
            self.registry,
            self.control,
            superlink="127.0.0.1:9095",
            ca_cert=self.certs.ca_cert.read_text(),
        )
        answer = enroller.enroll(
            {"token": issued.token, "public_key": generate_node_key()[1]}, peer="test"
        )
        return int(answer["node_id"])

    def actions(self) -> list[tuple[str, str]]:
        return [(entry.action, entry.subject) for entry in self.registry.audit()]


@pytest.fixture
def certs(tmp_path: Path) -> CertPaths:
    return generate_federation_certs(tmp_path / "certs")


def _coordinator(tmp_path: Path, certs: CertPaths, control: NodeControl) -> Coordinator:
    return Coordinator(certs, Registry.in_workdir(tmp_path / "coordinator"), control)


def test_sync_reconciles_both_ways_and_audits_each_action(tmp_path: Path, certs: CertPaths) -> None:
    fake = FakeNodes()
    coordinator = _coordinator(tmp_path, certs, fake)
    north, south, west = (coordinator.enroll(name) for name in ("north", "south", "west"))
    registry = coordinator.registry
    # west is revoked in the registry but its node is still admitted (a revocation cut short)
    registry.revoke("west", actor=ACTOR)
    # someone used the Control API behind fedge's back: a rogue node, and south's node dropped
    fake.nodes_by_id[7] = "online"
    fake.nodes_by_id[south] = "unregistered"
    fake.refuse.add(str(registry.holder("south").fingerprint))
    start = len(registry.audit())

    report = sync_nodes(registry, fake, actor=ACTOR)
    assert report.changes == [f"west: revoked, unregistered node {west}"]
    assert [(node.node_id, node.status) for node in report.unknown] == [(7, "online")]
    assert len(report.problems) == 2 and not report.agrees
    refused, unknown = report.problems
    assert refused.startswith("south: the SuperLink refused key SHA256:")
    assert "`fedge enroll rotate south` gives the holder a new key" in refused
    assert unknown.startswith("node 7: online at the SuperLink but no data holder")
    assert "--unregister-unknown` removes it" in unknown
    assert fake.nodes_by_id[7] == "online"  # reported, not touched
    assert coordinator.actions()[start:] == [
        ("holder.reregister-failed", "south"),
        ("node.unregistered", "west"),
        ("node.unknown", "node 7"),
    ]
    assert registry.holder("north").node_id == north

    # with --unregister-unknown the rogue node goes; south still needs its holder
    report = sync_nodes(registry, fake, actor=ACTOR, unregister_unknown=True)
    assert report.changes == ["node 7: unknown to the registry, unregistered"]
    assert fake.nodes_by_id[7] == "unregistered"
    assert [line.split(":")[0] for line in report.problems] == ["south"]
    assert coordinator.actions()[-1] == ("node.unregistered-unknown", "node 7")

    # once the SuperLink takes south's key again (a restarted SuperLink), all agree
    fake.refuse.clear()
    report = sync_nodes(registry, fake, actor=ACTOR, unregister_unknown=True)
    assert report.agrees and report.changes[0].startswith("south: registered key SHA256:")
    assert coordinator.actions()[-1] == ("holder.reregistered", "south")
    again = sync_nodes(registry, fake, actor=ACTOR, unregister_unknown=True)
    assert again.agrees and again.changes == [] and again.unknown == []


def test_a_node_of_an_enrollment_in_progress_is_left_alone(
    tmp_path: Path, certs: CertPaths
) -> None:
    """Between registering a key and recording it, the node looks unknown: sync waits."""
    fake = FakeNodes()
    coordinator = _coordinator(tmp_path, certs, fake)
    registry = coordinator.registry
    issued = registry.issue_token(
        "east", ttl=600, ca_sha256=ca_fingerprint(certs.ca_cert.read_text()), actor=ACTOR
    )
    time.sleep(0.01)  # the claim comes after the holder row
    registry.claim(parse_token(issued.token)[0], actor=ACTOR)
    node = fake.register(parse_node_public_key(generate_node_key()[1]), name="east")
    report = sync_nodes(registry, fake, actor=ACTOR, unregister_unknown=True)
    assert fake.nodes_by_id[node] == "registered"
    assert report.problems == [
        f"node {node}: registered at the SuperLink but no data holder in the registry has it "
        "(not enrolled through fedge); left alone while east enroll(s); run sync again"
    ]
    assert registry.claims_in_flight(within=3600) == ["east"]
    assert (
        Registry(registry.path, clock=lambda: time.time() + 3600).claims_in_flight(within=300) == []
    )


def _app() -> typer.Typer:
    app = new_app("fedge", "test")
    app.add_typer(enroll_app, name="enroll")
    return app


def test_the_sync_command_exits_1_while_anything_disagrees(
    tmp_path: Path, certs: CertPaths, cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeNodes()
    coordinator = _coordinator(tmp_path, certs, fake)
    coordinator.enroll("north")
    fake.nodes_by_id[7] = "online"
    monkeypatch.setattr(service, "SuperLinkControl", lambda home: fake)
    base = ["enroll", "sync", "--superlink", "127.0.0.1:9092", "--ca", certs.ca_cert]
    base += ["--workdir", tmp_path / "coordinator"]

    found = cli(_app(), *base)
    assert found.code == 1, found.err
    assert "problem: node 7: online at the SuperLink" in found.out
    assert "0 change(s), 1 problem(s) left" in found.err and found.err.count("\n") == 1
    fixed = cli(_app(), *base, "--unregister-unknown")
    assert fixed.code == 0, fixed.err
    assert "node 7: unknown to the registry, unregistered" in fixed.out
    assert "1 change(s); the SuperLink agrees with the registry" in fixed.out
    audit = cli(_app(), "enroll", "audit", "--workdir", tmp_path / "coordinator", "-o", "json")
    assert '"node.unknown"' in audit.out and '"node.unregistered-unknown"' in audit.out


# ---------------------------------------------------------------- a real SuperLink, via flwr


@pytest.fixture
def auth_superlink(tmp_path: Path) -> Iterator[SuperLink]:
    with running_superlink(tmp_path / "superlink", supernode_auth=True) as link:
        yield link


@pytest.mark.slow
def test_sync_against_a_real_superlink(
    tmp_path: Path, auth_superlink: SuperLink, cli: Callable[..., Result]
) -> None:
    started = time.monotonic()
    control = SuperLinkControl(auth_superlink.flwr_home)
    coordinator = _coordinator(tmp_path, auth_superlink.certs, control)
    north = coordinator.enroll("north")
    base: list[object] = ["enroll", "sync", "--superlink", auth_superlink.address]
    base += ["--ca", auth_superlink.certs.ca_cert, "--workdir", tmp_path / "coordinator"]
    assert cli(_app(), *base).code == 0

    # behind fedge's back: a node registered with flwr, and north's node unregistered
    rogue = control.register(parse_node_public_key(generate_node_key()[1]), name="rogue")
    control.unregister(north)
    found = cli(_app(), *base)
    assert found.code == 1
    assert f"problem: node {rogue}: registered at the SuperLink" in found.out
    assert "problem: north: the SuperLink refused key SHA256:" in found.out
    assert "Public key already in use" in found.out, found.out  # Flower keeps it reserved
    assert "fedge enroll rotate north" in found.out

    removed = cli(_app(), *base, "--unregister-unknown")
    assert removed.code == 1  # north's key still cannot come back
    assert f"node {rogue}: unknown to the registry, unregistered" in removed.out
    assert control.nodes()[rogue] == "unregistered"
    actions = coordinator.actions()
    assert ("node.unknown", f"node {rogue}") in actions
    assert ("node.unregistered-unknown", f"node {rogue}") in actions
    assert actions.count(("holder.reregister-failed", "north")) == 2
    print(f"enroll sync against a real SuperLink: {time.monotonic() - started:.1f} s")
