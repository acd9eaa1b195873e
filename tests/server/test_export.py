"""``fedge export``: LoRA merged into a tiny random BERT, ONNX fp32 and int8, a signed artifact.

The tiny model stands in for MiniLM (same tokenizer, same architecture family), so the whole path
runs in seconds; the accuracy of int8 against fp32 on a real model is measured by bench/edge.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest
import typer

from fedge.artifact import verify_artifact
from fedge.cli import new_app
from fedge.errors import DataError, FedgeError, UsageError
from fedge.signing import generate_keypair

RUN_ID = "export-test"
TEXTS = [
    "a wonderful, moving film",
    "dull and far too long",
    "the best thing I saw this year",
    "a waste of a good cast",
    "sharp writing and a great score",
    "I walked out half way through",
    "pleasant enough",
    "terrible acting, worse plot",
] * 3


def _policy_text(model: Path) -> str:
    return f"""apiVersion: fedge/v1
kind: FederationPolicy
metadata:
  name: export-test
  labels: {{team: nlp}}
spec:
  model: {{source: "{model}", numLabels: 2, maxLength: 32}}
  rounds: 3
  lora: {{rank: 4, alpha: 8, targetModules: [query, value]}}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished run, as ``fedge train`` leaves one: policy, checkpoints, metrics; plus a key.

    The adapter's B matrices start at zero (the LoRA update is then a no-op), so the checkpoint
    gets random adapter weights: merging must change the model for the tests to see it.
    """
    from client.contract.model import get_trainable, load_trainable_model
    from client.contract.tiny import build_tiny_model
    from policies import FederationPolicy, check_text
    from server.federation.checkpoint import Checkpoint, CheckpointStore
    from server.federation.metrics import MetricsLog

    root = tmp_path_factory.mktemp("export")
    model = build_tiny_model(root / "model")
    policy_path = root / "federation.yaml"
    policy_path.write_text(_policy_text(model))
    policy = check_text(policy_path.read_text()).documents[0].document
    assert isinstance(policy, FederationPolicy)
    trainable = load_trainable_model(str(model), num_labels=2, lora=policy.spec.lora, seed=0).model
    rng = np.random.default_rng(1)
    arrays = {
        name: (rng.normal(0, 0.5, value.shape) if "lora_B" in name else value).astype(np.float32)
        for name, value in get_trainable(trainable).items()
    }
    workdir = root / "run"
    store = CheckpointStore(workdir / "checkpoints")
    log = MetricsLog(workdir / "metrics.jsonl")
    log.append({"round": 1, "epsilon": {"client-0": 1.5, "client-1": 1.25}})
    log.append({"round": 2, "epsilon": {"client-0": 3.0}})
    store.save(Checkpoint(run_id=RUN_ID, round=2, arrays=arrays))
    log.append({"round": 3, "epsilon": {"client-0": 9.0}})  # past the checkpoint: not counted
    heldout = root / "heldout.tsv"
    heldout.write_text(
        "text\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(TEXTS)),
        encoding="utf-8",
    )
    keypair = generate_keypair()
    key, pub = keypair.save(root / "keys")
    return {
        "root": root,
        "model": model,
        "policy": policy_path,
        "workdir": workdir,
        "heldout": heldout,
        "key": key,
        "pub": pub,
    }


def _app() -> typer.Typer:
    from server.cli.export import register

    app = new_app("fedge", "test app")
    register(app)
    return app


def _policy(run: dict[str, Path]):
    from policies import FederationPolicy, check_files

    doc = check_files([run["policy"]]).documents[0].document
    assert isinstance(doc, FederationPolicy)
    return doc


def test_merged_model_gives_the_clients_logits(run):
    """The server rebuilds the model without the client package: same arrays, same logits."""
    import torch

    from client.contract.model import load_trainable_model, set_trainable
    from server.export.merged import heldout_feeds, load_merged_model, torch_logits
    from server.federation.checkpoint import CheckpointStore

    policy = _policy(run)
    checkpoint = CheckpointStore(run["workdir"] / "checkpoints").latest()
    assert checkpoint is not None
    client = load_trainable_model(str(run["model"]), num_labels=2, lora=policy.spec.lora)
    set_trainable(client.model, checkpoint.arrays)
    client.model.eval()
    merged = load_merged_model(policy, checkpoint.arrays)
    assert merged.input_names == ("input_ids", "attention_mask", "token_type_ids")
    feeds = heldout_feeds(merged, TEXTS[:4], max_length=16)
    with torch.no_grad():
        expected = client.model(
            input_ids=torch.from_numpy(feeds["input_ids"]),
            attention_mask=torch.from_numpy(feeds["attention_mask"]),
            token_type_ids=torch.from_numpy(feeds["token_type_ids"]),
        ).logits.numpy()
    np.testing.assert_allclose(torch_logits(merged, feeds), expected, atol=1e-5)
    base = load_merged_model(
        policy,
        {k: np.zeros_like(v) if "lora_B" in k else v for k, v in checkpoint.arrays.items()},
    )
    assert np.abs(torch_logits(base, feeds) - expected).max() > 1e-4  # the adapters count


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_fp32_and_int8_onnx_load_and_agree(run, tmp_path, mode):
    from server.export.merged import heldout_feeds, load_merged_model, torch_logits
    from server.export.onnx_export import export_onnx, onnx_logits
    from server.export.quantize import Quantization, quantize_onnx
    from server.federation.checkpoint import CheckpointStore

    checkpoint = CheckpointStore(run["workdir"] / "checkpoints").latest()
    assert checkpoint is not None
    merged = load_merged_model(_policy(run), checkpoint.arrays)
    feeds = heldout_feeds(merged, TEXTS, max_length=24)
    fp32 = export_onnx(merged, tmp_path / "fp32.onnx", max_length=24)
    int8 = quantize_onnx(fp32, tmp_path / "int8.onnx", Quantization(mode=mode), calibration=feeds)
    for path in (fp32, int8):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == list(merged.input_names)
        assert all(i.type == "tensor(int64)" for i in session.get_inputs())
        assert [o.name for o in session.get_outputs()] == ["logits"]
    reference = torch_logits(merged, feeds)
    fp32_logits = onnx_logits(fp32, feeds)
    int8_logits = onnx_logits(int8, feeds)
    assert fp32_logits.shape == int8_logits.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(fp32_logits, reference, atol=1e-4)
    scale = float(np.abs(reference).max())
    assert float(np.abs(int8_logits - reference).max()) < 0.1 * scale + 1e-3
    assert int8.stat().st_size < fp32.stat().st_size / 3
    short = {k: v[:3, :7] for k, v in feeds.items()}  # another batch size and length
    np.testing.assert_allclose(onnx_logits(fp32, short), torch_logits(merged, short), atol=1e-4)


def test_cli_exports_a_signed_artifact(run, cli, tmp_path):
    from fedge.signing import load_public_key

    out = tmp_path / "artifact"
    result = cli(
        _app(),
        "export",
        "--policy", run["policy"],
        "--workdir", run["workdir"],
        "--heldout", run["heldout"],
        "--key", run["key"],
        "--out", out,
        "--label", "app=sentiment",
        "--label-names", "negative,positive",
        "--max-length", "32",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "accuracy" in result.out
    manifest = verify_artifact(out, [load_public_key(run["pub"])])
    assert manifest.format == "onnx-int8"
    assert sorted(e.path for e in manifest.files) == [
        "inference.json",
        "model.onnx",
        "tokenizer.json",
    ]
    assert manifest.labels == {"app": "sentiment", "team": "nlp"}
    assert manifest.provenance.run_id == RUN_ID
    assert manifest.provenance.rounds == 2
    assert manifest.provenance.epsilon_per_client == {"client-0": 3.0, "client-1": 1.25}
    assert manifest.provenance.delta == 1e-5
    metrics = manifest.metrics
    for key in ("accuracy_fp32", "accuracy_int8"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["heldout_examples"] == len(TEXTS)
    assert metrics["size_bytes_int8"] == (out / "model.onnx").stat().st_size
    assert metrics["size_bytes_int8"] < metrics["size_bytes_fp32"] / 3
    inference = json.loads((out / "inference.json").read_text())
    assert inference == {
        "schema": 1,
        "max_length": 32,
        "labels": ["negative", "positive"],
        "inputs": ["input_ids", "attention_mask", "token_type_ids"],
    }
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    assert tokenizer["truncation"]["max_length"] == 32
    assert tokenizer["model"]["vocab"]["[CLS]"] == 101
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    ones = np.ones((1, 5), dtype=np.int64)
    feeds = {"input_ids": ones * 101, "attention_mask": ones, "token_type_ids": ones * 0}
    assert session.run(["logits"], feeds)[0].shape == (1, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]  # no staging folder left

    again = cli(
        _app(), "export", "--policy", run["policy"], "--workdir", run["workdir"],
        "--heldout", run["heldout"], "--key", run["key"], "--out", out,
    )  # fmt: skip
    assert again.code == 2
    assert "--out" in again.err and "--force" in again.err


def _bad(cli: Any, run: dict[str, Path], tmp_path: Path, **changes: object) -> str:
    args: dict[str, object] = {
        "--policy": run["policy"],
        "--workdir": run["workdir"],
        "--heldout": run["heldout"],
        "--key": run["key"],
        "--out": tmp_path / "artifact",
    }
    args.update(changes)
    argv = [str(part) for pair in args.items() for part in pair]
    result = cli(_app(), "export", *argv)
    lines = result.err.strip().splitlines()
    assert result.code == 2, result.err
    assert len(lines) == 1, result.err
    assert not (tmp_path / "artifact").exists()
    return str(lines[0])


def test_missing_checkpoint_is_one_line(cli, run, tmp_path):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    line = _bad(cli, run, tmp_path, **{"--workdir": empty})
    assert f"--workdir {empty}" in line and "no checkpoint" in line
    missing = tmp_path / "round-000009.npz"
    args = ["--policy", run["policy"], "--checkpoint", missing, "--heldout", run["heldout"]]
    args += ["--key", run["key"], "--out", tmp_path / "artifact"]
    result = cli(_app(), "export", *args)
    assert result.code == 2
    assert f"--checkpoint {missing}: file does not exist" in result.err


def test_heldout_without_label_column_is_one_line(cli, run, tmp_path):
    heldout = tmp_path / "heldout.csv"
    heldout.write_text("text,sentiment\ngood film,1\n", encoding="utf-8")
    line = _bad(cli, run, tmp_path, **{"--heldout": heldout})
    assert str(heldout) in line
    assert "no label column 'label' (columns: text, sentiment)" in line


def test_unknown_key_file_is_one_line(cli, run, tmp_path):
    key = tmp_path / "nowhere.key"
    line = _bad(cli, run, tmp_path, **{"--key": key})
    assert f"{key}: key file does not exist" in line


def test_checkpoint_of_another_model_is_refused(cli, run, tmp_path):
    policy = tmp_path / "other.yaml"
    policy.write_text(_policy_text(run["model"]).replace("rank: 4", "rank: 2"))
    line = _bad(cli, run, tmp_path, **{"--policy": policy})
    assert "does not fit the policy's model" in line


def test_failed_export_leaves_nothing_behind(run, tmp_path, monkeypatch):
    """Quantization is made to fail (a stand-in for any late failure) to see the clean-up."""
    import server.export.build as export
    from server.export.heldout import read_heldout
    from server.federation.checkpoint import CheckpointStore

    def broken(*_args: object, **_kwargs: object) -> Path:
        raise FedgeError("int8 quantization failed: simulated")

    monkeypatch.setattr(export, "quantize_onnx", broken)
    checkpoint = CheckpointStore(run["workdir"] / "checkpoints").latest()
    assert checkpoint is not None
    policy = _policy(run)
    heldout = read_heldout(run["heldout"], num_labels=2)
    with pytest.raises(FedgeError, match="simulated"):
        export.export_artifact(
            policy=policy,
            checkpoint=checkpoint,
            heldout=heldout,
            keypair=generate_keypair(),
            out=tmp_path / "artifact",
            max_length=16,
        )
    assert list(tmp_path.iterdir()) == []


def test_heldout_labels_follow_the_client_conventions(tmp_path):
    from server.export.heldout import read_heldout

    named = tmp_path / "named.jsonl"
    named.write_text(
        '{"text": "fine", "label": "pos"}\n\n{"text": "bad", "label": "neg"}\n', encoding="utf-8"
    )
    data = read_heldout(named, num_labels=2)
    assert data.label_names == ("neg", "pos")  # sorted, as data holders number names
    assert data.labels == (1, 0)
    fixed = read_heldout(named, num_labels=2, label_names=["pos", "neg"])
    assert fixed.labels == (0, 1)
    numbers = tmp_path / "numbers.csv"
    numbers.write_text('text,label\n"good, really",1\nbad,0\n', encoding="utf-8")
    data = read_heldout(numbers, num_labels=3)
    assert data.texts == ("good, really", "bad")
    assert data.label_names == ("0", "1", "2")
    numbers.write_text("text,label\ngood,3\n", encoding="utf-8")
    with pytest.raises(DataError, match="label '3' is neither"):
        read_heldout(numbers, num_labels=3)
    bad = tmp_path / "three.tsv"
    bad.write_text("text\tlabel\na\tx\nb\ty\nc\tz\n", encoding="utf-8")
    with pytest.raises(DataError, match="3 distinct label names"):
        read_heldout(bad, num_labels=2)
    with pytest.raises(DataError, match=r"\.csv, \.tsv or \.jsonl"):
        read_heldout(tmp_path / "data.txt", num_labels=2)
    with pytest.raises(UsageError, match="--label-names"):
        read_heldout(named, num_labels=2, label_names=["a", "b", "c"])


def test_unknown_quantization_is_one_line(cli, run, tmp_path):
    line = _bad(cli, run, tmp_path, **{"--quantization": "int4"})
    assert "--quantization 'int4': expected dynamic or static" in line
