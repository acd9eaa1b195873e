"""The three command-line tools: help, version, exit codes, one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from client.cli import app as client_app
from edge_agent.cli import app as agent_app
from fedge import __version__
from policies.source import parse_text
from server.cli.app import app as fedge_app
from tests.conftest import EXAMPLES


@pytest.mark.parametrize(
    ("app", "prog"),
    [(fedge_app, "fedge"), (client_app, "fedge-client"), (agent_app, "fedge-agent")],
)
def test_help_and_version(cli, app, prog) -> None:
    result = cli(app, "--version")
    assert (result.code, result.out.strip()) == (0, f"{prog} {__version__}")
    result = cli(app, "--help")
    assert result.code == 0 and "Usage:" in result.out
    result = cli(app, "--no-such-flag")
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{prog}: error: No such option")
    assert "--no-such-flag" in lines[0] and lines[0].endswith(f"(see '{prog} --help')")


def test_every_subcommand_has_help(cli) -> None:
    for argv in (
        ["policy", "validate"],
        ["policy", "schema"],
        ["keys", "generate"],
        ["artifact", "sign"],
        ["artifact", "verify"],
        ["demo"],
    ):
        result = cli(fedge_app, *argv, "--help")
        assert result.code == 0 and "Usage:" in result.out, argv
    for app, argv in ((client_app, ["inspect"]), (agent_app, ["check"]), (agent_app, ["verify"])):
        assert cli(app, *argv, "--help").code == 0


def test_validate_examples_exit_zero(cli) -> None:
    result = cli(fedge_app, "policy", "validate", *sorted(EXAMPLES.glob("*.yaml")))
    assert result.code == 0, result.err
    assert result.out.count("ok  ") == len(list(EXAMPLES.glob("*.yaml"))) == 7


def test_validate_prints_every_problem_and_exits_2(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: fedge/v1\nkind: RolloutPolicy\nmetadata: {name: r}\nspec:\n"
        "  soakTime: soon\n  canary: {device: 1}\n  health: {maxErrorRate: 2}\n"
    )
    result = cli(fedge_app, "policy", "validate", bad)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert lines[:3] == [
        f"{bad}:5:13: spec.soakTime: 'soon' is not a duration; write e.g. 30s, 10m, 1h30m or a number of seconds (got 'soon')",
        f"{bad}:6:12: spec.canary.device: unknown field 'device' (did you mean 'devices'?)",
        f"{bad}:7:26: spec.health.maxErrorRate: Input should be less than or equal to 1 (got 2)",
    ]
    assert lines[3:] == ["fedge: error: 3 problems found"]


def _run_console(*argv: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it (real exit code, real stderr)."""
    exe = shutil.which("fedge", path=str(Path(sys.executable).parent)) or "fedge"
    return subprocess.run([exe, *argv], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "file holds no YAML document"),
        (b"# only a comment\n---\n", "file holds no YAML document"),
        (b"apiVersion: fedge/v1\nkind: [unclosed\n", "YAML syntax error"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00binary", "binary content (NUL byte at offset 7)"),
        (b"kind: caf\xe9\n", "not UTF-8 text (invalid byte at offset 9)"),
    ],
)
def test_unusable_files_get_one_line_and_exit_2(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(content)
    result = _run_console("policy", "validate", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}:") and expected in lines[0], lines
    assert "Traceback" not in result.stderr + result.stdout


def test_a_50_mb_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as handle:
        handle.truncate(50 * 1000 * 1000)  # sparse: 50 MB on paper
    result = _run_console("policy", "validate", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{path}:1:1: file is 50.0 MB, over the 4 MiB limit for a policy file "
        "(policy files are small text documents)"
    ]
    assert "Traceback" not in result.stderr


def test_missing_file_and_folder(cli, tmp_path: Path) -> None:
    result = cli(fedge_app, "policy", "validate", tmp_path / "nope.yaml", tmp_path)
    assert result.code == 2
    assert f"{tmp_path / 'nope.yaml'}:1:1: file does not exist" in result.err
    assert f"{tmp_path}:1:1: is a folder, not a policy file" in result.err


@pytest.mark.parametrize(
    "kind",
    ["FederationPolicy", "PlacementPolicy", "RolloutPolicy", "CloudInventory", "AgentConfig"],
)
def test_schema_accepts_the_example_of_its_kind(cli, tmp_path: Path, kind: str) -> None:
    out = tmp_path / f"{kind}.json"
    assert cli(fedge_app, "policy", "schema", kind, "--out", out).code == 0
    schema = json.loads(out.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    example = next(
        doc.value
        for file in EXAMPLES.glob("*.yaml")
        for doc in parse_text(file.read_text(), name=file.name).documents
        if doc.value["kind"] == kind
    )
    jsonschema.validate(example, schema)
    broken = {**example, "spec": {**example["spec"], "notAField": 1}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_schema_of_unknown_kind(cli) -> None:
    result = cli(fedge_app, "policy", "schema", "Rollout")
    assert result.code == 2
    assert (
        result.err.strip() == "fedge: error: unknown kind 'Rollout' (did you mean 'RolloutPolicy'?)"
    )


def test_keys_sign_verify_and_tamper(cli, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    result = cli(fedge_app, "keys", "generate", "--out", keys)
    assert result.code == 0
    assert oct((keys / "signing.key").stat().st_mode & 0o777) == "0o600"
    inline = next(line.split()[-1] for line in result.out.splitlines() if "ed25519:" in line)
    again = cli(fedge_app, "keys", "generate", "--out", keys)
    assert again.code == 2 and "a signing key already exists (use --force" in again.err

    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "model.onnx").write_bytes(os.urandom(1000))
    signed = cli(
        fedge_app,
        "artifact",
        "sign",
        artifact,
        "--key",
        keys / "signing.key",
        "--name",
        "sentiment",
        "--version",
        "1.2.0",
        "--format",
        "onnx-int8",
        "--label",
        "app=s",
    )
    assert signed.code == 0, signed.err
    written = json.loads((artifact / "manifest.json").read_text())
    manifest_sha = hashlib.sha256((artifact / "manifest.json").read_bytes()).hexdigest()
    # the digests printed are the manifest's own contentDigest and the file's sha256, named
    assert f"contentDigest {written['contentDigest']}" in signed.out
    assert f"manifest sha256 {manifest_sha}" in signed.out
    for trusted in (str(keys / "signing.pub"), inline):
        assert cli(fedge_app, "artifact", "verify", artifact, "--trusted", trusted).code == 0

    config = tmp_path / "agent.yaml"
    config.write_text(
        (EXAMPLES / "agent.yaml")
        .read_text()
        .replace("ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=", "keys/signing.pub")
    )
    assert cli(agent_app, "check", "--config", config).code == 0
    assert cli(agent_app, "verify", artifact, "--config", config).code == 0

    data = bytearray((artifact / "model.onnx").read_bytes())
    data[500] ^= 0xFF
    (artifact / "model.onnx").write_bytes(bytes(data))
    for result in (
        cli(fedge_app, "artifact", "verify", artifact, "--trusted", inline),
        cli(agent_app, "verify", artifact, "--config", config),
    ):
        assert result.code == 1
        assert (
            result.err.strip().startswith("fedge") and ": error: model.onnx: sha256" in result.err
        )


def test_bad_label_flag(cli, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    from fedge.signing import generate_keypair

    generate_keypair().save(tmp_path / "k")
    result = cli(
        fedge_app,
        "artifact",
        "sign",
        tmp_path,
        "--key",
        tmp_path / "k" / "signing.key",
        "--name",
        "x",
        "--version",
        "1",
        "--label",
        "novalue",
    )
    assert result.code == 2 and "--label 'novalue': expected KEY=VALUE" in result.err


def test_client_inspect(cli, tmp_path: Path) -> None:
    result = cli(client_app, "inspect", EXAMPLES / "federation.yaml")
    assert result.code == 0 and "epsilon 8, delta 1e-05" in result.out
    result = cli(client_app, "inspect", EXAMPLES / "agent.yaml")
    assert result.code == 2
    assert "expected exactly one FederationPolicy document, found 0" in result.err


def test_demo_refuses_bad_options_in_one_line_before_starting_anything(cli, tmp_path: Path) -> None:
    """The demo's own run is tests/server/test_demo.py; here only its input checks."""
    bad = cli(fedge_app, "demo", "--workdir", tmp_path / "w", "--protection", "rot13")
    assert bad.code == 2 and "--protection 'rot13'" in bad.err and len(bad.err.splitlines()) == 1
    missing = cli(fedge_app, "demo", "--workdir", tmp_path / "w", "--data", tmp_path / "none.tsv")
    assert missing.code == 2 and "--data" in missing.err
    assert not (tmp_path / "w").exists()


def test_ctrl_c_in_a_command_exits_130_with_one_line(cli) -> None:
    """typer turns KeyboardInterrupt into a silent Exit(130); fedge still says what happened."""
    from fedge.cli import new_app

    app = new_app("fedge-test", "test")

    @app.command("wait")
    def wait() -> None:
        raise KeyboardInterrupt

    @app.command("other")
    def other() -> None:
        """A second command, so that typer keeps the subcommand level."""

    result = cli(app, "wait")
    assert result.code == 130
    assert result.err.strip() == "fedge-test: error: interrupted"
