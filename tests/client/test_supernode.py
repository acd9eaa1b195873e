"""The data holder's SuperNode (client/node/supernode.py) and the warm executor's patches.

The command lines (node config quoting, the warm pair through client/node/warm.py), the patch
that caps the SuperNode loop's sleep, and process supervision: a busy port and a dead SuperNode
refused, a missing binary, idempotent stop, and a child that ignores SIGTERM killed with the group.
The real SuperNodes joining a real SuperLink are in tests/server/test_deployment_engine.py.
"""

from __future__ import annotations

import functools
import socket
import sys
import time
from pathlib import Path

import pytest

from client.node.supernode import (
    SuperNodeProcess,
    WarmCommands,
    WarmSuperNodeProcess,
    node_config_string,
    supernode_command,
    warm_commands,
)
from fedge.errors import FederationError, UsageError
from fedge.process import LOOPBACK
from tests.support.superlink import free_port

# ---------------------------------------------------------------------------- supernode command


def test_supernode_command_quotes_the_node_config(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args

    odd = tmp_path / 'a "quoted" dir\\with back slash'
    command = supernode_command(
        superlink="127.0.0.1:9092",
        root_certificates=tmp_path / "ca.crt",
        runtime_port=9094,
        data_path=odd / "client-0.tsv",
        state_dir=tmp_path / "state 0",
        client_name="hospital 'north'",
        policy_path=tmp_path / "own.yaml",
        eval_fraction=0.25,
    )
    assert command[0] == "flower-supernode"
    assert "--insecure" not in command
    assert command[command.index("--root-certificates") + 1] == str(tmp_path / "ca.crt")
    assert command[command.index("--port") + 1] == "9094"
    parsed = parse_config_args([command[command.index("--node-config") + 1]])
    assert parsed == {
        "data-path": str(odd / "client-0.tsv"),
        "state-dir": str(tmp_path / "state 0"),
        "client-name": "hospital 'north'",
        "policy-path": str(tmp_path / "own.yaml"),
        "eval-fraction": 0.25,
    }
    with pytest.raises(UsageError, match="runtime_port"):
        supernode_command(
            superlink="x:1",
            root_certificates="ca",
            runtime_port=0,
            data_path="d",
            state_dir="s",
            client_name="c",
        )
    with pytest.raises(UsageError, match="not a usable key"):
        node_config_string({"a b": "x"})


def test_warm_commands_run_both_halves_through_client_warm(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args

    from client.node.warm import parse_node_config

    commands = warm_commands(
        superlink="127.0.0.1:9092",
        root_certificates=tmp_path / "ca.crt",
        runtime_port=9094,
        data_path=tmp_path / 'odd "dir"' / "client-0.tsv",
        state_dir=tmp_path / "state",
        client_name="north",
        policy_path=tmp_path / "own.yaml",
    )
    node, executor = commands.supernode, commands.superexec
    assert node[:4] == [sys.executable, "-m", "client.node.warm", "supernode"]
    assert node[node.index("--isolation") + 1] == "process"
    assert node[node.index("--host") + 1] == "127.0.0.1"  # the Runtime API stays on loopback
    assert "--insecure" not in node  # the SuperLink connection is TLS
    assert executor[:4] == [sys.executable, "-m", "client.node.warm", "superexec"]
    assert executor[executor.index("--runtime-api-address") + 1] == "127.0.0.1:9094"
    assert "--insecure" in executor  # plain HTTP, loopback only
    assert "--parent-pid" not in executor  # WarmSuperNodeProcess adds the SuperNode's pid
    node_config = node[node.index("--node-config") + 1]
    preload = executor[executor.index("--preload-node-config") + 1]
    assert preload == node_config
    assert parse_node_config(preload) == parse_config_args([node_config])
    assert parse_node_config('{"data-path": "/d"}') == {"data-path": "/d"}
    # the default command is unchanged
    plain = supernode_command(
        superlink="127.0.0.1:9092",
        root_certificates=tmp_path / "ca.crt",
        runtime_port=9094,
        data_path="d",
        state_dir="s",
        client_name="c",
    )
    assert plain[0] == "flower-supernode" and "--isolation" not in plain


def test_the_supernode_sleep_cap_touches_only_its_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr.supernode.start_client_internal as loop

    from client.node.warm import cap_supernode_sleep

    monkeypatch.setattr(loop, "time", time)  # both restored after the test
    monkeypatch.setattr(loop, "pull_objects", vars(loop)["pull_objects"])
    assert cap_supernode_sleep(0.05)
    shim = vars(loop)["time"]
    started = time.monotonic()
    shim.sleep(3)
    assert time.monotonic() - started < 1.0
    assert shim is not time and shim.monotonic is time.monotonic
    assert time.sleep is not shim.sleep  # the real module is untouched
    pull = vars(loop)["pull_objects"]
    assert isinstance(pull, functools.partial) and pull.keywords == {"initial_backoff": 0.05}
    with pytest.raises(ValueError, match="idle poll"):
        cap_supernode_sleep(0)


def test_warm_supernode_refuses_a_busy_port_and_a_dead_supernode(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        commands = WarmCommands(["python", "-c", "pass"], ["python", "-c", "pass"], LOOPBACK, port)
        with pytest.raises(FederationError, match=f"port {port} on 127.0.0.1 is in use"):
            WarmSuperNodeProcess(commands, state_dir=tmp_path).start()
    dead = WarmCommands(
        ["python", "-c", "raise SystemExit(3)"], ["python", "-c", "pass"], LOOPBACK, free_port()
    )
    node = WarmSuperNodeProcess(dead, state_dir=tmp_path, grace=1.0)
    with pytest.raises(FederationError, match="stopped before its Runtime API listened"):
        node.start()
    assert node.superexec is None and not node.running()
    assert node.stop() == 3  # idempotent after a failed start
    assert node.stop() == 3


def test_supernode_process_missing_binary_and_idempotent_stop(tmp_path: Path) -> None:
    node = SuperNodeProcess(["fedge-no-such-supernode", "--help"], state_dir=tmp_path)
    with pytest.raises(FederationError, match="fedge-no-such-supernode: not found"):
        node.start()
    assert node.stop() is None
    assert node.stop() is None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_supernode_process_stops_its_whole_group(tmp_path: Path) -> None:
    """A child that ignores SIGTERM is killed with the group once the grace period ends."""
    script = (
        "import signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        'print("ready", flush=True); time.sleep(60)\'])\n'
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    node = SuperNodeProcess(["python", "-c", script], state_dir=tmp_path, grace=1.0)
    with node:
        deadline = time.monotonic() + 20
        while "ready" not in node.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(node.log_text().split()[0])
        assert node.running()
    assert not node.running()
    deadline = time.monotonic() + 5  # SIGKILL is asynchronous: the child goes within moments
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
