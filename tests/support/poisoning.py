"""A ClientApp for tests and benchmarks in which one simulated holder poisons its updates.

fedge's own ClientApp has no attack switch, and no policy can make it send anything but its
honest update. This module wraps it from outside: every holder runs the real privacy
transaction, and the holder of partition :data:`POISONED_PARTITION` (``client-0`` in
``fedge train --simulate``) then replaces its update ``u = trained - global`` with
``FACTOR * u`` (sign-flipped, ten times larger) before the reply leaves. The simulation engine
loads it by name: ``train_simulated(..., client_app=POISONED_APP)``, which Ray workers can
import because Flower hands them the driver's ``sys.path`` (pytest's, or the bench's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Array, Context, Message
from flwr.clientapp import ClientApp

from client.federation.flower_app import app as honest
from fedge import messages as m

__all__ = [
    "FACTOR",
    "POISONED_APP",
    "POISONED_HOLDER",
    "POISONED_PARTITION",
    "ArmResult",
    "app",
    "arm_policy",
    "run_arm",
]

POISONED_APP = "tests.support.poisoning:app"
POISONED_PARTITION = 0
POISONED_HOLDER = "client-0"
FACTOR = -10.0


def _poisoned_train(message: Message, context: Context) -> Message:
    record = message.content.array_records.get(m.ARRAYS)
    start = {k: np.array(v.numpy()) for k, v in record.items()} if record is not None else {}
    reply = honest(message, context)
    if int(str(context.node_config.get("partition-id", -1))) != POISONED_PARTITION:
        return reply
    if reply.has_error() or not reply.has_content():
        return reply
    update = reply.content.array_records.get(m.ARRAYS)
    if update is None or set(update.keys()) != set(start):
        return reply  # declined, or not a plain update (secagg/he): nothing to poison
    for name in list(update.keys()):
        trained = update[name].numpy()
        poisoned = start[name] + FACTOR * (trained - start[name])
        update[name] = Array(np.ascontiguousarray(poisoned.astype(trained.dtype)))
    return reply


def _honest(message: Message, context: Context) -> Message:
    return honest(message, context)


app = ClientApp()
app.train()(_poisoned_train)
app.evaluate()(_honest)
app.query(m.QUERY_INIT)(_honest)
app.query(m.QUERY_RELEASE)(_honest)


@dataclass(frozen=True)
class ArmResult:
    """One simulated run: the final global model's accuracy and which holders were flagged."""

    strategy: str
    poisoned: bool
    accuracy: float
    flagged: dict[int, dict[str, str]]  # round -> holder -> reason
    seconds: float
    user_epsilon: float | None = None  # privacy level user/both: the run's user-level epsilon
    holder_epsilon: float = 0.0  # the largest sample-level epsilon a holder reported


def make_task(root: Path, *, clients: int, examples: int, seed: int = 0) -> Path:
    """A learnable synthetic task split near-IID among ``clients`` holders (Dirichlet 100), so
    that an honest holder's update looks like the others' and only the attack stands out."""
    from client.data.synthetic import generate, write_synthetic

    split = generate(
        num_clients=clients, examples_per_client=examples, alpha=100.0, seed=seed, heldout=0
    )
    write_synthetic(split, root / "data")
    return root / "data"


def arm_policy(
    model: str,
    *,
    strategy: str,
    rounds: int,
    clients: int,
    epsilon: float,
    extra: str = "",
    privacy: str = "",
) -> str:
    """A head-only policy where every holder trains every round (perRound = minimum = all);
    ``privacy``: more keys of the privacy mapping (``level: user, user: {...}``)."""
    return f"""apiVersion: fedge/v1
kind: FederationPolicy
metadata: {{name: poisoning}}
spec:
  model: {{source: "{model}", maxLength: 24}}
  rounds: {rounds}
  clients: {{perRound: {clients}, minimum: {clients}}}
  roundTimeout: 300
  aggregation: {{strategy: {strategy}{extra}}}
  training: {{batchSize: 16, learningRate: 0.05, localEpochs: 2}}
  privacy: {{targetEpsilon: {epsilon}, delta: 1.0e-5{", " + privacy if privacy else ""}}}
"""


def run_arm(
    root: Path,
    *,
    model: str,
    data: Path,
    strategy: str,
    poisoned: bool,
    rounds: int,
    clients: int = 5,
    epsilon: float = 50.0,
    extra: str = "",
    privacy: str = "",
    label: str = "",
) -> ArmResult:
    """Run one arm in the simulation engine in its own folder under ``root`` (``label``
    names it, by default the strategy and whether it is poisoned)."""
    from server.federation.app_dir import CLIENT_APP
    from server.federation.metrics import MetricsLog
    from server.federation.train import load_plan, train_simulated

    name = label or f"{strategy}-{'poisoned' if poisoned else 'clean'}"
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    policy = folder / "federation.yaml"
    policy.write_text(
        arm_policy(
            model,
            strategy=strategy,
            rounds=rounds,
            clients=clients,
            epsilon=epsilon,
            extra=extra,
            privacy=privacy,
        )
    )
    plan = load_plan(policy, workdir=folder / "run", run_id=name)
    started = time.monotonic()
    train_simulated(
        plan,
        num_clients=clients,
        data_dir=data,
        cpus_per_client=0.1,  # every holder at once: none may miss the round
        client_app=POISONED_APP if poisoned else CLIENT_APP,
    )
    records = MetricsLog(folder / "run" / "metrics.jsonl").read()
    last = records[-1]
    return ArmResult(
        strategy=strategy,
        poisoned=poisoned,
        accuracy=float(last["eval_accuracy"] or 0.0),
        flagged={int(r["round"]): dict(r.get("flagged", {})) for r in records},
        user_epsilon=last.get("user_epsilon"),
        holder_epsilon=max((float(e) for e in (last.get("epsilon") or {}).values()), default=0.0),
        seconds=time.monotonic() - started,
    )
