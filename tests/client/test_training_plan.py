"""The DP-aware training plan, the shared model definition, the features path and the device
settings of issue 11.

The plan properties run without a model (pure functions and Opacus's accountant); the model
tests use a tiny random BERT built from a config, so they run on any CPU in seconds.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from client.contract.labelled import LabelledData
from client.contract.model import build_for_policy, get_trainable, set_trainable, trains_encoder
from client.contract.tiny import build_tiny_model
from client.data.synthetic import generate
from client.privacy.accounting import epsilon_for
from client.training.baseline import run_baseline
from client.training.loop import (
    encode,
    evaluate,
    is_features,
    matmul_precision,
    plan_round,
    poisson_batch,
    pooled_features,
    train_round,
    use_device,
)
from client.training.plan import HEAD_EPOCHS, LORA_EPOCHS, MAX_BATCH, choose_training
from fedge.errors import UsageError
from policies import FederationPolicy, check_text

# --------------------------------------------------------------------------------------------
# The plan


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    examples=st.integers(min_value=1, max_value=100_000),
    rounds=st.integers(min_value=1, max_value=30),
    epsilon=st.floats(min_value=0.5, max_value=20.0),
    delta=st.sampled_from([1e-7, 1e-6, 1e-5, 1e-4]),
    lora=st.booleans(),
)
def test_the_chosen_plan_never_spends_past_the_budget(
    examples: int, rounds: int, epsilon: float, delta: float, lora: bool
) -> None:
    choice = choose_training(examples, rounds=rounds, lora=lora)
    assert 1 <= choice.batch_size <= max(1, min(MAX_BATCH, examples))
    if examples >= 2:
        assert choice.batch_size <= examples // 2  # a sampling rate below 1: amplification holds
    try:
        plan = plan_round(
            num_examples=examples,
            batch_size=choice.batch_size,
            epochs=choice.local_epochs,
            max_grad_norm=1.0,
            rounds=rounds,
            target_epsilon=epsilon,
            delta=delta,
            accountant="rdp",
        )
    except UsageError:
        return  # no noise fits: the holder declines, which spends nothing
    history = [(plan.noise_multiplier, plan.sample_rate, plan.steps)] * rounds
    spent = epsilon_for(history, delta=delta, accountant="rdp")
    assert spent <= epsilon
    # ... and that price is Opacus's own accountant's for the same history
    accountant = RDPAccountant()
    accountant.history = list(history)
    assert spent == pytest.approx(accountant.get_epsilon(delta=delta), rel=1e-9)


def test_policy_values_are_kept_and_the_rest_is_chosen_from_the_data() -> None:
    fixed = choose_training(5000, rounds=3, lora=False, batch_size=32, learning_rate=0.1)
    assert (fixed.batch_size, fixed.learning_rate) == (32, 0.1)
    assert fixed.source == {
        "batch_size": "policy",
        "local_epochs": "auto",
        "learning_rate": "policy",
    }
    head = choose_training(1000, rounds=3, lora=False)
    assert head.batch_size == 200 and head.local_epochs * 3 >= HEAD_EPOCHS
    big = choose_training(1_000_000, rounds=1, lora=True)
    assert big.batch_size == MAX_BATCH and big.local_epochs == LORA_EPOCHS
    many_rounds = choose_training(1000, rounds=50, lora=True)
    assert many_rounds.local_epochs == 1
    assert "auto" in head.describe()
    with pytest.raises(ValueError, match="num_examples"):
        choose_training(0, rounds=1, lora=False)


# --------------------------------------------------------------------------------------------
# Sampling and device settings


def test_poisson_batches_sample_each_example_at_the_rate() -> None:
    generator = torch.Generator().manual_seed(0)
    sizes = [len(poisson_batch(1000, 0.1, generator, torch.device("cpu"))) for _ in range(200)]
    assert abs(np.mean(sizes) - 100) < 3  # binomial(1000, 0.1): sd of the mean ~0.7
    assert 0 < np.std(sizes) < 20  # the size varies: it is not a fixed batch
    batch = poisson_batch(1000, 0.5, generator, torch.device("cpu"))
    assert len(set(batch.tolist())) == batch.numel()  # without replacement within a batch


def test_cuda_gets_tf32_and_the_cpu_keeps_full_precision() -> None:
    assert matmul_precision(torch.device("cuda")) == "high"
    assert matmul_precision(torch.device("cuda:1")) == "high"
    assert matmul_precision(torch.device("cpu")) == "highest"
    before = torch.get_float32_matmul_precision()
    try:
        use_device(torch.device("cuda"))  # a setting only: needs no GPU to be applied
        assert torch.get_float32_matmul_precision() == "high"
        use_device(torch.device("cpu"))
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(before)


# --------------------------------------------------------------------------------------------
# One model definition


def _policy(model: Path, *, pooling: str = "mean", lora: bool = False) -> FederationPolicy:
    text = f"""apiVersion: fedge/v1
