"""The privacy transaction of one round on a data holder, without Flower.

Order of operations, which is the holder's privacy promise: evaluate the received model when the
coordinator asks (a holder that then declines still says how the model does on its data), price
the round with the ledger, refuse it if it does not fit (reply ``declined`` with the reason; the
ledger is untouched), train, store the update, charge the ledger, and only then hand the reply
data back. A retried round (the coordinator restarted) gets the stored update again: re-sending
the same output costs no extra privacy; training again would.

The Flower adapter (client/federation/flower_app.py) reads a train message into a
:class:`RoundRequest`, decodes the global model it carries (plaintext, or the HE sum decrypted),
and turns the :class:`RoundReply` into a Flower reply (masked by SecAgg+ or encrypted under HE).
The model, tokenizer and tokenized data are cached at module level, so a process that serves
many rounds (a Ray actor, or client/node/warm.py's warm parent) pays start-up once.
"""

from __future__ import annotations

import functools
import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import TensorDataset

from client.contract.labelled import LabelledData, load_labelled
from client.contract.model import (
    TrainableModel,
    build_for_policy,
    get_trainable,
    quiet_libraries,
    set_trainable,
)
from client.federation.round_log import RoundEntry, append_round
from client.privacy.ledger import PrivacyLedger
from client.training.loop import (
    RoundPlan,
    evaluate,
    pick_device,
    plan_round,
    train_round,
    training_data,
)
from client.training.plan import TrainingChoice, choose_training
from fedge import messages as m
from fedge.atomic import atomic_write_bytes
from fedge.errors import BudgetExceededError, UsageError
from fedge.he_wire import SECRET_CONTEXT_FILE
from fedge.logs import get_logger
from policies import FederationPolicy, check_text

__all__ = [
    "Arrays",
    "ClientSettings",
    "Metrics",
    "Prepared",
    "ReceivedModel",
    "RoundReply",
    "RoundRequest",
    "coordinator_policy",
    "evaluation",
    "plan_for",
    "prepare",
    "split_heldout",
    "train_and_charge",
]

log = get_logger(__name__)
Arrays = dict[str, npt.NDArray[Any]]
Metrics = dict[str, int | float]
ReceivedModel = Callable[[TrainableModel], Arrays]
"""The global model a message carries, as arrays named like ``model``'s trainable weights."""


@dataclass(frozen=True)
class ClientSettings:
    """The data holder's side of things: who it is, its data, its state, its own policy."""

    name: str
    data_path: Path
    state_dir: Path
    policy: FederationPolicy | None = None  # the holder's budget; None: accept the coordinator's
    eval_fraction: float = 0.2
    seed: int = 0
    he_secret_context: Path | None = None  # protection he: the shared secret context

    def he_context_path(self) -> Path:
        """The shared HE secret context: as set, else the one in the state directory."""
        return self.he_secret_context or self.state_dir / SECRET_CONTEXT_FILE


@dataclass(frozen=True)
class RoundRequest:
    """What a train message asks of this holder, read out of the message by the adapter."""

    round: int
    rounds: int
    run_id: str
    policy_text: str  # the coordinator's policy, validated on first use (coordinator_policy)
    evaluate: bool  # evaluate the received model first
    masked: bool  # the update leaves masked (the SecAgg+ stage that carries the model)


@dataclass(frozen=True)
class RoundReply:
    """What to send back: the metrics, the update (none when declined) and why it was declined.

    ``evaluation`` holds the received model's scores on the held-out part when they were asked
    for and there is a held-out part.
    """

    metrics: Metrics
    arrays: Arrays | None = None
    reason: str | None = None
    evaluation: Metrics | None = None


@functools.lru_cache(maxsize=8)
def coordinator_policy(text: str) -> FederationPolicy:
    """The coordinator's policy from the text its messages carry, validated once per text."""
    # One message asks for its policy several times (the evaluation, the round, the reply's
    # protection) and every message of a run carries the same text: validate it once.
    report = check_text(text, name="coordinator policy")
    report.raise_for_problems()
    policy = report.documents[0].document
    if not isinstance(policy, FederationPolicy):
        raise UsageError("the coordinator sent a policy that is not a FederationPolicy")
    return policy


