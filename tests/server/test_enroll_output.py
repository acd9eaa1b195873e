"""``fedge enroll list/audit -o ...``: documented JSON/YAML, whole cells in a pipe, and an
unknown ``--name`` refused with exit 2. The registry is real (SQLite); no SuperLink is needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml

from fedge.cli import new_app
from fedge.output_schemas import schema_for
from fedge.tls import generate_federation_certs
from server.cli.enroll import enroll_app
from tests.conftest import Result

REASON = "left the consortium; " + "contract ended on 2026-11-30, see ticket OPS-4242 " * 3


@pytest.fixture(scope="module")
def fedge() -> typer.Typer:
    app = new_app("fedge", "test")
    app.add_typer(enroll_app, name="enroll")
    return app


@pytest.fixture
def workdir(cli, fedge: typer.Typer, tmp_path: Path) -> Path:
    """Two holders: ``north`` pending, ``south`` revoked with a long reason."""
    ca = generate_federation_certs(tmp_path / "certs").ca_cert
    workdir = tmp_path / "coordinator"
    for name in ("north", "south"):
        issued = cli(fedge, "enroll", "token", name, "--ca", ca, "--workdir", workdir)
        assert issued.code == 0, issued.err
    revoked = cli(fedge, "enroll", "revoke", "south", "--workdir", workdir, "--reason", REASON)
    assert revoked.code == 0, revoked.err
    return workdir


def _json(result: Result, kind: str) -> dict[str, Any]:
    assert result.code == 0, result.err
    doc: dict[str, Any] = json.loads(result.out)
    jsonschema.validate(doc, schema_for(kind))
    return doc


def test_enroll_list_json_has_its_documented_schema(cli, fedge: typer.Typer, workdir: Path) -> None:
    doc = _json(cli(fedge, "enroll", "list", "--workdir", workdir, "-o", "json"), "HolderList")
    assert [(h["name"], h["state"]) for h in doc["items"]] == [
        ("north", "pending"),
        ("south", "revoked"),
    ]
    assert doc["superlink"] is None and doc["workdir"] == str(workdir)
    as_yaml = cli(fedge, "enroll", "list", "--workdir", workdir, "-o", "yaml")
    assert as_yaml.code == 0 and yaml.safe_load(as_yaml.out) == doc


def test_enroll_audit_json_has_its_documented_schema(
    cli, fedge: typer.Typer, workdir: Path
) -> None:
    result = cli(fedge, "enroll", "audit", "--workdir", workdir, "--name", "south", "-o", "json")
    doc = _json(result, "AuditLog")
    assert doc["name"] == "south"
    assert {e["subject"] for e in doc["items"]} == {"south"}
    assert any(REASON.strip() in e["detail"] for e in doc["items"]), doc["items"]
    seqs = [e["seq"] for e in doc["items"]]
    assert seqs == sorted(seqs)  # oldest first


def test_audit_table_shows_a_long_reason_whole_off_a_terminal(
    cli, fedge: typer.Typer, workdir: Path
) -> None:
    result = cli(fedge, "enroll", "audit", "--workdir", workdir)
    assert result.code == 0, result.err
    rows = [line for line in result.out.splitlines() if "south" in line and "revoke" in line]
    assert len(rows) == 1 and REASON.strip() in rows[0], result.out
    assert "…" not in result.out
    assert result.out.rstrip().endswith("audit entries")


def test_audit_of_an_unknown_holder_exits_2(cli, fedge: typer.Typer, workdir: Path) -> None:
    result = cli(fedge, "enroll", "audit", "--workdir", workdir, "--name", "nobody")
    assert result.code == 2 and result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "--name nobody" in lines[0], lines
