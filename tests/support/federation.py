"""Builders shared by the federation tests: a tiny model, synthetic client files, a policy."""

from __future__ import annotations

from pathlib import Path

from client.contract.tiny import build_tiny_model
from client.data.synthetic import generate, write_synthetic


def make_inputs(
    root: Path, *, clients: int, examples: int = 60, seed: int = 0
) -> tuple[Path, Path]:
    """(tiny model folder, data folder with client-N.tsv files)."""
    model = build_tiny_model(root / "model")
    split = generate(num_clients=clients, examples_per_client=examples, seed=seed, heldout=0)
    write_synthetic(split, root / "data")
    return model, root / "data"


def policy_text(
    model: Path,
    *,
    name: str = "fed-test",
    rounds: int = 2,
    per_round: int = 3,
    minimum: int = 2,
    strategy: str = "fedavg",
    epsilon: float = 8.0,
    protection: str = "none",
    privacy: str = "",
) -> str:
    """``privacy``: more keys of the privacy mapping, e.g. ``level: user, user: {...}``."""
    return f"""apiVersion: fedge/v1
kind: FederationPolicy
metadata: {{name: {name}}}
spec:
  model: {{source: "{model}", maxLength: 24}}
  rounds: {rounds}
  protection: {protection}
  clients: {{perRound: {per_round}, minimum: {minimum}}}
  roundTimeout: 300
  aggregation: {{strategy: {strategy}, serverLearningRate: 0.05}}
  training: {{batchSize: 16, learningRate: 0.01}}
  privacy: {{targetEpsilon: {epsilon}, delta: 1.0e-5{", " + privacy if privacy else ""}}}
  lora: {{rank: 4, alpha: 8}}
"""
