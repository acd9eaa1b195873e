"""A trained demo model, exported and signed as ``fedge export`` does, for the explanation tests
and ``bench/explain_agreement.py``.

The demo's model is a linear head on mean-pooled all-MiniLM-L6-v2 features trained on the demo's
synthetic reviews (client/data/synthetic.py). The federation trains it with DP over rounds; here
the head is fitted centrally in a second (L2-regularised logistic regression on the features,
computed once), since what an explanation test needs is a model that reads sentiment words, not
the federation. The holders' label mixes are drawn near-balanced (``alpha`` 100): with the demo's
skewed mixes a pooled fit also learns which holder's nouns come with which label, and a noun can
then outweigh the sentiment word a test asks about. The export itself is the real one
(``server.export.build.export_artifact``: ONNX, int8 dynamic quantization, signed manifest), and
the held-out sentences are never trained on. About 15 s on two cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedge.signing import KeyPair, generate_keypair

__all__ = ["POLICY", "TrainedDemo", "train_demo_artifact"]

POLICY = """apiVersion: fedge/v1
kind: FederationPolicy
metadata: {name: explain-demo}
spec:
  model: {source: "builtin:all-MiniLM-L6-v2", numLabels: 2, maxLength: 64}
  rounds: 1
"""


@dataclass(frozen=True)
class TrainedDemo:
    artifact: Path
    keypair: KeyPair
    policy: Any  # policies.FederationPolicy (kept loose: importing it here would load pydantic)
    arrays: dict[str, np.ndarray]  # the head's weights, the checkpoint export started from
    heldout_texts: tuple[str, ...]
    heldout_labels: tuple[int, ...]
    label_names: tuple[str, ...]
    metrics: dict[str, float]


def train_demo_artifact(
    out: Path,
    *,
    keypair: KeyPair | None = None,
    examples_per_client: int = 200,
    heldout: int = 100,
    seed: int = 0,
    weight_decay: float = 0.01,
    steps: int = 300,
) -> TrainedDemo:
    """Fit the head, export the int8 artifact to ``out`` and sign it (``keypair`` or a new one)."""
    import torch

    from client.contract.model import build_for_policy, get_trainable, quiet_libraries
    from client.data.synthetic import generate
    from policies import FederationPolicy, check_text
    from server.export.build import export_artifact
    from server.export.heldout import HeldOut
    from server.federation.checkpoint import Checkpoint

    quiet_libraries()
    key = keypair or generate_keypair()
    split = generate(
        num_clients=2,
        examples_per_client=examples_per_client,
        seed=seed,
        heldout=heldout,
        alpha=100.0,
    )
    texts = [text for client in split.clients for text in client.texts]
    labels = [label for client in split.clients for label in client.labels]
    report = check_text(POLICY, name="explain-demo policy")
    report.raise_for_problems()
    policy = report.documents[0].document
    assert isinstance(policy, FederationPolicy)
    model = build_for_policy(policy.spec, seed=seed)
    tokenizer = model.tokenizer
    torch.manual_seed(seed)
    with torch.no_grad():
        parts = []
        for start in range(0, len(texts), 64):
            batch = tokenizer(
                texts[start : start + 64],
                padding=True,
                truncation=True,
                max_length=policy.spec.model.max_length,
                return_tensors="pt",
            )
            features_of = model.model.features  # MeanPoolClassifier's, not a Tensor
            parts.append(
                features_of(  # type: ignore[operator]
                    batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
                )
            )
        features = torch.cat(parts)
    targets = torch.tensor(labels)
    head = model.head()
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(features), targets)
        penalty = sum(p.pow(2).sum() for n, p in head.named_parameters() if n == "weight")
        (loss + weight_decay * penalty).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    arrays = get_trainable(model.model)
    held = split.heldout
    result = export_artifact(
        policy=policy,
        checkpoint=Checkpoint(run_id="explain-demo", round=1, arrays=arrays),
        heldout=HeldOut(tuple(held.texts), tuple(held.labels), split.label_names, "synthetic"),
        keypair=key,
        out=out,
        max_length=policy.spec.model.max_length,
        version="1.0.0",
        force=True,
    )
    return TrainedDemo(
        artifact=result.path,
        keypair=key,
        policy=policy,
        arrays=arrays,
        heldout_texts=tuple(held.texts),
        heldout_labels=tuple(held.labels),
        label_names=tuple(split.label_names),
        metrics=dict(result.metrics),
    )
