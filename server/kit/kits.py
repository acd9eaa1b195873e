"""Startup kits: one folder per site with everything it needs and the exact command to start.

Why: a site (a hospital's data holder, a clinic's edge box) should need nothing from the
operator but one folder, handed over out of band, the way NVFlare provisions startup kits and
Greengrass provisions devices. Nothing in a kit has to be edited; the operator never copies a
file by hand.

A holder kit: ``token`` (one-time, expiring, pins the federation's CA; 0600), ``ca.crt`` (that CA,
for checking by eye or for ``fedge-client start --ca``), ``federation.yaml``
(the holder's own copy of the policy, which it checks every round against the coordinator's),
``start.sh`` (enroll on first run, then ``fedge-client start``), ``README.txt``.

A device kit: ``ca.crt`` (the broker's CA), ``device.password`` (0600), ``agent.yaml`` (an
AgentConfig: identity, broker, trusted signing keys, state and inputs; validated before it is
written), ``start.sh`` (``fedge-agent run``), ``README.txt``. The device's broker account is
created in the broker folder if missing (mosquitto must then re-read its files: SIGHUP).
"""

from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from fedge.atomic import atomic_write_text
from fedge.errors import UsageError
from fedge.signing import parse_public_key
from server.kit.broker import BrokerFolder

__all__ = ["DeviceKit", "HolderKit", "device_kit", "holder_kit"]

HOLDER_STATE = "state"


@dataclass(frozen=True)
class HolderKit:
    folder: Path
    name: str
    expires_at: str


@dataclass(frozen=True)
class DeviceKit:
    folder: Path
    username: str


def _fresh(out: Path, *, force: bool) -> Path:
    if out.exists() and any(out.iterdir()) and not force:
        raise UsageError(f"--out {out}: exists and is not empty (use --force to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _script(path: Path, lines: list[str]) -> None:
    atomic_write_text(path, "\n".join(["#!/bin/sh", *lines]) + "\n", mode=0o755)


def holder_kit(
    out: Path,
    *,
    name: str,
    token: str,
    expires_at: str,
    policy: Path,
    coordinator: str,
    ca: Path | None = None,
    force: bool = False,
) -> HolderKit:
    """Write a holder's kit around a token already issued for ``name`` (see the module doc)."""
    if not policy.is_file():
        raise UsageError(f"--policy {policy}: file does not exist")
    folder = _fresh(out, force=force)
    atomic_write_text(folder / "token", token + "\n", mode=0o600)
    shutil.copyfile(policy, folder / "federation.yaml")
    if ca is not None:
        shutil.copyfile(ca, folder / "ca.crt")
    enroll_args = ["enroll", "--coordinator", coordinator, "--state-dir", HOLDER_STATE]
    enroll = shlex.join(["fedge-client", *enroll_args, "--name", name])
    start = shlex.join(
        ["fedge-client", "start", "--policy", "federation.yaml", "--state-dir", HOLDER_STATE]
    )
    _script(
        folder / "start.sh",
        [
            f"# fedge data holder kit for {name}: enrolls once, then joins the federation.",
            "# Usage: ./start.sh YOUR-LABELLED-DATA-FILE [fedge-client start options]",
            "# (CSV, TSV or JSONL; it never leaves). A 2nd holder on one machine: --port 9095",
            "set -eu",
            'DATA=$(realpath "${1:?usage: ./start.sh YOUR-LABELLED-DATA-FILE}")',
            "shift",
            'cd "$(dirname "$0")"',
            f"if [ ! -f {HOLDER_STATE}/join.json ]; then",
            f"  FEDGE_ENROLL_TOKEN=$(cat token) {enroll}",
            "fi",
            f'exec {start} --data "$DATA" "$@"',
        ],
    )
    atomic_write_text(
        folder / "README.txt",
        f"fedge data holder kit for {name}\n\n"
        f"1. Keep this folder private: `token` enrolls exactly one holder, once, until "
        f"{expires_at}.\n"
        "2. Run ./start.sh with your labelled data file. The first run enrolls this machine "
        f"with the coordinator at {coordinator} (it checks the coordinator's CA against the "
        "token before sending anything), then it joins the federation and prints a line per "
        "round: epsilon spent of your budget, or why it declined.\n"
        "3. Ctrl-C or SIGTERM stops it and everything it started. federation.yaml is your own "
        "copy of the policy: a round the coordinator asks for beyond it is refused.\n",
    )
    return HolderKit(folder=folder, name=name, expires_at=expires_at)


def device_kit(
    out: Path,
    *,
    broker: BrokerFolder,
    fleet: str,
    device: str,
    trusted: list[str],
    http_port: int = 8080,
    force: bool = False,
) -> DeviceKit:
    """Write a device's kit; give ``device`` an account on ``broker`` if it has none."""
    if not trusted:
        raise UsageError("--trusted: give at least one signing key (fedge keys generate prints it)")
    keys = [parse_public_key(value).inline for value in trusted]
    username = broker.add_device(fleet, device)
    host, port = broker.address()
    folder = _fresh(out, force=force)
    shutil.copyfile(broker.ca_cert(), folder / "ca.crt")
    atomic_write_text(folder / "device.password", broker.password(username) + "\n", mode=0o600)
    document = {
        "apiVersion": "fedge/v1",
        "kind": "AgentConfig",
        "metadata": {"name": device, "labels": {"fleet": fleet}},
        "spec": {
            "deviceId": device,
            "fleet": fleet,
            "broker": {
                "host": host,
                "port": port,
                "tls": {"enabled": True, "caFile": "ca.crt"},
                "username": username,
                "passwordRef": {"file": "device.password"},
            },
            "trustedKeys": keys,
            "stateDir": "state",
            "input": {"folder": "inbox", "http": {"port": http_port}},
        },
    }
    text = yaml.safe_dump(document, sort_keys=False)
    from policies import AgentConfig, check_text, the_one

    the_one(check_text(text, name=str(folder / "agent.yaml")), AgentConfig, source="agent.yaml")
    atomic_write_text(folder / "agent.yaml", text)
    _script(
        folder / "start.sh",
        [
            f"# fedge device kit for {device} in fleet {fleet}: follows the fleet's rollouts.",
            "set -eu",
            'cd "$(dirname "$0")"',
            "exec fedge-agent run --config agent.yaml",
        ],
    )
    atomic_write_text(
        folder / "README.txt",
        f"fedge device kit for {device} (fleet {fleet})\n\n"
        f"Run ./start.sh. The agent connects to the broker at {host}:{port} with TLS (ca.crt) "
        f"as {username}, may use only its own topics, installs only models signed by the keys "
        "in agent.yaml, and classifies .txt files dropped in inbox/ and POSTs to "
        f"http://127.0.0.1:{http_port}/v1/classify.\n",
    )
    os.chmod(folder / "device.password", 0o600)
    return DeviceKit(folder=folder, username=username)
