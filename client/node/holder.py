"""``fedge-client start``'s foreground loop: run the node, report rounds, stop it whole.

Why it is its own module: three things must hold for as long as a data holder's node runs, and
each was once wrong. Every child (the SuperNode, the SuperExec, a ClientApp mid-round) is
stopped however the command ends: Ctrl-C, an error, or SIGTERM, which is what systemd and
``docker stop`` send and which by default kills Python without running any cleanup (the
children, each in a session of its own, were left holding their ports). The holder sees one line
per round its machine took part in, from its own round log (client/federation/round_log.py),
not from Flower's logs. And a node the coordinator revoked ends saying so
(client/node/revocation.py) instead of with Flower's connection error.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Literal

from client.federation.round_log import RoundFollower, format_round
from client.node.enroll import JoinInfo
from client.node.revocation import node_state, revoked_error
from client.node.supernode import SuperNodeProcess, WarmSuperNodeProcess
from fedge.errors import FederationError
from fedge.node_status import STATE_REVOKED

__all__ = ["check_not_revoked", "serve"]

Node = SuperNodeProcess | WarmSuperNodeProcess
REFUSAL_MARKS = ("Failed to activate SuperNode", "must be registered via the CLI")
"""What Flower 1.41's SuperNode logs when the SuperLink refuses its key (see
tests/server/test_enrollment_deployment.py, which checks both against a real SuperLink)."""


def check_not_revoked(join: JoinInfo | None, state_dir: Path) -> None:
    """Refuse to start a node the coordinator has revoked (no verdict: carry on)."""
    if join is not None and node_state(join) == STATE_REVOKED:
        raise revoked_error(join, state_dir)


def serve(
    node: Node,
    *,
    state_dir: Path,
    join: JoinInfo | None,
    on_start: Callable[[], None],
    say: Callable[[str], None],
    poll: float = 0.5,
) -> Literal["terminated"]:
    """Start ``node``, print its rounds until it stops, and stop all of it on the way out.

    Returns ``"terminated"`` after SIGTERM (everything stopped: a clean, asked-for end). Raises
    :class:`~client.node.revocation.NodeRevokedError` when the node stopped because the
    coordinator revoked it, FederationError when it stopped for any other reason; Ctrl-C
    (KeyboardInterrupt) passes through, after the node was stopped.
    """
    terminated = threading.Event()

    def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        terminated.set()  # the loop below notices within ``poll`` seconds and stops the node

    follower = RoundFollower(state_dir)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with node:
            on_start()
            while node.running() and not terminated.wait(poll):
                for entry in follower.poll():
                    say(format_round(entry))
            for entry in follower.poll():
                say(format_round(entry))
    finally:
        signal.signal(signal.SIGTERM, previous)
    if terminated.is_set():
        return "terminated"
    if join is not None and node_state(join) == STATE_REVOKED:
        raise revoked_error(join, state_dir)
    logs = f"{node.log_path}" + (
        f", {node.superexec_log_path}" if isinstance(node, WarmSuperNodeProcess) else ""
    )
    hint = ""
    if join is not None and any(mark in node.log_text()[-20000:] for mark in REFUSAL_MARKS):
        # Flower's own words for a key the SuperLink does not admit: only a hint, since the
        # coordinator, which alone can say "revoked", did not answer.
        hint = (
            " after the SuperLink refused this node's key (revoked, or rotated by another "
            f"enrollment?); the coordinator's enrollment endpoint {join.coordinator} could not "
            "confirm it"
        )
    raise FederationError(f"the SuperNode stopped{hint}; see {logs}")
