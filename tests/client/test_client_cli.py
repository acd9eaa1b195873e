"""The data holder's commands: every way its data or model can be unusable is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.cli import app
from tests.conftest import EXAMPLES


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "federation.yaml"
    path.write_text((EXAMPLES / "federation.yaml").read_text())
    return path


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'text\tlabel\n"unterminated\t1\n', "quote"),
        (b"text\tscore\nhello\t1\n", "no label column 'label'"),
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "binary"),
    ],
    ids=["corrupt", "missing-label-column", "empty", "binary"],
)
def test_bad_data_files_give_one_line_and_exit_2(
    cli, tmp_path: Path, policy: Path, content: bytes, expected: str
) -> None:
    data = tmp_path / "mine.tsv"
    data.write_bytes(content)
    result = cli(app, "check", "--data", data, "--policy", policy)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"fedge-client: error: {data}") and expected in lines[0], lines[0]
    assert "Traceback" not in result.err


def test_a_model_folder_that_does_not_exist(cli, tmp_path: Path, policy: Path) -> None:
    policy.write_text(
        policy.read_text().replace("source: builtin:all-MiniLM-L6-v2", "source: ./no-such-model")
    )
    data = tmp_path / "mine.tsv"
    data.write_text("text\tlabel\ngood\t1\nbad\t0\n")
    result = cli(app, "check", "--data", data, "--policy", policy)
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        f"fedge-client: error: {tmp_path / 'no-such-model'}: model folder does not exist"
    ]


def test_good_data_and_the_builtin_model_pass(cli, tmp_path: Path, policy: Path) -> None:
    data = tmp_path / "mine.tsv"
    data.write_text("text\tlabel\ngood\t1\nbad\t0\nfine\t1\n")
    result = cli(app, "check", "--data", data, "--policy", policy)
    assert result.code == 0, result.err
    assert "3 examples (per label: 1, 2)" in result.out


def test_synth_split_and_budget(cli, tmp_path: Path, policy: Path) -> None:
    out = tmp_path / "synth"
    assert (
        cli(
            app,
            "data",
            "synth",
            "--out",
            out,
            "--clients",
            "2",
            "--examples",
            "20",
            "--heldout",
            "10",
        ).code
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["client-0.tsv", "client-1.tsv", "heldout.tsv"]
    split = tmp_path / "split"
    result = cli(app, "data", "split", out / "client-0.tsv", "--out", split, "--clients", "2")
    assert result.code == 0, result.err
    assert sorted(p.name for p in split.iterdir()) == ["client-0.tsv", "client-1.tsv"]
    result = cli(app, "budget", "--policy", policy, "--state-dir", tmp_path / "state")
    assert result.code == 0 and "spent epsilon 0.000 of 8" in result.out
    result = cli(app, "data", "split", tmp_path / "nope.tsv", "--out", split)
    assert result.code == 2 and "nope.tsv" in result.err


def test_start_refuses_a_missing_ca_before_anything_runs(cli, tmp_path: Path, policy: Path) -> None:
    result = cli(
        app,
        "start",
        "--superlink",
        "127.0.0.1:1",
        "--ca",
        tmp_path / "ca.crt",
        "--data",
        tmp_path / "d.tsv",
        "--policy",
        policy,
        "--state-dir",
        tmp_path / "s",
    )
    assert result.code == 2
    assert (
        result.err.strip()
        == f"fedge-client: error: --ca {tmp_path / 'ca.crt'}: CA certificate not found"
    )
