"""SIGTERM on a real ``fedge-agent run`` (what systemd and ``docker stop`` send): a clean end.

The agent process gets SIGTERM (to its pid only, as ``docker stop`` does to a container's first
process); it must say it stopped, exit 0, leave no process of its own behind, free its HTTP
input's port, and have told the broker it went offline (its retained status).
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from fedge.process import LOOPBACK, listening
from fedge.signing import generate_keypair
from tests.support import edge_agents, mqtt_broker
from tests.support.edge_agents import eventually, spawn, write_agent_config

broker_certs = mqtt_broker.broker_certs
mosquitto = mqtt_broker.mosquitto
agents = edge_agents.agents

FLEET, DEVICE = "sig-fleet", "dev-term"


def _processes_naming(marker: Path) -> list[bytes]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if not stat[stat.rfind(")") + 2 :].startswith("Z") and str(marker).encode() in cmdline:
            found.append(cmdline)
    return found


def test_sigterm_stops_the_agent_whole(tmp_path: Path, mosquitto, agents) -> None:
    broker = mosquitto([(FLEET, DEVICE)])
    config = write_agent_config(
        tmp_path / DEVICE, broker, fleet=FLEET, device=DEVICE, trusted=[generate_keypair().public]
    )
    agent = spawn(agents, config)
    port = agent.http_port()
    with broker.client(*broker.operator) as operator:

        def presence() -> object:
            message = operator.latest.get(f"fedge/v1/{FLEET}/{DEVICE}/status")
            return message.json().get("state") if message is not None else None

        operator.wait_for(lambda: presence() == "online", timeout=30, what="online")
        assert agent.process is not None and agent.process.process is not None
        os.kill(agent.process.pid or 0, signal.SIGTERM)
        assert agent.process.process.wait(timeout=30) == 0, agent.tail()
        operator.wait_for(lambda: presence() == "offline", timeout=10, what="offline")
    assert f"fedge-agent {DEVICE}: stopped" in agent.tail()
    eventually(lambda: not _processes_naming(config), timeout=10, what="no agent process left")
    assert not listening(LOOPBACK, port)
    with socket.socket() as sock:  # a new agent could take the port again
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, port))
