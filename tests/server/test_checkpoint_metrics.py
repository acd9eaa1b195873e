"""Round checkpoints and the metrics file: resume exactly where a run stopped."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedge.errors import FederationError
from server.federation.checkpoint import Checkpoint, CheckpointStore
from server.federation.metrics import MetricsLog


def _checkpoint(round_: int) -> Checkpoint:
    rng = np.random.default_rng(round_)
    return Checkpoint(
        run_id="run-1",
        round=round_,
        arrays={"lora.A": rng.normal(size=(4, 8)).astype(np.float32), "head.bias": np.arange(2.0)},
        strategy_state={"m_t.lora.A": np.full((4, 8), 0.5, dtype=np.float32)},
        meta={"strategy": "fedadam", "policyDigest": "abc"},
    )


def test_fresh_store_has_no_checkpoint(tmp_path) -> None:
    assert CheckpointStore(tmp_path).latest() is None


def test_round_trip_keeps_arrays_state_and_meta(tmp_path) -> None:
    store = CheckpointStore(tmp_path)
    original = _checkpoint(2)
    store.save(original)
    loaded = store.latest()
    assert loaded is not None
    assert (loaded.run_id, loaded.round, dict(loaded.meta)) == ("run-1", 2, dict(original.meta))
    assert loaded.arrays.keys() == original.arrays.keys()
    for key, value in original.arrays.items():
        np.testing.assert_array_equal(loaded.arrays[key], value)
        assert loaded.arrays[key].dtype == value.dtype
    np.testing.assert_array_equal(
        loaded.strategy_state["m_t.lora.A"], original.strategy_state["m_t.lora.A"]
    )


def test_latest_wins_and_old_rounds_are_pruned(tmp_path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for round_ in (1, 2, 3):
        store.save(_checkpoint(round_))
    latest = store.latest()
    assert latest is not None and latest.round == 3
    assert sorted(p.name for p in tmp_path.glob("round-*.npz")) == [
        "round-000002.npz",
        "round-000003.npz",
    ]


def test_a_damaged_checkpoint_is_refused_with_its_name(tmp_path) -> None:
    store = CheckpointStore(tmp_path)
    path = store.save(_checkpoint(1))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(
        FederationError, match=r"round-000001\.npz: checkpoint does not match its sha256"
    ):
        store.latest()
    path.unlink()
    with pytest.raises(FederationError, match="is missing"):
        store.latest()


def test_a_crash_before_the_pointer_moves_keeps_the_previous_round(tmp_path) -> None:
    """Simulates a crash after the new .npz is written but before latest.json names it."""
    store = CheckpointStore(tmp_path)
    store.save(_checkpoint(1))
    (tmp_path / "round-000002.npz").write_bytes(_checkpoint(2).to_bytes())
    latest = store.latest()
    assert latest is not None and latest.round == 1


def test_metrics_append_read_and_truncate(tmp_path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for round_ in (1, 2, 3):
        log.append({"round": round_, "loss": 1.0 / round_, "epsilon": {"a": 0.5 * round_}})
    log.append({"round": 4, "loss": float("nan")})
    records = log.read()
    assert [r["round"] for r in records] == [1, 2, 3, 4]
    assert records[3]["loss"] is None
    log.truncate_after(2)
    assert [r["round"] for r in log.read()] == [1, 2]
    with pytest.raises(ValueError, match="integer 'round'"):
        log.append({"loss": 1.0})


def test_a_torn_last_line_is_ignored_but_a_corrupt_middle_is_an_error(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"round": 1}) + "\n" + '{"round": 2, "lo')
    assert [r["round"] for r in MetricsLog(path).read()] == [1]
    path.write_text("garbage\n" + json.dumps({"round": 1}) + "\n")
    with pytest.raises(FederationError, match="metrics.jsonl:1: not a JSON record"):
        MetricsLog(path).read()
