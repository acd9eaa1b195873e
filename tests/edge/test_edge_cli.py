"""``fedge-agent run`` and ``status``: bad input is one line and exit 2; status reads local state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from edge_agent.cli import app
from fedge.signing import generate_keypair
from tests.conftest import Result


def write_config(folder: Path, **broker: object) -> Path:
    spec_broker: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 8883,
        "tls": {"enabled": True, "caFile": "ca.pem"},
        "username": "dev-1",
        "passwordRef": {"env": "FEDGE_TEST_UNSET_PASSWORD"},
    }
    spec_broker.update(broker)
    document = {
        "apiVersion": "fedge/v1",
        "kind": "AgentConfig",
        "metadata": {"name": "dev-1"},
        "spec": {
            "deviceId": "dev-1",
            "fleet": "lab",
            "broker": spec_broker,
            "trustedKeys": [generate_keypair().public.inline],
            "stateDir": "state",
        },
    }
    path = folder / "agent.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def test_run_names_a_missing_ca_file_and_exits_2(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    result = cli(app, "run", "--config", write_config(tmp_path))
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1
    assert "spec.broker.tls.caFile" in lines[0] and "ca.pem does not exist" in lines[0]


def test_run_names_a_missing_password_variable_and_exits_2(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    (tmp_path / "ca.pem").write_text("not used before the password", encoding="utf-8")
    result = cli(app, "run", "--config", write_config(tmp_path))
    assert result.code == 2
    assert "FEDGE_TEST_UNSET_PASSWORD is not set" in result.err
    assert "Traceback" not in result.err


def test_status_of_a_device_that_never_ran(cli: Callable[..., Result], tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x", encoding="utf-8")
    config = write_config(tmp_path, passwordRef={"file": "pw"})
    (tmp_path / "pw").write_text("secret-password", encoding="utf-8")
    result = cli(app, "status", "--config", config)
    assert result.code == 0, result.err
    assert "device      dev-1 (fleet lab)" in result.out
    assert "agent       not running, birth seq 0" in result.out
    assert "deployment  none yet" in result.out
    assert "secret-password" not in result.out