@dataclass
class Prepared:
    """The model, and the data sets its trainee trains on: tokens for the whole classifier, or
    pooled features for the head alone when the encoder is frozen (computed once, cached)."""

    model: TrainableModel
    train: TensorDataset
    eval: TensorDataset

    @property
    def trainee(self) -> torch.nn.Module:
        return self.model.trainee


_cache: dict[tuple[Any, ...], Any] = {}


def split_heldout(
    data: LabelledData, *, fraction: float, seed: int
) -> tuple[LabelledData, LabelledData]:
    """(train, held-out): a seeded ``fraction`` of the examples held out for evaluation."""
    order = list(range(len(data)))
    random.Random(f"eval:{seed}").shuffle(order)
    cut = int(len(order) * fraction) if len(order) > 1 else 0
    return data.subset(sorted(order[cut:])), data.subset(sorted(order[:cut]))


def _local_data(settings: ClientSettings, num_labels: int) -> tuple[LabelledData, LabelledData]:
    """The holder's (train, held-out) split; cheap, so a round can be priced before any model."""
    stat = settings.data_path.stat() if settings.data_path.exists() else None
    key = (
        "data",
        str(settings.data_path),
        stat and stat.st_mtime_ns,
        num_labels,
        settings.eval_fraction,
    )
    if key not in _cache:
        data = load_labelled(settings.data_path, num_labels=num_labels)
        _cache[key] = split_heldout(data, fraction=settings.eval_fraction, seed=settings.seed)
    split: tuple[LabelledData, LabelledData] = _cache[key]
    return split


def prepare(settings: ClientSettings, policy: FederationPolicy) -> Prepared:
    """Model and tokenized data for ``policy``'s model section (the holder's own local paths)."""
    spec = policy.spec
    model_key = ("model", spec.model.model_dump_json(), spec.lora and spec.lora.model_dump_json())
    if model_key not in _cache:
        quiet_libraries()
        _cache[model_key] = build_for_policy(spec, seed=settings.seed)
    model: TrainableModel = _cache[model_key]
    train, held = _local_data(settings, spec.model.num_labels)
    tokens_key = ("tokens", id(train), model_key, spec.model.max_length)
    if tokens_key not in _cache:
        length, device = spec.model.max_length, pick_device()
        _cache[tokens_key] = tuple(
            training_data(model, part.texts, part.labels, max_length=length, device=device)
            for part in (train, held)
        )
    train_ds, eval_ds = _cache[tokens_key]
    return Prepared(model=model, train=train_ds, eval=eval_ds)


def plan_for(
    settings: ClientSettings,
    own: FederationPolicy,
    coordinator: FederationPolicy,
    ledger: PrivacyLedger,
    *,
    rounds_left: int,
    private: bool = True,
) -> tuple[RoundPlan, TrainingChoice]:
    """This round's noise and steps: the coordinator's training settings (those it leaves out
    chosen for this holder's data by client/training/plan.py), the holder's budget. Without
    ``private`` (user-level DP only) the plan's noise is not used and no budget is asked."""
    training, privacy = coordinator.spec.training, own.spec.privacy
    train_data, _held = _local_data(settings, own.spec.model.num_labels)
    choice = choose_training(
        max(1, len(train_data)),
        rounds=coordinator.spec.rounds,
        lora=coordinator.spec.lora is not None,
        batch_size=training.batch_size,
        local_epochs=training.local_epochs,
        learning_rate=training.learning_rate,
    )
    plan = plan_round(
        num_examples=len(train_data),
        batch_size=choice.batch_size,
        epochs=choice.local_epochs,
        max_grad_norm=privacy.max_grad_norm,
        rounds=rounds_left,
        target_epsilon=privacy.target_epsilon,
        delta=privacy.delta,
        accountant=privacy.accountant,
        noise_multiplier=privacy.noise_multiplier if private else 1.0,
        history=ledger.history(),
    )
    return plan, choice


def evaluation(
    settings: ClientSettings, policy: FederationPolicy, arrays: Arrays
) -> Metrics | None:
    """Loss and accuracy of ``arrays`` on the held-out part; None when there is none."""
    prepared = prepare(settings, policy)
    set_trainable(prepared.model.model, arrays)
    scores = evaluate(prepared.trainee, prepared.eval, device=pick_device())
    if scores.num_examples == 0:
        return None
    return {
        m.NUM_EXAMPLES: scores.num_examples,
        m.EVAL_LOSS: scores.loss,
        m.EVAL_ACCURACY: scores.accuracy,
        m.DECLINED: 0,
    }


