"""``fedge explain`` and the trained demo model: signature first, then the device's occlusion.

The CLI checks run on a small real int8 artifact (tests/support/edge_artifacts.py); the claim of
the issue, that a clear sentiment word gets the largest attribution, runs on a trained demo model
(a head on mean-pooled MiniLM features of the demo's synthetic reviews, exported to int8 by the
real ``fedge export`` path: tests/support/explain_model.py), through the CLI as an operator would.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from fedge.output_schemas import schema_for
from fedge.signing import KeyPair, generate_keypair
from server.cli.app import app as fedge_app
from tests.support.edge_artifacts import make_artifact
from tests.support.explain_model import TrainedDemo, train_demo_artifact


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[KeyPair, Path]:
    keypair = generate_keypair()
    _private, public = keypair.save(tmp_path_factory.mktemp("keys"))
    return keypair, public


@pytest.fixture
def artifact(tmp_path: Path, key: tuple[KeyPair, Path]) -> Path:
    folder = tmp_path / "model"
    make_artifact(folder, key[0], max_length=32, int8=True)
    return folder


def test_it_explains_a_verified_artifact(cli, artifact: Path, key: tuple[KeyPair, Path]) -> None:
    table = cli(fedge_app, "explain", artifact, "A great film, truly!", "--trusted", key[1])
    assert table.code == 0, table.err
    for word in ("great", "film", "truly", "top word:", "tiny-cls 1.0.0"):
        assert word in table.out, table.out
    as_json = cli(fedge_app, "explain", artifact, "A great film, truly!", "--trusted", key[1],
                  "-o", "json")  # fmt: skip
    assert as_json.code == 0, as_json.err
    doc = json.loads(as_json.out)
    jsonschema.validate(doc, schema_for("Explanation"))
    assert [w["word"] for w in doc["items"]] == ["A", "great", "film", ",", "truly", "!"]
    assert (doc["artifact"], doc["version"], doc["method"]) == ("tiny-cls", "1.0.0", "occlusion")
    assert doc["text"] == "A great film, truly!" and doc["score"] == doc["scores"][doc["label"]]
    wide = cli(fedge_app, "explain", artifact, "great", "--trusted", key[1], "-o", "wide")
    assert wide.code == 0 and "start" in wide.out and "end" in wide.out


def test_a_tampered_artifact_is_refused_before_anything_is_loaded(
    cli, artifact: Path, key: tuple[KeyPair, Path]
) -> None:
    # not a model at all: were it loaded before the check, ONNX Runtime would be the one to fail
    (artifact / "model.onnx").write_bytes(b"not an onnx model")
    result = cli(fedge_app, "explain", artifact, "a great film", "--trusted", key[1])
    assert result.code == 1, result
    assert result.err.startswith("fedge: error: model.onnx: size is 17 bytes, manifest says")
    assert "ONNX Runtime" not in result.err and "Traceback" not in result.err
    assert result.err.count("\n") == 1


def test_a_stranger_signature_and_bad_input_are_one_line(
    cli, artifact: Path, key: tuple[KeyPair, Path], tmp_path: Path
) -> None:
    _private, stranger = generate_keypair().save(tmp_path / "stranger")
    signed = cli(fedge_app, "explain", artifact, "a great film", "--trusted", stranger)
    assert signed.code == 1 and "manifest.sig: signed by key" in signed.err, signed
    assert "not among the trusted keys" in signed.err
    long = cli(fedge_app, "explain", artifact, "good " * 40, "--trusted", key[1])
    assert long.code == 2, long
    assert long.err == (
        "fedge: error: TEXT: longer than the 32 tokens the model reads (max_length); an "
        "explanation covers whole texts only\n"
    )
    missing = cli(fedge_app, "explain", artifact, "a great film")
    assert missing.code == 2 and "--trusted" in missing.err
    nowhere = cli(fedge_app, "explain", tmp_path / "nope", "a film", "--trusted", key[1])
    assert nowhere.code == 1 and "artifact folder does not exist" in nowhere.err


# -- the trained demo model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> TrainedDemo:
    return train_demo_artifact(tmp_path_factory.mktemp("explain-demo") / "artifact")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("text", "label", "word"),
    [
        ("The nurse was wonderful.", "positive", "wonderful"),
        ("The room was tiny, but the staff were lovely.", "positive", "lovely"),
        ("The staff were rude and the room was dirty.", "negative", "rude"),
    ],
)
def test_the_sentiment_word_gets_the_largest_attribution(
    cli, demo: TrainedDemo, tmp_path: Path, text: str, label: str, word: str
) -> None:
    assert demo.metrics["accuracy_int8"] >= 0.8, demo.metrics  # a model that learnt the task
    _private, public = demo.keypair.save(tmp_path / "keys")
    result = cli(fedge_app, "explain", demo.artifact, text, "--trusted", public, "-o", "json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["label"] == label, doc
    ranked = sorted(doc["items"], key=lambda item: item["attribution"], reverse=True)
    assert ranked[0]["word"] == word, ranked
    assert ranked[0]["attribution"] > 2 * max(ranked[1]["attribution"], 0.0), ranked
