"""``fedge place plan/status/urls -o ...`` against local stores: documented JSON/YAML, whole
cells in a pipe, ``urls`` writing its file with ``--out``, and an unknown artifact refused."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml

from fedge.artifact import sign_artifact
from fedge.cli import new_app
from fedge.output_schemas import schema_for
from fedge.signing import generate_keypair
from server.cli.place import place_app
from tests.conftest import Result
from tests.support.cloud_servers import (
    inventory_document,
    local_target,
    placement_document,
    write_yaml,
)

LONG = "eu-archive-" + "x" * 50  # a target name wider than any terminal column


@pytest.fixture(scope="module")
def fedge() -> typer.Typer:
    app = new_app("fedge", "test")
    app.add_typer(place_app, name="place")
    return app


def _artifact(folder: Path, name: str) -> Path:
    folder.mkdir()
    (folder / "model.onnx").write_bytes(os.urandom(2_000))
    sign_artifact(
        folder, generate_keypair(), name=name, version="1.0", format="onnx-int8",
        labels={"app": "sentiment"},
    )  # fmt: skip
    return folder


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    inventory = write_yaml(
        tmp_path / "inventory.yaml",
        inventory_document(
            [
                local_target(tmp_path / "store-a"),
                local_target(tmp_path / "store-b", name=LONG),
                local_target(tmp_path / "store-us", name="us-local", residency="us"),
            ]
        ),
    )
    policy = write_yaml(
        tmp_path / "policy.yaml",
        placement_document(
            {
                "artifacts": {"matchLabels": {"app": "sentiment"}},
                "residency": ["eu"],
                "replicas": {"min": 2, "max": 2},
                "strategy": {"type": "ordered", "preference": ["eu-local", LONG]},
            }
        ),
    )
    return {
        "inventory": inventory,
        "policy": policy,
        "artifact": _artifact(tmp_path / "artifact", "sentiment"),
        "state": tmp_path / "state.sqlite",
    }


def _args(files: dict[str, Path], *names: str) -> list[str]:
    return [arg for name in names for arg in (f"--{name}", str(files[name]))]


def _doc(result: Result, kind: str) -> dict[str, Any]:
    assert result.code == 0, result.err
    doc: dict[str, Any] = json.loads(result.out)
    jsonschema.validate(doc, schema_for(kind))
    return doc


def test_plan_json_has_its_documented_schema_and_the_table_cuts_nothing(
    cli, fedge: typer.Typer, files: dict[str, Path]
) -> None:
    args = ["place", "plan", *_args(files, "policy", "inventory", "artifact")]
    doc = _doc(cli(fedge, *args, "-o", "json"), "PlacementPlan")
    assert doc["selected"] == ["eu-local", LONG] and doc["refused"] is False
    decisions = {d["target"]: d for d in doc["items"]}
    assert decisions["us-local"]["decision"] == "rejected"
    reason = decisions["us-local"]["reason"]
    assert "residency us" in reason
    assert yaml.safe_load(cli(fedge, *args, "-o", "yaml").out) == doc
    table = cli(fedge, *args)  # stdout is captured: not a terminal
    assert table.code == 0, table.err
    [us_row] = [line for line in table.out.splitlines() if "us-local" in line]
    assert reason in us_row
    assert any(LONG in line for line in table.out.splitlines()) and "…" not in table.out


def test_status_and_urls_json_have_their_documented_schemas(
    cli, fedge: typer.Typer, files: dict[str, Path], tmp_path: Path
) -> None:
    applied = cli(
        fedge, "place", "apply", *_args(files, "policy", "inventory", "artifact", "state")
    )
    assert applied.code == 0, applied.err
    status = _doc(
        cli(fedge, "place", "status", *_args(files, "state"), "-o", "json"), "PlacementStatus"
    )
    [version] = status["items"]
    assert (version["artifact"], version["health"]) == ("sentiment", "ok")
    assert {r["target"] for r in version["replicas"]} == {"eu-local", LONG}
    wide = cli(fedge, "place", "status", *_args(files, "state"), "-o", "wide")
    assert version["manifestDigest"] in wide.out

    urls_args = ["place", "urls", *_args(files, "inventory", "artifact", "state")]
    urls = _doc(cli(fedge, *urls_args), "ReplicaUrls")  # json is the default here
    assert [r["target"] for r in urls["replicas"]] == ["eu-local", LONG]
    assert _doc(cli(fedge, *urls_args, "-o", "json"), "ReplicaUrls") == urls
    assert yaml.safe_load(cli(fedge, *urls_args, "-o", "yaml").out) == urls
    table = cli(fedge, *urls_args, "-o", "table")
    assert table.code == 0 and any(LONG in line for line in table.out.splitlines())
    written = tmp_path / "urls.json"
    saved = cli(fedge, *urls_args, "--out", written)
    assert saved.code == 0 and "wrote" in saved.out
    assert json.loads(written.read_text()) == urls
    old_style = cli(fedge, *urls_args, "-o", written)  # -o is the format now; --out the file
    assert old_style.code == 2 and "'--output' / '-o'" in old_style.err


def test_status_and_urls_of_an_unknown_artifact_exit_2(
    cli, fedge: typer.Typer, files: dict[str, Path], tmp_path: Path
) -> None:
    applied = cli(
        fedge, "place", "apply", *_args(files, "policy", "inventory", "artifact", "state")
    )
    assert applied.code == 0, applied.err
    other = _artifact(tmp_path / "other", "never-placed")
    result = cli(fedge, "place", "status", *_args(files, "state"), "--artifact", other)
    assert result.code == 2 and result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "never-placed" in lines[0] and "--artifact" in lines[0], lines
    urls = cli(fedge, "place", "urls", *_args(files, "inventory", "state"), "--artifact", other)
    assert urls.code == 2 and urls.out == "" and "never placed" in urls.err
