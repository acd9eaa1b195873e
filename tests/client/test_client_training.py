"""The data holder's model and DP training, on a tiny random BERT built from a config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from client.contract.model import (
    BUILTIN_MINILM,
    get_trainable,
    load_trainable_model,
    resolve_model_source,
    set_trainable,
)
from client.contract.tiny import build_tiny_model
from client.data.synthetic import generate
from client.training.loop import encode, evaluate, plan_round, train_round
from fedge.errors import FederationError, UsageError
from policies.federation import LoraSpec

LORA = LoraSpec(rank=4, alpha=8, target_modules=["query", "value"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def test_model_sources(tmp_path: Path) -> None:
    assert (resolve_model_source(BUILTIN_MINILM) / "model.safetensors").is_file()
    with pytest.raises(UsageError, match="model folder does not exist"):
        resolve_model_source(str(tmp_path / "nope"))
    with pytest.raises(UsageError, match=r"not a Hugging Face model folder \(no config.json\)"):
        resolve_model_source(str(tmp_path))
    with pytest.raises(UsageError, match="unknown builtin"):
        resolve_model_source("builtin:gpt-17")


def test_same_seed_same_initial_adapter_and_head(tiny: Path) -> None:
    first = get_trainable(load_trainable_model(str(tiny), num_labels=2, lora=LORA).model)
    second = get_trainable(load_trainable_model(str(tiny), num_labels=2, lora=LORA).model)
    assert first.keys() == second.keys()
    assert any("lora_A" in k for k in first) and any("classifier" in k for k in first)
    assert all(np.array_equal(first[k], second[k]) for k in first)
    # only adapters and head travel: a small fraction of the model
    model = load_trainable_model(str(tiny), num_labels=2, lora=LORA).model
    total = sum(p.numel() for p in model.parameters())
    assert sum(v.size for v in first.values()) < 0.01 * total


def test_set_trainable_refuses_what_does_not_fit(tiny: Path) -> None:
    model = load_trainable_model(str(tiny), num_labels=2, lora=LORA).model
    arrays = get_trainable(model)
    name = next(iter(arrays))
    with pytest.raises(FederationError, match="do not fit this model"):
        set_trainable(model, {k: v for k, v in arrays.items() if k != name})
    with pytest.raises(FederationError, match="has shape"):
        set_trainable(model, {**arrays, name: np.zeros((1, 1), dtype=np.float32)})
    shifted = {k: v + 1.0 for k, v in arrays.items()}
    set_trainable(model, shifted)
    assert all(np.array_equal(get_trainable(model)[k], shifted[k]) for k in arrays)


def test_planned_noise_spends_the_budget_over_the_planned_rounds() -> None:
    plan = plan_round(
        num_examples=500,
        batch_size=25,
        epochs=1,
        max_grad_norm=1.0,
        rounds=4,
        target_epsilon=3.0,
        delta=1e-5,
        accountant="rdp",
    )
    accountant = RDPAccountant()
    accountant.history = [(plan.noise_multiplier, plan.sample_rate, plan.steps * 4)]
    assert accountant.get_epsilon(1e-5) == pytest.approx(3.0, rel=0.02)
    assert accountant.get_epsilon(1e-5) <= 3.0
    fixed = plan_round(
        num_examples=500,
        batch_size=25,
        epochs=2,
        max_grad_norm=1.0,
        rounds=4,
        target_epsilon=3.0,
        delta=1e-5,
        accountant="rdp",
        noise_multiplier=2.5,
    )
    assert (fixed.noise_multiplier, fixed.steps, fixed.sample_rate) == (2.5, 40, 0.05)


@pytest.mark.parametrize("private", [True, False])
def test_one_round_changes_only_the_trainable_weights(tiny: Path, private: bool) -> None:
    trainable = load_trainable_model(str(tiny), num_labels=2, lora=LORA)
    split = generate(num_clients=1, examples_per_client=120, seed=3, heldout=40)
    data = split.clients[0]
    dataset = encode(trainable.tokenizer, data.texts, data.labels, max_length=24)
    frozen_before = {
        n: p.detach().clone() for n, p in trainable.model.named_parameters() if not p.requires_grad
    }
    before = get_trainable(trainable.model)
    plan = plan_round(
        num_examples=len(dataset),
        batch_size=16,
        epochs=1,
        max_grad_norm=1.0,
        rounds=2,
        target_epsilon=8.0,
        delta=1e-5,
        accountant="rdp",
    )
    result = train_round(
        trainable.model,
        dataset,
        plan,
        learning_rate=1e-2,
        max_physical_batch_size=8,
        private=private,
        seed=0,
    )
    after = get_trainable(trainable.model)
    assert result.steps >= 1 and np.isfinite(result.loss)
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    for name, param in trainable.model.named_parameters():
        if not param.requires_grad:
            assert param.equal(frozen_before[name]), name
        assert getattr(param, "grad_sample", None) is None  # Opacus hooks are gone
    held = encode(trainable.tokenizer, split.heldout.texts, split.heldout.labels, max_length=24)
    scores = evaluate(trainable.model, held)
    assert scores.num_examples == 40 and 0.0 <= scores.accuracy <= 1.0


def test_an_empty_poisson_batch_is_a_noise_only_step(tiny: Path) -> None:
    """20 examples at batch 2 (sample rate 0.1): Poisson sampling draws empty batches."""
    trainable = load_trainable_model(str(tiny), num_labels=2, lora=LORA)
    split = generate(num_clients=1, examples_per_client=20, seed=5, heldout=0)
    data = split.clients[0]
    dataset = encode(trainable.tokenizer, data.texts, data.labels, max_length=16)
    plan = plan_round(
        num_examples=len(dataset),
        batch_size=2,
        epochs=3,
        max_grad_norm=1.0,
        rounds=1,
        target_epsilon=50.0,
        delta=1e-5,
        accountant="rdp",
    )
    before = get_trainable(trainable.model)
    for seed in range(3):
        result = train_round(
            trainable.model,
            dataset,
            plan,
            learning_rate=1e-2,
            max_physical_batch_size=8,
            private=True,
            seed=seed,
        )
        assert result.steps == plan.steps  # every logical step happened, empty ones included
        assert np.isfinite(result.loss)
    after = get_trainable(trainable.model)
    assert all(np.isfinite(v).all() for v in after.values())
    assert any(not np.array_equal(before[k], after[k]) for k in before)
