"""``fedge demo --console``: the operator's console over the finished demo, until Ctrl-C.

Started inside the demo's exit stack, after the report: the broker, the edge agents and the
enrollment endpoint stay up, so the console shows the demo's run, holders, placement and live
fleet, and its actions work (a token it issues pins the demo's federation CA and names the
demo's enrollment endpoint; a rollback reaches a real agent). Everything it needs is read from
the demo's folder, as ``fedge console`` would be pointed at it: the registry in
``coordinator/``, ``placement.sqlite``, and the broker folder's operator account and CA.

Ctrl-C stops the console and then the demo's processes (exit 130, as every fedge command);
SIGTERM does the same and exits 0 (an asked-for end, as ``fedge proxy run``).
"""

from __future__ import annotations

import signal
import time
from types import FrameType

from rich.console import Console

from fedge.process import LOOPBACK
from server.demo.context import DemoContext

__all__ = ["serve_console"]


class _TerminatedError(Exception):
    """SIGTERM arrived: stop the console, then let the demo's exit stack stop the rest."""


def serve_console(ctx: DemoContext, console: Console, *, port: int) -> None:
    """Serve the console on 127.0.0.1:``port`` (0: any free port) until Ctrl-C or SIGTERM."""
    from server.console.actions import ActionSettings
    from server.console.fleet_watch import FleetSettings
    from server.console.serve import ConsoleServer, ConsoleSettings
    from server.demo.fleet import FLEET
    from server.fleet.controller import BrokerEndpoint
    from server.kit.broker import OPERATOR, BrokerFolder

    broker = BrokerFolder(ctx.w / "broker")
    _host, broker_port = broker.address()
    ca = broker.ca_cert()
    password_file = broker.password_file(OPERATOR)
    endpoint = BrokerEndpoint(
        host=LOOPBACK,
        port=broker_port,
        ca_file=ca,
        username=OPERATOR,
        password=broker.password(OPERATOR),
    )
    flags: tuple[tuple[str, str | bool], ...] = (
        ("broker", f"{LOOPBACK}:{broker_port}"),
        ("fleet", FLEET),
        ("ca", str(ca)),
        ("username", OPERATOR),
        ("password_file", str(password_file)),
    )
    settings = ConsoleSettings(
        workdir=ctx.w,
        host=LOOPBACK,
        port=port,
        registry_dir=ctx.w / "coordinator",
        placement_state=ctx.w / "placement.sqlite",
        fleet=FleetSettings(endpoint=endpoint, fleet=FLEET, flags=flags),
        actions=ActionSettings(ca=ctx.w / "pki" / "ca.crt", coordinator=ctx.coordinator),
    )
    server = ConsoleServer(settings)

    def terminated(_signum: int, _frame: FrameType | None) -> None:
        raise _TerminatedError

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        server.start()
        try:
            console.print(f"console: {server.url}", markup=False)
            console.print(f"token: {server.token}", markup=False)
            console.print(
                "the demo's broker, agents and enrollment endpoint stay up; Ctrl-C stops all",
                markup=False,
            )
            # until Ctrl-C, or SIGTERM's handler, raises. Short naps: a signal the kernel hands
            # to another thread (uvicorn's, paho's) only runs its Python handler once the main
            # thread wakes, so a long sleep would leave SIGTERM waiting for it
            while True:
                time.sleep(0.5)
        finally:
            server.stop()
    except _TerminatedError:
        console.print("stopped (SIGTERM)", markup=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
