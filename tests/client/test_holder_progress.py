"""``fedge-client start``'s loop (client/node/holder.py) and the round log it prints from.

The round log (client/federation/round_log.py) is followed from where it ended; SIGTERM stops
the node's whole process group and ends the loop cleanly; a node that stopped after Flower's
key refusal, with no coordinator to confirm a revocation, says so. The same against a real
SuperLink, with real holders, is tests/server/test_holder_lifecycle.py.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from client.federation.round_log import (
    ROUND_LOG,
    RoundEntry,
    RoundFollower,
    append_round,
    format_round,
)
from client.node.enroll import JoinInfo
from client.node.holder import serve
from client.node.supernode import SuperNodeProcess
from fedge.errors import FederationError
from fedge.process import group_alive


def test_rounds_are_followed_from_where_the_log_ended(tmp_path: Path) -> None:
    old = RoundEntry("earlier", 1, 1, declined=False, epsilon=1.0, target_epsilon=8.0)
    append_round(tmp_path, old)  # a previous session's round: not printed again
    follower = RoundFollower(tmp_path)
    assert follower.poll() == []
    trained = RoundEntry(
        "run-7", 2, 3, declined=False, epsilon=2.5, target_epsilon=8.0, examples=48,
        train_seconds=1.25,
    )  # fmt: skip
    declined = RoundEntry(
        "run-7", 3, 3, declined=True, epsilon=7.9, target_epsilon=8.0,
        reason="round 3 would spend epsilon 8.4 of 8",
    )  # fmt: skip
    append_round(tmp_path, trained)
    # half a line (a writer mid-append) waits for the rest
    with (tmp_path / ROUND_LOG).open("ab") as handle:
        handle.write(b'{"run_id": "run-7", ')
    found = follower.poll()
    assert [(e.run_id, e.round, e.examples) for e in found] == [("run-7", 2, 48)]
    assert found[0].at  # stamped when written
    with (tmp_path / ROUND_LOG).open("ab") as handle:
        handle.write(b'"broken": true}\n')  # completes a line that is no entry: skipped
    append_round(tmp_path, declined)
    assert [e.reason for e in follower.poll()] == [declined.reason]
    assert follower.poll() == []
    assert (tmp_path / ROUND_LOG).stat().st_mode & 0o777 == 0o600
    assert len((tmp_path / ROUND_LOG).read_text().splitlines()) == 4
    assert json.loads((tmp_path / ROUND_LOG).read_text().splitlines()[1])["round"] == 2

    assert format_round(found[0]) == (
        "round 2/3 (run run-7): trained on 48 examples in 1.2 s; epsilon 2.500 of 8 spent"
    )
    assert format_round(declined) == (
        "round 3/3 (run run-7): declined (round 3 would spend epsilon 8.4 of 8); "
        "epsilon 7.900 of 8 spent"
    )


def test_a_log_that_cannot_be_written_does_not_fail_the_round(tmp_path: Path) -> None:
    blocked = tmp_path / "state"
    blocked.write_text("a file where the state folder should be")
    append_round(blocked, RoundEntry("r", 1, 1, declined=True, epsilon=0, target_epsilon=1))
    assert RoundFollower(blocked).poll() == []
    if os.getuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        append_round(locked, RoundEntry("r", 1, 1, declined=True, epsilon=0, target_epsilon=1))
        assert not (locked / ROUND_LOG).exists()


def _join(tmp_path: Path) -> JoinInfo:
    """A join file's values pointing at a coordinator nobody runs (no verdict to be had)."""
    return JoinInfo(
        name="north", node_id=7, superlink="127.0.0.1:1", root_certificates=str(tmp_path / "ca"),
        auth_private_key=str(tmp_path / "no.key"), fingerprint="", coordinator="127.0.0.1:1",
        enrolled_at="",
    )  # fmt: skip


def test_sigterm_stops_the_node_group_and_ends_the_loop(tmp_path: Path) -> None:
    # a "SuperNode" with a child of its own, as Flower's starts a SuperExec
    node = SuperNodeProcess(
        ["sh", "-c", "sleep 60 & sleep 60; wait"], state_dir=tmp_path, grace=5.0
    )
    said: list[str] = []

    def started() -> None:
        append_round(tmp_path, RoundEntry("r", 1, 2, declined=False, epsilon=1, target_epsilon=8))
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()

    before = signal.getsignal(signal.SIGTERM)
    assert serve(node, state_dir=tmp_path, join=None, on_start=started, say=said.append, poll=0.1)
    assert said == ["round 1/2 (run r): trained on 0 examples; epsilon 1.000 of 8 spent"]
    assert node.pid is not None and not group_alive(node.pid)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_a_refused_key_without_a_verdict_is_a_hint_not_a_claim(tmp_path: Path) -> None:
    refused = "echo '[code: 2004] Failed to activate SuperNode.'; exit 1"
    node = SuperNodeProcess(["sh", "-c", refused], state_dir=tmp_path, grace=5.0)
    with pytest.raises(FederationError) as stopped:
        serve(node, state_dir=tmp_path, join=_join(tmp_path), on_start=lambda: None, say=print)
    message = str(stopped.value)
    assert "refused this node's key" in message and "could not confirm" in message, message
    assert "was revoked" not in message
