"""``fedge-client budget -o ...``: the ledger as a documented JSON/YAML object, and a table whose
cells arrive whole in a pipe."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from client.cli import app
from fedge.output_schemas import schema_for
from tests.conftest import EXAMPLES

LONG_RUN = "run-" + "0123456789abcdef" * 6  # longer than any terminal column


@pytest.fixture
def charged(tmp_path: Path) -> tuple[Path, Path]:
    """A policy and a state folder whose ledger holds two charged rounds."""
    from client.privacy.ledger import PrivacyLedger
    from policies import FederationPolicy, load_one

    policy = tmp_path / "federation.yaml"
    policy.write_text((EXAMPLES / "federation.yaml").read_text())
    state = tmp_path / "state"
    ledger = PrivacyLedger.for_policy(state, load_one(policy, FederationPolicy))
    for number in (1, 2):
        ledger.record(
            round=number, run_id=LONG_RUN, noise_multiplier=1.1, sample_rate=0.01, steps=100
        )
    return policy, state


def test_budget_json_has_its_documented_schema(cli, charged: tuple[Path, Path]) -> None:
    policy, state = charged
    result = cli(app, "budget", "--policy", policy, "--state-dir", state, "-o", "json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    jsonschema.validate(doc, schema_for("PrivacyBudget"))
    assert doc["kind"] == "PrivacyBudget"
    assert [item["round"] for item in doc["items"]] == [1, 2]
    assert doc["items"][1]["epsilonTotal"] == pytest.approx(doc["spent"])
    assert doc["remaining"] == pytest.approx(doc["targetEpsilon"] - doc["spent"])
    as_yaml = cli(app, "budget", "--policy", policy, "--state-dir", state, "--output", "yaml")
    assert as_yaml.code == 0 and yaml.safe_load(as_yaml.out) == doc


def test_budget_table_keeps_long_cells_whole_off_a_terminal(
    cli, charged: tuple[Path, Path]
) -> None:
    policy, state = charged
    table = cli(app, "budget", "--policy", policy, "--state-dir", state)
    assert table.code == 0, table.err
    rows = [line for line in table.out.splitlines() if LONG_RUN in line]
    assert len(rows) == 2, table.out  # the whole run id, one row per line
    assert "…" not in table.out and "recorded" not in table.out
    wide = cli(app, "budget", "--policy", policy, "--state-dir", state, "-o", "wide")
    assert "recorded" in wide.out and "federation" in wide.out
    bad = cli(app, "budget", "--policy", policy, "--state-dir", state, "-o", "xml")
    assert bad.code == 2 and "'xml' is not one of" in bad.err