def _update_path(settings: ClientSettings, run_id: str, round_: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    return settings.state_dir / "updates" / f"{safe}-round-{round_:06d}.npz"


def _save_update(path: Path, arrays: Arrays, metrics: Metrics) -> None:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        allow_pickle=False,
        **{f"a/{k}": v for k, v in arrays.items()},
        **{f"m/{k}": np.asarray(v) for k, v in metrics.items()},
    )
    atomic_write_bytes(path, buffer.getvalue(), mode=0o600)


def _load_update(path: Path) -> tuple[Arrays, Metrics]:
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k[2:]: npz[k] for k in npz.files if k.startswith("a/")}
        metrics = {k[2:]: npz[k].item() for k in npz.files if k.startswith("m/")}
    return arrays, metrics


def train_and_charge(
    request: RoundRequest, settings: ClientSettings, received: ReceivedModel
) -> RoundReply:
    """One round on this holder; first evaluate the received model when the coordinator asks.

    Evaluating the model a train message carries (the global model of the previous round) saves
    the coordinator a second message, and with it a second round trip through the SuperLink and
    a second ClientApp start, per round. It happens before the budget check, so a holder that
    declines to train still says how the model does on its data.
    """
    scores = None
    if request.evaluate:
        own = settings.policy or coordinator_policy(request.policy_text)
        model = prepare(settings, own).model
        scores = evaluation(settings, own, received(model))
    reply = _train_only(request, settings, received)
    _log_round(request, settings, reply)
    return RoundReply(reply.metrics, reply.arrays, reply.reason, evaluation=scores)


def _log_round(request: RoundRequest, settings: ClientSettings, reply: RoundReply) -> None:
    """One line in the holder's round log (round_log.py), which ``fedge-client start`` prints."""
    own = settings.policy or coordinator_policy(request.policy_text)
    seconds = reply.metrics.get(m.TRAIN_SECONDS)
    append_round(
        settings.state_dir,
        RoundEntry(
            run_id=request.run_id,
            round=request.round,
            rounds=request.rounds,
            declined=bool(reply.metrics.get(m.DECLINED, 0)),
            epsilon=float(reply.metrics.get(m.EPSILON, 0.0)),
            target_epsilon=own.spec.privacy.target_epsilon,
            examples=int(reply.metrics.get(m.NUM_EXAMPLES, 0)),
            train_seconds=float(seconds) if seconds is not None else None,
            reason=reply.reason,
        ),
    )


def _train_only(
    request: RoundRequest, settings: ClientSettings, received: ReceivedModel
) -> RoundReply:
    round_, rounds, run_id = request.round, request.rounds, request.run_id
    coordinator = coordinator_policy(request.policy_text)
    own = settings.policy or coordinator
    ledger = PrivacyLedger.for_policy(settings.state_dir, own)
    # Before any re-send: an update must never leave in a weaker protection than asked for.
    refusal = _protection_refusal(request, own, coordinator)
    if refusal is not None:
        return _decline(ledger, refusal)
    if not sample_level(own, coordinator):
        return _train_user_level(
            request, settings, received, own=own, coordinator=coordinator, ledger=ledger
        )
    stored = _update_path(settings, run_id, round_)
    if ledger.charged(round=round_, run_id=run_id) is not None:
        if stored.exists():
            sent_arrays, sent_metrics = _load_update(stored)
            log.info(
                "round %d of run %s was charged already: re-sending its update", round_, run_id
            )
            return RoundReply(sent_metrics, arrays=sent_arrays)
        return _decline(ledger, "this round was already charged and its update is lost")
    try:
        plan, choice = plan_for(
            settings, own, coordinator, ledger, rounds_left=max(1, rounds - round_ + 1)
        )
        before = ledger.spent()
        ledger.check(
            round=round_,
            run_id=run_id,
            noise_multiplier=plan.noise_multiplier,
            sample_rate=plan.sample_rate,
            steps=plan.steps,
        )
    except (BudgetExceededError, UsageError) as exc:
        return _decline(ledger, str(exc))
    charge_preview = ledger.quote(
        noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=plan.steps
    )
    update, metrics = _train_locally(
        request,
        settings,
        received,
        own=own,
        coordinator=coordinator,
        plan=plan,
        choice=choice,
        epsilon=charge_preview,
        epsilon_round=charge_preview - before,
    )
    _save_update(stored, update, metrics)
    charge = ledger.record(
        round=round_,
        run_id=run_id,
        noise_multiplier=plan.noise_multiplier,
        sample_rate=plan.sample_rate,
        steps=plan.steps,
    )
    metrics[m.EPSILON] = charge.epsilon_after
    return RoundReply(metrics, arrays=update)


