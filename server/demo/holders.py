"""The data holders' stages: making each holder's data, and enrolling each holder.

Both run as ``fedge-client`` processes, as a real data holder would run them; the enrollment
endpoint they talk to is the operator's, served from this process. :class:`SimulatedNodes` stands
in for the SuperLink registration that the simulation engine does not need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.demo.context import DemoContext
from server.demo.processes import fedge_bin, run_tool

__all__ = ["SimulatedNodes", "enroll", "make_data"]


def make_data(ctx: DemoContext) -> Path:
    folder = ctx.data_dir
    with ctx.stage("data", "non-IID data for each data holder"):
        if ctx.o.data is not None:
            args = [fedge_bin("fedge-client"), "data", "split", str(ctx.o.data), "--out"]
            args += [str(folder), "--clients", str(ctx.o.clients), "--heldout", "0.2"]
            args += ["--alpha", "0.5"]
        else:
            args = [fedge_bin("fedge-client"), "data", "synth", "--out", str(folder)]
            args += ["--clients", str(ctx.o.clients), "--examples", str(ctx.o.examples)]
            args += ["--heldout", "200"]
        run_tool(args, what="fedge-client data")
    return folder


def enroll(ctx: DemoContext) -> None:
    from fedge.enroll_token import ca_fingerprint
    from fedge.tls import generate_federation_certs
    from server.enrollment.registry import Registry
    from server.enrollment.service import Enroller, EnrollmentServer

    names = [f"client-{i:0{len(str(ctx.o.clients - 1))}d}" for i in range(ctx.o.clients)]
    with ctx.stage("enroll", f"{len(names)} data holders, one-time tokens"):
        certs = generate_federation_certs(ctx.w / "pki")
        he_public = None
        if ctx.o.protection == "he":  # a data holder acts as the key custodian
            from server.federation.train import simulated_he_keys

            _secret, public = simulated_he_keys(ctx.run_dir / "he")
            he_public = public.read_bytes()
        ca = certs.ca_cert.read_text(encoding="utf-8")
        registry = Registry.in_workdir(ctx.w / "coordinator")
        enroller = Enroller(
            registry,
            SimulatedNodes(),
            superlink="simulation",
            ca_cert=ca,
            he_public_context=he_public,
        )
        server = EnrollmentServer(
            enroller, certfile=certs.server_cert, keyfile=certs.server_key
        ).start()
        ctx.stack.callback(server.stop)
        ctx.coordinator = server.address
        for name in names:
            issued = registry.issue_token(name, ttl=600, ca_sha256=ca_fingerprint(ca), actor="demo")
            run_tool(
                [
                    fedge_bin("fedge-client"),
                    "enroll",
                    "--coordinator",
                    server.address,
                    "--token",
                    issued.token,
                    "--state-dir",
                    str(ctx.run_dir / "clients" / name),
                ],
                what=f"fedge-client enroll ({name})",
            )
        active = [h.name for h in registry.holders() if h.state == "active"]
        ctx.state.notes.append(
            f"enrolled {', '.join(active)}: keys made by each holder, tokens one-time; the "
            "simulation engine's virtual nodes stand in for their SuperNodes"
        )


class SimulatedNodes:
    """Enrollment's node control for the simulation engine, which has no SuperLink.

    The registry, the tokens, the keys made on the holders' side and the audit log are the real
    ones; only the registration with a SuperLink is skipped, since the simulation's virtual
    nodes need none. The Deployment Engine uses server.enrollment.service.SuperLinkControl.
    """

    def __init__(self) -> None:
        self._nodes: dict[int, str] = {}

    def register(self, key: Any, *, name: str) -> int:
        node_id = len(self._nodes) + 1
        self._nodes[node_id] = name
        return node_id

    def unregister(self, node_id: int) -> None:
        self._nodes.pop(node_id, None)

    def nodes(self) -> dict[int, str]:
        return dict(self._nodes)