kind: FederationPolicy
metadata: {{name: plan-test}}
spec:
  model: {{source: "{model}", maxLength: 24, pooling: {pooling}}}
  rounds: 2
{"  lora: {rank: 4, alpha: 8}" if lora else ""}
"""
    report = check_text(text, name="plan-test.yaml")
    report.raise_for_problems()
    policy = report.documents[0].document
    assert isinstance(policy, FederationPolicy)
    return policy


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize(("pooling", "lora"), [("mean", False), ("mean", True), ("cls", True)])
def test_export_builds_the_model_training_built(tiny: Path, pooling: str, lora: bool) -> None:
    """server/export/build.py builds through client/contract/model.py: same names, same logits."""
    from server.export.merged import heldout_feeds, load_merged_model, torch_logits

    policy = _policy(tiny, pooling=pooling, lora=lora)
    trained = build_for_policy(policy.spec, seed=0)
    rng = np.random.default_rng(1)
    arrays = {
        k: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32)
        for k, v in get_trainable(trained.model).items()
    }
    set_trainable(trained.model, arrays)
    merged = load_merged_model(policy, arrays)
    texts = ["the nurse was kind", "nothing worked and nobody came"]
    feeds = heldout_feeds(merged, texts, max_length=24)
    trained.model.eval()
    with torch.no_grad():
        inputs = {k: torch.from_numpy(v) for k, v in feeds.items()}
        expected = trained.model(**inputs).logits.numpy()
    np.testing.assert_allclose(torch_logits(merged, feeds), expected, atol=1e-4)
    assert trains_encoder(trained.model) == lora


def test_a_policy_for_another_model_is_refused_by_export(tiny: Path) -> None:
    from server.export.merged import load_merged_model

    head_only = get_trainable(build_for_policy(_policy(tiny).spec).model)
    assert sorted(head_only) == ["classifier.bias", "classifier.weight"]
    with pytest.raises(UsageError, match="does not fit the policy's model"):
        load_merged_model(_policy(tiny, lora=True), head_only)


# --------------------------------------------------------------------------------------------
# The features path


def test_the_head_on_cached_features_is_the_whole_model(tiny: Path) -> None:
    model = build_for_policy(_policy(tiny).spec, seed=0)
    assert model.head_only
    data = generate(num_clients=1, examples_per_client=30, seed=2, heldout=0).clients[0]
    tokens = encode(model.tokenizer, data.texts, data.labels, max_length=24)
    features = pooled_features(model, tokens, batch_size=7, device=torch.device("cpu"))
    assert is_features(features) and not is_features(tokens)
    assert features.tensors[0].shape == (30, 32)
    model.model.eval()
    with torch.no_grad():
        whole = model.model(input_ids=tokens.tensors[0], attention_mask=tokens.tensors[1]).logits
        head = model.head()(features.tensors[0])
    np.testing.assert_allclose(head.numpy(), whole.numpy(), atol=1e-5)
    on_tokens = evaluate(model.model, tokens)
    on_features = evaluate(model.head(), features)
    assert on_tokens.accuracy == on_features.accuracy
    assert on_tokens.loss == pytest.approx(on_features.loss, abs=1e-5)


@pytest.mark.parametrize("private", [True, False])
def test_dp_training_on_features_moves_only_the_head(tiny: Path, private: bool) -> None:
    model = build_for_policy(_policy(tiny).spec, seed=0)
    data = generate(num_clients=1, examples_per_client=80, seed=4, heldout=0).clients[0]
    tokens = encode(model.tokenizer, data.texts, data.labels, max_length=24)
    features = pooled_features(model, tokens, device=torch.device("cpu"))
    encoder_before = {k: v.clone() for k, v in model.model.encoder.state_dict().items()}  # type: ignore[union-attr]
    before = get_trainable(model.model)
    plan = plan_round(
        num_examples=80,
        batch_size=16,
        epochs=3,
        max_grad_norm=1.0,
        rounds=1,
        target_epsilon=8.0,
        delta=1e-5,
        accountant="rdp",
    )
    result = train_round(
        model.head(),
        features,
        plan,
        learning_rate=1e-2,
        max_physical_batch_size=5,  # several physical batches per logical one
        private=private,
        device=torch.device("cpu"),
        seed=0,
    )
    assert result.steps == plan.steps and math.isfinite(result.loss)
    after = get_trainable(model.model)
    assert all(not np.array_equal(before[k], after[k]) for k in before)
    for name, value in model.model.encoder.state_dict().items():  # type: ignore[union-attr]
        assert torch.equal(value, encoder_before[name]), name
    assert all(getattr(p, "grad_sample", None) is None for p in model.head().parameters())


def _words(label: int, count: int, seed: int) -> LabelledData:
    """Sentences whose label a bag of words decides, so even a tiny random encoder's mean-pooled
    features separate the classes."""
    rng = random.Random(seed)
    good, bad = ("kind", "fast", "clean", "great"), ("rude", "slow", "dirty", "awful")
    texts = tuple(
        " ".join(rng.choice(good if label == 1 else bad) for _ in range(6)) for _ in range(count)
    )
    return LabelledData(texts, (label,) * count, ("negative", "positive"), path="words")


def _both(count: int, seed: int) -> LabelledData:
    negative, positive = _words(0, count, seed), _words(1, count, seed + 1)
    return LabelledData(
        negative.texts + positive.texts,
        negative.labels + positive.labels,
        negative.label_names,
        path="words",
    )


def test_the_baseline_reports_floor_and_ceiling(tiny: Path) -> None:
    train, heldout = _both(80, seed=6), _both(30, seed=9)
    result = run_baseline(_policy(tiny), train, heldout, private=True)
    assert (result.train_examples, result.heldout_examples) == (160, 60)
    assert result.majority == pytest.approx(0.5)
    for value in (result.floor, result.ceiling, result.central_dp):
        assert value is not None and 0.0 <= value <= 1.0
    assert result.epochs == choose_training(160, rounds=2, lora=False).local_epochs * 2
    assert result.ceiling >= 0.9 > result.floor  # the untrained head is not the trained one
