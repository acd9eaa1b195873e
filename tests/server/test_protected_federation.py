"""``protection: he`` and ``secagg`` end to end in Flower's simulation engine (real Ray, Opacus).

he: three simulated holders share a CKKS key made by ``fedge-client he keygen``; the coordinator
holds the public context only. The checks: every checkpoint the coordinator wrote during the
run holds ciphertexts, never a model in the clear; the model a holder released at the end equals
plaintext weighted FedAvg of the updates the holders stored for the last round (within 1e-3);
ciphertext bytes are recorded per round.

secagg: the same three holders under Flower's SecAgg+ (four stages per round); the coordinator
only ever holds the unmasked sum, which must equal plaintext weighted FedAvg of the holders'
stored updates within the quantization error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.federation.checkpoint import Checkpoint, CheckpointStore
from server.federation.he_aggregate import load_public_context
from server.federation.metrics import MetricsLog
from server.federation.train import load_plan, train_simulated
from tests.support.federation import make_inputs, policy_text

pytestmark = pytest.mark.slow


def test_an_he_run_aggregates_ciphertexts_and_matches_plain_fedavg(tmp_path) -> None:
    model, data = make_inputs(tmp_path, clients=3, examples=40)
    policy = tmp_path / "federation.yaml"
    policy.write_text(policy_text(model, rounds=2, per_round=3, minimum=3, protection="he"))
    workdir = tmp_path / "run"
    plan = load_plan(policy, workdir=workdir, run_id="he-test")
    train_simulated(plan, num_clients=3, data_dir=data, cpus_per_client=0.5)

    # the coordinator's context: parameters only, no secret key
    public = load_public_context(workdir / "he" / "he-public.ctx")
    assert not public.has_secret_key()

    lines = MetricsLog(workdir / "metrics.jsonl").read()
    assert [line["round"] for line in lines] == [1, 2]
    assert all(line["status"] == "ok" and len(line["clients"]) == 3 for line in lines), lines
    assert all(line["eval_accuracy"] is not None for line in lines)

    store = CheckpointStore(workdir / "checkpoints")
    round_1 = Checkpoint.from_bytes(
        (store.directory / "round-000001.npz").read_bytes(), name="round 1"
    )
    assert round_1.arrays and all(k.startswith("he/chunk-") for k in round_1.arrays)
    assert all(a.dtype == np.uint8 for a in round_1.arrays.values())

    final = store.latest()
    assert final is not None and final.round == 2 and final.meta.get("released") is True
    released = dict(final.arrays)
    num_values = sum(int(v.size) for v in released.values())
    # about 7.6 bytes of ciphertext per float32 byte of the slots used (2048 per ciphertext,
    # plus one check value): packing fills every ciphertext but the last
    slots = -(-(num_values + 1) // 2048) * 2048
    per_client_up = lines[-1]["bytes_received"] / 3
    assert 6 * 4 * slots < per_client_up < 9 * 4 * slots, per_client_up
    assert lines[-1]["bytes_sent"] == pytest.approx(3 * per_client_up, rel=0.05)

    assert_fedavg_of_stored_updates(workdir, released, round_=2, tolerance=1e-3)


def assert_fedavg_of_stored_updates(
    workdir: Path, model: dict[str, np.ndarray], *, round_: int, tolerance: float
) -> None:
    """``model`` is plaintext weighted FedAvg of the updates the holders kept for ``round_``."""
    updates, weights = [], []
    for name in ("client-0", "client-1", "client-2"):
        (stored,) = (workdir / "clients" / name / "updates").glob(f"*round-{round_:06d}.npz")
        with np.load(stored) as npz:
            updates.append({k[2:]: npz[k] for k in npz.files if k.startswith("a/")})
            weights.append(int(npz["m/num-examples"]))
    total = sum(weights)
    assert set(model) == set(updates[0])
    for key, value in model.items():
        expected = (
            sum(w * u[key].astype(np.float64) for w, u in zip(weights, updates, strict=True))
            / total
        )
        assert np.max(np.abs(value - expected)) < tolerance, key


def test_a_secagg_run_gives_plain_fedavg_within_the_quantization_error(tmp_path) -> None:
    model, data = make_inputs(tmp_path, clients=3, examples=40)
    policy = tmp_path / "federation.yaml"
    policy.write_text(policy_text(model, rounds=2, per_round=3, minimum=3, protection="secagg"))
    workdir = tmp_path / "run"
    plan = load_plan(policy, workdir=workdir, run_id="secagg-test")
    train_simulated(plan, num_clients=3, data_dir=data, cpus_per_client=0.5)

    lines = MetricsLog(workdir / "metrics.jsonl").read()
    assert [line["round"] for line in lines] == [1, 2]
    assert all(line["status"] == "ok" and len(line["clients"]) == 3 for line in lines), lines
    assert all(line["eval_accuracy"] is not None for line in lines)
    final = CheckpointStore(workdir / "checkpoints").latest()
    assert final is not None and final.round == 2
    # the guaranteed bound for this round's weights (clip 8, 2**22 levels), about 1e-4 here
    bound = lines[-1]["secagg_error_bound"]
    assert bound is not None and 0 < bound < 1e-3
    assert_fedavg_of_stored_updates(workdir, dict(final.arrays), round_=2, tolerance=bound)
