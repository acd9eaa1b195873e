"""Federated DP fine-tuning in Flower's simulation engine (real Ray backend, real Opacus).

One shared run (3 clients, 2 rounds, a tiny random BERT) is checked from several sides; client-1
starts with a ledger already past the budget, so it must decline every round while the others go
on. A second test kills a real ``fedge train`` process after round 1 and starts it again.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from client.contract.model import get_trainable, load_trainable_model
from client.privacy.accounting import PrivacyBudget
from client.privacy.ledger import PrivacyLedger
from fedge.process import ManagedProcess
from policies import FederationPolicy, load_one
from policies.federation import LoraSpec
from server.federation.checkpoint import CheckpointStore
from server.federation.metrics import MetricsLog
from server.federation.train import load_plan, train_simulated
from server.report.page import render_report
from server.report.summary import load_run_summary
from tests.support.federation import make_inputs, policy_text

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def simulated_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("sim")
    model, data = make_inputs(root, clients=3)
    policy_path = root / "federation.yaml"
    policy_path.write_text(policy_text(model, rounds=2, per_round=3, minimum=2))
    workdir = root / "run"
    # client-1 spent epsilon 10 in an earlier federation that allowed 20: past this budget of 8
    spent = PrivacyLedger(
        workdir / "clients" / "client-1" / "privacy" / "fed-test.json",
        federation="fed-test",
        budget=PrivacyBudget(target_epsilon=20.0, delta=1e-5),
    )
    spent.record(round=1, run_id="earlier", noise_multiplier=1.0, sample_rate=0.5, steps=10)
    assert spent.spent() > 8.0
    ledger_before = spent.path.read_bytes()
    plan = load_plan(policy_path, workdir=workdir, run_id="sim-test")
    reports: list[object] = []
    # a CPU share of 0.5 runs all three clients at once, so every reply lands in its round
    train_simulated(
        plan, num_clients=3, data_dir=data, progress=reports.append, cpus_per_client=0.5
    )
    return {
        "root": root,
        "model": model,
        "workdir": workdir,
        "reports": reports,
        "ledger_path": spent.path,
        "ledger_before": ledger_before,
        "policy": load_one(policy_path, FederationPolicy),
    }


def test_both_rounds_are_recorded(simulated_run) -> None:
    records = MetricsLog(simulated_run["workdir"] / "metrics.jsonl").read()
    assert [r["round"] for r in records] == [1, 2]
    for record in records:
        assert record["status"] == "ok"
        assert sorted(record["clients"]) == ["client-0", "client-2"]
        assert record["num_examples"] > 0
        assert record["bytes_sent"] > 0 and record["bytes_received"] > 0
        assert record["eval_accuracy"] is not None and 0.0 <= record["eval_accuracy"] <= 1.0
    latest = CheckpointStore(simulated_run["workdir"] / "checkpoints").latest()
    assert latest is not None and latest.round == 2 and latest.run_id == "sim-test"


def test_the_global_model_changes(simulated_run) -> None:
    initial = get_trainable(
        load_trainable_model(
            str(simulated_run["model"]), num_labels=2, lora=LoraSpec(rank=4, alpha=8)
        ).model
    )
    final = CheckpointStore(simulated_run["workdir"] / "checkpoints").latest()
    assert final is not None and final.arrays.keys() == initial.keys()
    changed = [k for k in initial if not np.allclose(initial[k], final.arrays[k])]
    assert changed, "aggregation left every weight where it started"
    assert any("classifier" in k for k in changed)


def test_epsilon_per_client_equals_opacus_for_its_history(simulated_run) -> None:
    records = MetricsLog(simulated_run["workdir"] / "metrics.jsonl").read()
    policy = simulated_run["policy"]
    for name in ("client-0", "client-2"):
        ledger = PrivacyLedger.for_policy(simulated_run["workdir"] / "clients" / name, policy)
        charges = ledger.charges()
        assert [c.round for c in charges] == [1, 2]
        for upto, record in enumerate(records, start=1):
            accountant = RDPAccountant()
            accountant.history = [
                (c.noise_multiplier, c.sample_rate, c.steps) for c in charges[:upto]
            ]
            assert record["epsilon"][name] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
        assert records[-1]["epsilon"][name] <= 8.0


def test_an_over_budget_client_declines_and_its_ledger_is_unchanged(simulated_run) -> None:
    """Round 1's decline is certain to land in its round (the others compute their features
    first); in round 2 the others train on cached features in milliseconds, while client-1
    first loads the model to evaluate, so its decline may come after the round closed on the
    minimum of 2. It must never train, and where its decline is recorded it names the budget."""
    records = MetricsLog(simulated_run["workdir"] / "metrics.jsonl").read()
    assert "client-1" in records[0]["declined"]
    for record in records:
        assert "client-1" not in record["clients"]
        if "client-1" in record["declined"]:
            reason = record["declined"]["client-1"]
            assert "budget" in reason or "epsilon" in reason
            assert record["epsilon"]["client-1"] > 8.0
    assert simulated_run["ledger_path"].read_bytes() == simulated_run["ledger_before"]


def _wait_for(predicate, *, timeout: float, what: str, process: ManagedProcess) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if not process.running():
            raise AssertionError(f"fedge train exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _fedge(*args: str, log: Path) -> ManagedProcess:
    exe = Path(sys.executable).with_name("fedge")
    return ManagedProcess([str(exe), *args], log_path=log, name="fedge train", grace=60).start()


def _kill_after_round_one_and_resume(
    tmp_path: Path, policy: Path, data: Path, *, holders: int = 2
) -> Path:
    """Run ``fedge train`` over simulated holders, kill it after a checkpoint, start it again;
    the work directory."""
    workdir = tmp_path / "run"
    args = (
        "train",
        "--policy",
        str(policy),
        "--simulate",
        str(holders),
        "--data",
        str(data),
        "--workdir",
        str(workdir),
    )
    log = tmp_path / "train.log"
    pointer = workdir / "checkpoints" / "latest.json"
    first = _fedge(*args, log=log)
    try:
        _wait_for(pointer.exists, timeout=240, what="the round-1 checkpoint", process=first)
    finally:
        first.kill()
    stopped_at = json.loads(pointer.read_text())["round"]
    assert stopped_at < 3, "the run finished before it could be killed"
    second = _fedge(*args, log=log)
    try:
        assert second.process is not None
        assert second.process.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        second.kill()
    records = MetricsLog(workdir / "metrics.jsonl").read()
    assert [r["round"] for r in records] == [1, 2, 3]
    # round 1's line waited for its evaluation in the checkpoint, across the kill
    assert all(r["eval_accuracy"] is not None for r in records), records
    latest = CheckpointStore(workdir / "checkpoints").latest()
    assert latest is not None and latest.round == 3
    return workdir


@pytest.mark.parametrize("strategy", ["fedadam", "fedtrimmedavg"])
def test_a_killed_coordinator_resumes_at_the_next_round(tmp_path: Path, strategy: str) -> None:
    """FedAdam keeps moments across the kill; a robust rule (stateless) resumes just the same."""
    model, data = make_inputs(tmp_path, clients=2, examples=40, seed=1)
    policy = tmp_path / "federation.yaml"
    policy.write_text(
        policy_text(model, name="resume-test", rounds=3, per_round=2, minimum=2, strategy=strategy)
    )
    workdir = _kill_after_round_one_and_resume(tmp_path, policy, data)
    latest = CheckpointStore(workdir / "checkpoints").latest()
    assert latest is not None
    moments = any(k.startswith("m_t/") for k in latest.strategy_state)
    assert moments is (strategy == "fedadam"), latest.strategy_state.keys()
    # each client's ledger charged every round exactly once, whatever the crash
    policy_doc = load_one(policy, FederationPolicy)
    for name in ("client-0", "client-1"):
        charges = PrivacyLedger.for_policy(workdir / "clients" / name, policy_doc).charges()
        assert [c.round for c in charges] == [1, 2, 3]


def test_user_level_dp_is_priced_by_opacus_across_a_kill(tmp_path: Path) -> None:
    """Level user: the reported user-level epsilon after each round equals Opacus's accountant
    for (noise, holder sampling rate, rounds), also after the coordinator was killed; holders
    train without DP-SGD and their ledgers are not charged."""
    model, data = make_inputs(tmp_path, clients=3, examples=30, seed=2)
    policy = tmp_path / "federation.yaml"
    noise, rate = 1.1, 2 / 3  # 2 holders sampled of 3 connected
    policy.write_text(
        policy_text(
            model,
            name="user-dp",
            rounds=3,
            per_round=2,
            minimum=2,
            privacy=f"level: user, user: {{clippingNorm: 0.5, noiseMultiplier: {noise}}}",
        )
    )
    workdir = _kill_after_round_one_and_resume(tmp_path, policy, data, holders=3)
    records = MetricsLog(workdir / "metrics.jsonl").read()
    for record in records:
        accountant = RDPAccountant()
        for _ in range(int(record["round"])):
            accountant.step(noise_multiplier=noise, sample_rate=rate)
        assert record["user_epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-5))
        assert record["user_noise_multiplier"] == noise
        assert record["user_sample_rate"] == rate
        assert record["user_clipping_norm"] == 0.5
        assert set(record["epsilon"].values()) == {0.0}, record["epsilon"]
    policy_doc = load_one(policy, FederationPolicy)
    for name in ("client-0", "client-1", "client-2"):
        ledger = PrivacyLedger.for_policy(workdir / "clients" / name, policy_doc)
        assert list(ledger.charges()) == []
    # the report states the coordinator's guarantee next to the holders' ledgers
    html = render_report(load_run_summary(workdir))
    final = f"{records[-1]['user_epsilon']:.3f}"
    assert "User-level DP at the coordinator" in html and final in html
