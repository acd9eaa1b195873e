"""fedge.output and the ``-o`` plumbing of fedge.cli: the YAML writer reads back as written,
help shows ``[required]`` without typer's backslash, and ``fedge-agent status`` (the one
single-object document) keeps its ``--json`` as ``-o json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from client.cli import app as client_app
from edge_agent.cli import app as agent_app
from fedge.cli import _unescape_extra
from fedge.output import API_VERSION, OutputFormat, document, render, to_yaml
from fedge.output_schemas import SCHEMAS, schema_for
from server.cli.app import app as fedge_app
from tests.edge.test_edge_cli import write_config

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False)
    | st.text()
)
_JSONISH = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(_JSONISH)
def test_yaml_reads_back_as_the_same_value(value: Any) -> None:
    assert yaml.safe_load(to_yaml(value)) == value


def test_yaml_quotes_what_a_reader_would_take_for_something_else() -> None:
    doc = {"a": "yes", "b": "1.0", "c": "null", "d": "x: y", "e": 1e-05, "f": "- z", "g": ""}
    assert yaml.safe_load(to_yaml(doc)) == doc
    assert "e: 1.0e-05" in to_yaml(doc)  # a YAML 1.1 float needs its dot


def test_documents_share_one_envelope() -> None:
    doc = document("HolderList", [{"name": "north"}], workdir="w")
    assert doc == {
        "apiVersion": API_VERSION,
        "kind": "HolderList",
        "workdir": "w",
        "items": [{"name": "north"}],
    }
    assert json.loads(render(doc, OutputFormat.JSON)) == yaml.safe_load(
        render(doc, OutputFormat.YAML)
    )
    with pytest.raises(ValueError, match="not a document format"):
        render(doc, OutputFormat.TABLE)
    for kind, schema in SCHEMAS.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["title"] == kind
    with pytest.raises(KeyError, match="known: PrivacyBudget"):
        schema_for("Nope")


@pytest.mark.parametrize(
    ("escaped", "shown"),
    [
        ("Your policy.  \\[required]", "Your policy.  [required]"),
        ("\\[required]", "[required]"),
        ("How long.  \\[default: 24h]", "How long.  [default: 24h]"),
        ("Tries.  \\[default: 4; x>=1]", "Tries.  [default: 4; x>=1]"),
        ("a \\[literal] in help, no extra", "a \\[literal] in help, no extra"),
    ],
)
def test_unescape_undoes_only_typers_trailing_escape(escaped: str, shown: str) -> None:
    assert _unescape_extra(escaped) == shown


@pytest.mark.parametrize(
    ("app", "argv", "expected"),
    [
        (fedge_app, ["enroll", "token"], ["[required]", "[default: 24h]"]),
        (fedge_app, ["place", "urls"], ["[required]", "[default: json]"]),
        (client_app, ["budget"], ["[required]", "[default: table]"]),
        (agent_app, ["status"], ["[required]", "[default: table]"]),
    ],
)
def test_help_shows_required_and_default_without_a_backslash(
    cli, app: Any, argv: list[str], expected: list[str]
) -> None:
    result = cli(app, *argv, "--help")
    assert result.code == 0, result.err
    assert "\\[" not in result.out, result.out
    for text in expected:
        assert text in result.out, result.out


def test_agent_status_json_has_its_documented_schema(cli, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x", encoding="utf-8")
    config = write_config(tmp_path, passwordRef={"file": "pw"})
    (tmp_path / "pw").write_text("secret-password", encoding="utf-8")
    result = cli(agent_app, "status", "--config", config, "-o", "json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    jsonschema.validate(doc, schema_for("AgentStatus"))
    assert (doc["kind"], doc["deviceId"], doc["running"]) == ("AgentStatus", "dev-1", False)
    assert json.loads(cli(agent_app, "status", "--config", config, "--json").out) == doc
    as_yaml = cli(agent_app, "status", "--config", config, "-o", "yaml")
    assert yaml.safe_load(as_yaml.out) == doc
    wide = cli(agent_app, "status", "--config", config, "-o", "wide")
    assert f"state       {doc['stateDir']}" in wide.out
    both = cli(agent_app, "status", "--config", config, "--json", "-o", "yaml")
    assert both.code == 2 and "--json and -o yaml" in both.err
