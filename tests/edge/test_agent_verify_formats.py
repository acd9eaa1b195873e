"""``fedge-agent verify`` refuses what the agent refuses: a manifest ``format`` it does not run.

The agent installs only formats in :data:`fedge.payload.ACCEPTED_FORMATS`; ``verify`` used to
pass any validly signed artifact, so an operator's check said ``ok`` for an artifact every device
would then refuse. Both now go through :func:`fedge.payload.check_format`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from edge_agent.cli import app
from fedge.errors import EdgeError
from fedge.manifest import Manifest
from fedge.payload import ACCEPTED_FORMATS, check_format
from fedge.signing import KeyPair, generate_keypair
from tests.conftest import Result
from tests.support.edge_artifacts import make_artifact

Cli = Callable[..., Result]


def write_config(folder: Path, keypair: KeyPair) -> Path:
    document = {
        "apiVersion": "fedge/v1",
        "kind": "AgentConfig",
        "metadata": {"name": "dev-1"},
        "spec": {
            "deviceId": "dev-1",
            "fleet": "lab",
            "broker": {"host": "127.0.0.1"},
            "trustedKeys": [keypair.public.inline],
            "stateDir": "state",
        },
    }
    path = folder / "agent.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def keypair() -> KeyPair:
    return generate_keypair()


@pytest.mark.parametrize("fmt", ["pytorch", "onnx", "ONNX-INT8", "onnx-int4", ""])
def test_verify_refuses_a_format_the_agent_does_not_run(
    cli: Cli, tmp_path: Path, keypair: KeyPair, fmt: str
) -> None:
    artifact = tmp_path / "artifact"
    make_artifact(artifact, keypair, fmt=fmt)
    result = cli(app, "verify", str(artifact), "--config", str(write_config(tmp_path, keypair)))
    assert result.code == EdgeError.exit_code == 1, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert f"format {fmt!r} is not one this agent runs" in lines[0]
    for accepted in ACCEPTED_FORMATS:
        assert accepted in lines[0], "the refusal lists what would be accepted"
    assert "ok" not in result.out


@pytest.mark.parametrize("fmt", sorted(ACCEPTED_FORMATS))
def test_verify_passes_an_accepted_format(
    cli: Cli, tmp_path: Path, keypair: KeyPair, fmt: str
) -> None:
    artifact = tmp_path / "artifact"
    manifest = make_artifact(artifact, keypair, fmt=fmt)
    result = cli(app, "verify", str(artifact), "--config", str(write_config(tmp_path, keypair)))
    assert result.code == 0, result
    assert f"ok  {manifest.name} {manifest.version}:" in result.out


def test_the_signature_is_checked_before_the_format(cli: Cli, tmp_path: Path) -> None:
    """An untrusted signer is the refusal, as on the device: nothing of an unverified manifest
    is reported, not even its format."""
    artifact = tmp_path / "artifact"
    make_artifact(artifact, generate_keypair(), fmt="pytorch")
    config = write_config(tmp_path, generate_keypair())
    result = cli(app, "verify", str(artifact), "--config", str(config))
    assert result.code != 0
    assert "pytorch" not in result.err
    assert "manifest.sig" in result.err


def test_check_format_is_the_one_rule(tmp_path: Path, keypair: KeyPair) -> None:
    accepted = make_artifact(tmp_path / "a", keypair, fmt="onnx-fp32")
    refused = make_artifact(tmp_path / "b", keypair, fmt="tflite")
    check_format(accepted)
    with pytest.raises(EdgeError, match=r"^manifest\.json: format 'tflite' is not one"):
        check_format(refused)
    assert isinstance(refused, Manifest)