def _protection_refusal(
    request: RoundRequest, own: FederationPolicy, coordinator: FederationPolicy
) -> str | None:
    if "secagg" in (own.spec.protection, coordinator.spec.protection) and not request.masked:
        return "the policy requires secure aggregation"
    if own.spec.protection != coordinator.spec.protection:
        return (
            f"this holder's policy asks for protection {own.spec.protection}, the coordinator's "
            f"run uses {coordinator.spec.protection}"
        )
    return None


def sample_level(own: FederationPolicy, coordinator: FederationPolicy) -> bool:
    """DP-SGD here unless both this holder's policy and the coordinator's say level user: a
    holder never gives up the protection of its records because the coordinator asked."""
    return not (own.spec.privacy.level == coordinator.spec.privacy.level == "user")


def _train_user_level(
    request: RoundRequest,
    settings: ClientSettings,
    received: ReceivedModel,
    *,
    own: FederationPolicy,
    coordinator: FederationPolicy,
    ledger: PrivacyLedger,
) -> RoundReply:
    """Level user: plain training, no ledger charge; the coordinator clips this update and
    noises the mean (server/federation/user_dp.py), which prices the holder's contribution."""
    try:
        plan, choice = plan_for(settings, own, coordinator, ledger, rounds_left=1, private=False)
    except UsageError as exc:
        return _decline(ledger, str(exc))
    update, metrics = _train_locally(
        request,
        settings,
        received,
        own=own,
        coordinator=coordinator,
        plan=plan,
        choice=choice,
        epsilon=ledger.spent(),
        epsilon_round=0.0,
        private=False,
    )
    return RoundReply(metrics, arrays=update)


def _train_locally(
    request: RoundRequest,
    settings: ClientSettings,
    received: ReceivedModel,
    *,
    own: FederationPolicy,
    coordinator: FederationPolicy,
    plan: RoundPlan,
    choice: TrainingChoice,
    epsilon: float,
    epsilon_round: float,
    private: bool = True,
) -> tuple[Arrays, Metrics]:
    """Train the received model on this holder's data; the update and the reply's metrics
    (``epsilon``: what the holder will have spent; without ``private`` no noise was added)."""
    prepared = prepare(settings, own)
    set_trainable(prepared.model.model, received(prepared.model))
    result = train_round(
        prepared.trainee,
        prepared.train,
        plan,
        learning_rate=choice.learning_rate,
        max_physical_batch_size=coordinator.spec.training.max_physical_batch_size,
        device=pick_device(),
        seed=settings.seed + request.round,
        private=private,
    )
    metrics: Metrics = {
        m.NUM_EXAMPLES: result.num_examples,
        m.TRAIN_LOSS: result.loss,
        m.TRAIN_SECONDS: result.seconds,
        m.EPSILON: epsilon,
        m.EPSILON_ROUND: epsilon_round,
        m.NOISE_MULTIPLIER: plan.noise_multiplier if private else 0.0,
        m.STEPS: plan.steps,
        m.BATCH_SIZE: plan.batch_size,
        m.LEARNING_RATE: choice.learning_rate,
        m.DECLINED: 0,
    }
    return get_trainable(prepared.model.model), metrics


def _decline(ledger: PrivacyLedger, reason: str) -> RoundReply:
    log.warning("declining the round: %s", reason)
    metrics: Metrics = {m.DECLINED: 1, m.NUM_EXAMPLES: 0, m.EPSILON: ledger.spent()}
    return RoundReply(metrics, reason=reason)
