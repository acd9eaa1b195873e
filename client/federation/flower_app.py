"""fedge's Flower ClientApp: train and evaluate on the data holder's own data, inside its budget.

The same app runs in the simulation engine (one virtual node per partition, settings from the run
config) and in the Deployment Engine (settings from the SuperNode's ``--node-config``). The
model, tokenizer and tokenized data are cached at module level: in the simulation engine the Ray
actors live for the whole run, so start-up is paid once; Flower 1.41's Deployment Engine starts a
fresh ``flwr-clientapp`` process for every message, where the cache cannot help unless the data
holder runs client/node/warm.py, which fills the cache once (:func:`warm_up`) and forks every task
from that warm process.

Privacy order of operations: price the round with the ledger, refuse it if it does not fit
(reply ``declined`` with the reason; the ledger is untouched), train, store the update, charge the
ledger, and only then reply. A retried round (the coordinator restarted) gets the stored update
again: re-sending the same output costs no extra privacy; training again would.
"""

from __future__ import annotations

import functools
import io
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch.utils.data import TensorDataset

from client.contract.labelled import LabelledData, load_labelled
from client.contract.model import (
    TrainableModel,
    build_for_policy,
    get_trainable,
    quiet_libraries,
    set_trainable,
)
from client.federation.secagg import arrived_masked, secagg_mod
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
from fedge.errors import BudgetExceededError, FedgeError, UsageError
from fedge.logs import get_logger
from policies import FederationPolicy, check_text, load_one

__all__ = [
    "ClientSettings",
    "app",
    "make_client_app",
    "settings_from_context",
    "settings_from_node_config",
    "warm_up",
]

log = get_logger(__name__)
Arrays = dict[str, npt.NDArray[Any]]
HE_SECRET_FILE = "he-secret.ctx"  # noqa: S105 - a file name, not a secret
"""Where a holder keeps the federation's shared HE secret context, in its state directory."""


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
        return self.he_secret_context or self.state_dir / HE_SECRET_FILE


def settings_from_context(context: Context) -> ClientSettings:
    """Deployment Engine: ``--node-config``; simulation: partition id plus the run config."""
    if "partition-id" in context.node_config and "data-dir" in context.run_config:
        return _simulated_settings(context)
    return settings_from_node_config(context.node_config, node_id=context.node_id)


def settings_from_node_config(
    config: Mapping[str, Any], *, node_id: int | None = None
) -> ClientSettings:
    """A data holder's settings from its SuperNode's ``--node-config`` (already parsed)."""
    try:
        data_path = Path(str(config["data-path"]))
        state_dir = Path(str(config["state-dir"]))
    except KeyError as exc:
        raise UsageError(f"node config: {exc.args[0]} is required") from exc
    policy_path = config.get("policy-path")
    policy = load_one(str(policy_path), FederationPolicy) if policy_path else None
    return ClientSettings(
        name=str(config.get("client-name", f"node-{node_id}")),
        data_path=data_path,
        state_dir=state_dir,
        policy=policy,
        eval_fraction=float(str(config.get("eval-fraction", 0.2))),
        he_secret_context=Path(str(config["he-secret-context"]))
        if "he-secret-context" in config
        else None,
    )


def _simulated_settings(context: Context) -> ClientSettings:
    """A virtual client of ``fedge train --simulate``: partition N reads client-NN.tsv."""
    from client.data.partition import client_file_name

    index = int(str(context.node_config["partition-id"]))
    total = int(str(context.node_config["num-partitions"]))
    name = client_file_name(index, total, "tsv").removesuffix(".tsv")
    folder = Path(str(context.run_config["data-dir"]))
    candidates = [folder / f"{name}.{fmt}" for fmt in ("tsv", "csv", "jsonl")]
    return ClientSettings(
        name=name,
        data_path=next((p for p in candidates if p.exists()), candidates[0]),
        state_dir=Path(str(context.run_config["state-dir"])) / name,
        he_secret_context=Path(str(context.run_config["he-secret-context"]))
        if "he-secret-context" in context.run_config
        else None,
    )


@dataclass
class _Prepared:
    """The model, and the data sets its trainee trains on: tokens for the whole classifier, or
    pooled features for the head alone when the encoder is frozen (computed once, cached)."""

    model: TrainableModel
    train: TensorDataset
    eval: TensorDataset

    @property
    def trainee(self) -> torch.nn.Module:
        return self.model.trainee


_cache: dict[tuple[Any, ...], Any] = {}


def _split(data: LabelledData, *, fraction: float, seed: int) -> tuple[LabelledData, LabelledData]:
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
        _cache[key] = _split(data, fraction=settings.eval_fraction, seed=settings.seed)
    split: tuple[LabelledData, LabelledData] = _cache[key]
    return split


def _prepare(settings: ClientSettings, policy: FederationPolicy) -> _Prepared:
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
    return _Prepared(model=model, train=train_ds, eval=eval_ds)


def warm_up(settings: ClientSettings) -> bool:
    """Load the model and tokenize the data now, into the module cache a task then finds warm.

    Only the holder's own policy says which model to load before a message arrives; without one
    (``policy`` None: the coordinator's policy decides) nothing is loaded and this returns False.
    """
    if settings.policy is None:
        return False
    policy = settings.policy
    _prepare(settings, policy)
    # Price the next round once here, so the RDP curves it needs are computed before the fork
    # and every task inherits them (client/privacy/ledger.py caches them per noise and sample rate).
    ledger = PrivacyLedger.for_policy(settings.state_dir, policy)
    try:
        plan, _choice = _plan(settings, policy, policy, ledger, rounds_left=policy.spec.rounds)
        ledger.quote(
            noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=plan.steps
        )
    except (BudgetExceededError, UsageError) as exc:
        log.info("warm-up: the next round would be declined (%s)", exc)
    return True


def _coordinator_policy(message: Message) -> FederationPolicy:
    return _policy_from_text(str(message.content.config_records[m.CONFIG][m.POLICY]))


@functools.lru_cache(maxsize=8)
def _policy_from_text(text: str) -> FederationPolicy:
    # One message asks for its policy several times (the evaluation, the round, the reply's
    # protection) and every message of a run carries the same text: validate it once.
    report = check_text(text, name="coordinator policy")
    report.raise_for_problems()
    policy = report.documents[0].document
    if not isinstance(policy, FederationPolicy):
        raise UsageError("the coordinator sent a policy that is not a FederationPolicy")
    return policy


def _arrays(message: Message) -> Arrays:
    return {k: v.numpy() for k, v in message.content.array_records[m.ARRAYS].items()}


def _record(arrays: Arrays) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _protection(message: Message) -> str:
    """The coordinator's ``protection`` for this run (parsed from the policy it sent)."""
    config = message.content.config_records.get(m.CONFIG)
    if config is None or m.POLICY not in config:
        return "none"
    return _coordinator_policy(message).spec.protection


def _chunks_record(chunks: tuple[bytes, ...] | list[bytes]) -> ArrayRecord:
    return ArrayRecord(
        {f"chunk-{i:05d}": Array(np.frombuffer(c, dtype=np.uint8)) for i, c in enumerate(chunks)}
    )


def _he_context(settings: ClientSettings) -> Any:
    """The shared secret context, loaded once per process (it is the holders' key)."""
    from client.federation.he import load_secret_context

    path = settings.he_context_path()
    key = ("he", str(path))
    if key not in _cache:
        if not path.is_file():
            raise UsageError(
                f"{path}: the federation uses protection he, and this holder has no secret "
                "context (get it from the federation's key custodian)"
            )
        _cache[key] = load_secret_context(path)
    return _cache[key]


def _incoming(message: Message, settings: ClientSettings, model: TrainableModel) -> Arrays:
    """The global model a message carries: plaintext, or the encrypted sum decrypted here."""
    encrypted = message.content.array_records.get(m.HE_GLOBAL)
    if encrypted is None:
        return _arrays(message)
    from client.federation.he import decrypt_aggregate

    reference = get_trainable(model.model)
    config = message.content.config_records[m.CONFIG]
    total = int(str(config[m.HE_TOTAL_WEIGHT]))
    chunks = [encrypted[name].numpy().tobytes() for name in sorted(encrypted.keys())]
    values = decrypt_aggregate(
        _he_context(settings), chunks, [v.shape for v in reference.values()], total
    )
    return dict(zip(reference, values, strict=True))


def _reply(
    message: Message,
    settings: ClientSettings,
    metrics: dict[str, int | float],
    *,
    arrays: Arrays | None = None,
    reason: str | None = None,
) -> Message:
    info: dict[str, str] = {m.CLIENT: settings.name}
    records: dict[str, ArrayRecord] = {}
    if arrays is not None and _protection(message) == "he":
        # The update leaves the machine only as ciphertexts under the holders' shared key.
        from client.federation.he import encrypt_update

        encrypted = encrypt_update(_he_context(settings), list(arrays.values()))
        records[m.HE_UPDATE] = _chunks_record(encrypted.chunks)
        metrics = {**metrics, m.HE_NUM_VALUES: encrypted.num_values}
        info[m.HE_DIGEST] = encrypted.digest
    elif arrays is not None:
        records[m.ARRAYS] = _record(arrays)
    content = RecordDict({m.METRICS: MetricRecord(metrics), **records})  # type: ignore[arg-type]
    if reason is not None:
        info[m.REASON] = reason
    content[m.INFO] = ConfigRecord(info)  # type: ignore[arg-type]
    return Message(content, reply_to=message)


def _update_path(settings: ClientSettings, run_id: str, round_: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    return settings.state_dir / "updates" / f"{safe}-round-{round_:06d}.npz"


def _save_update(path: Path, arrays: Arrays, metrics: dict[str, int | float]) -> None:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        allow_pickle=False,
        **{f"a/{k}": v for k, v in arrays.items()},
        **{f"m/{k}": np.asarray(v) for k, v in metrics.items()},
    )
    atomic_write_bytes(path, buffer.getvalue(), mode=0o600)


def _load_update(path: Path) -> tuple[Arrays, dict[str, int | float]]:
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k[2:]: npz[k] for k in npz.files if k.startswith("a/")}
        metrics = {k[2:]: npz[k].item() for k in npz.files if k.startswith("m/")}
    return arrays, metrics


def _train(message: Message, settings: ClientSettings) -> Message:
    """Train one round; first evaluate the incoming model when the coordinator asks.

    Evaluating the model a train message carries (the global model of the previous round) saves
    the coordinator a second message, and with it a second round trip through the SuperLink and
    a second ClientApp start, per round. It happens before the budget check, so a holder that
    declines to train still says how the model does on its data.
    """
    config = message.content.config_records[m.CONFIG]
    evaluation = None
    if int(str(config.get(m.EVALUATE, 0))):
        own = settings.policy or _coordinator_policy(message)
        model = _prepare(settings, own).model
        evaluation = _evaluation(settings, own, _incoming(message, settings, model))
    reply = _train_only(message, settings)
    if evaluation is not None and reply.has_content():
        # In the one MetricRecord Flower's strategies accept, with its own example count.
        metrics = reply.content.metric_records[m.METRICS]
        metrics[m.EVAL_EXAMPLES] = evaluation[m.NUM_EXAMPLES]
        metrics[m.EVAL_LOSS] = evaluation[m.EVAL_LOSS]
        metrics[m.EVAL_ACCURACY] = evaluation[m.EVAL_ACCURACY]
    return reply


def _train_only(message: Message, settings: ClientSettings) -> Message:
    config = message.content.config_records[m.CONFIG]
    round_, rounds, run_id = (
        int(str(config[m.ROUND])),
        int(str(config[m.ROUNDS])),
        str(config[m.RUN_ID]),
    )
    coordinator = _coordinator_policy(message)
    own = settings.policy or coordinator
    ledger = PrivacyLedger.for_policy(settings.state_dir, own)
    # Before any re-send: an update must never leave in a weaker protection than asked for.
    if "secagg" in (own.spec.protection, coordinator.spec.protection) and not arrived_masked(
        message
    ):
        return _decline(message, settings, ledger, "the policy requires secure aggregation")
    if own.spec.protection != coordinator.spec.protection:
        return _decline(
            message,
            settings,
            ledger,
            f"this holder's policy asks for protection {own.spec.protection}, the coordinator's "
            f"run uses {coordinator.spec.protection}",
        )
    stored = _update_path(settings, run_id, round_)
    if ledger.charged(round=round_, run_id=run_id) is not None:
        if stored.exists():
            sent_arrays, sent_metrics = _load_update(stored)
            log.info(
                "round %d of run %s was charged already: re-sending its update", round_, run_id
            )
            return _reply(message, settings, sent_metrics, arrays=sent_arrays)
        return _decline(
            message, settings, ledger, "this round was already charged and its update is lost"
        )
    try:
        plan, choice = _plan(
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
        return _decline(message, settings, ledger, str(exc))
    prepared = _prepare(settings, own)
    set_trainable(prepared.model.model, _incoming(message, settings, prepared.model))
    result = train_round(
        prepared.trainee,
        prepared.train,
        plan,
        learning_rate=choice.learning_rate,
        max_physical_batch_size=coordinator.spec.training.max_physical_batch_size,
        device=pick_device(),
        seed=settings.seed + round_,
    )
    update = get_trainable(prepared.model.model)
    charge_preview = ledger.quote(
        noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=plan.steps
    )
    metrics: dict[str, int | float] = {
        m.NUM_EXAMPLES: result.num_examples,
        m.TRAIN_LOSS: result.loss,
        m.TRAIN_SECONDS: result.seconds,
        m.EPSILON: charge_preview,
        m.EPSILON_ROUND: charge_preview - before,
        m.NOISE_MULTIPLIER: plan.noise_multiplier,
        m.STEPS: plan.steps,
        m.BATCH_SIZE: plan.batch_size,
        m.LEARNING_RATE: choice.learning_rate,
        m.DECLINED: 0,
    }
    _save_update(stored, update, metrics)
    charge = ledger.record(
        round=round_,
        run_id=run_id,
        noise_multiplier=plan.noise_multiplier,
        sample_rate=plan.sample_rate,
        steps=plan.steps,
    )
    metrics[m.EPSILON] = charge.epsilon_after
    return _reply(message, settings, metrics, arrays=update)


def _plan(
    settings: ClientSettings,
    own: FederationPolicy,
    coordinator: FederationPolicy,
    ledger: PrivacyLedger,
    *,
    rounds_left: int,
) -> tuple[RoundPlan, TrainingChoice]:
    """This round's noise and steps: the coordinator's training settings (those it leaves out
    chosen for this holder's data by client/training/plan.py), the holder's budget."""
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
        noise_multiplier=privacy.noise_multiplier,
        history=ledger.history(),
    )
    return plan, choice


def _decline(
    message: Message, settings: ClientSettings, ledger: PrivacyLedger, reason: str
) -> Message:
    log.warning("declining the round: %s", reason)
    metrics: dict[str, int | float] = {m.DECLINED: 1, m.NUM_EXAMPLES: 0, m.EPSILON: ledger.spent()}
    return _reply(message, settings, metrics, reason=reason)


def _evaluation(
    settings: ClientSettings, policy: FederationPolicy, arrays: Arrays
) -> dict[str, int | float] | None:
    """Loss and accuracy of ``arrays`` on the held-out part; None when there is none."""
    prepared = _prepare(settings, policy)
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


def _evaluate(message: Message, settings: ClientSettings) -> Message:
    policy = settings.policy or _coordinator_policy(message)
    incoming = _incoming(message, settings, _prepare(settings, policy).model)
    metrics = _evaluation(settings, policy, incoming)
    if metrics is None:
        return _reply(
            message, settings, {m.DECLINED: 1, m.NUM_EXAMPLES: 0}, reason="no held-out examples"
        )
    return _reply(message, settings, metrics)


def _initial(message: Message, settings: ClientSettings) -> Message:
    spec = (settings.policy or _coordinator_policy(message)).spec
    # A fresh model from the seed, not the warm one: its weights may have moved in earlier runs.
    quiet_libraries()
    fresh = build_for_policy(spec, seed=settings.seed)
    content = RecordDict({m.ARRAYS: _record(get_trainable(fresh.model))})
    content[m.INFO] = ConfigRecord({m.CLIENT: settings.name})
    return Message(content, reply_to=message)


def _release(message: Message, settings: ClientSettings) -> Message:
    """Decrypt the final global model for the operator (protection he), rounded.

    The final model is the federation's product, released to the operator at the end of a run:
    the holders' DP noise already bounds what it says about any one holder. It is rounded to
    1e-5, far above the CKKS decryption noise, which would otherwise tell something about the
    shared secret key.
    """
    policy = settings.policy or _coordinator_policy(message)
    arrays = _incoming(message, settings, _prepare(settings, policy).model)
    rounded = {k: np.round(v, 5).astype(v.dtype) for k, v in arrays.items()}
    content = RecordDict({m.ARRAYS: _record(rounded)})
    content[m.INFO] = ConfigRecord({m.CLIENT: settings.name})
    return Message(content, reply_to=message)


def _guarded(
    handler: Callable[[Message, ClientSettings], Message],
    resolve: Callable[[Context], ClientSettings],
) -> Callable[[Message, Context], Message]:
    def run(message: Message, context: Context) -> Message:
        try:
            settings = resolve(context)
        except FedgeError as exc:
            log.error("client settings: %s", exc)
            unknown = ClientSettings(f"node-{context.node_id}", Path(), Path())
            return _reply(message, unknown, {m.DECLINED: 1, m.NUM_EXAMPLES: 0}, reason=str(exc))
        try:
            return handler(message, settings)
        except FedgeError as exc:
            # The data holder's problem (bad data file, missing model) is its own to see in its
            # log; the coordinator gets the one-line reason as a declined round.
            log.error("%s: %s", settings.name, exc)
            metrics: dict[str, int | float] = {m.DECLINED: 1, m.NUM_EXAMPLES: 0}
            return _reply(message, settings, metrics, reason=str(exc))

    return run


def make_client_app(
    resolve: Callable[[Context], ClientSettings] = settings_from_context,
) -> ClientApp:
    """A ClientApp whose settings come from ``resolve`` (node config by default)."""
    # SecAgg+ (protection secagg) runs as Flower's mod around the train handler; messages
    # without SecAgg+ configuration pass through it untouched.
    client_app = ClientApp(mods=[secagg_mod])
    client_app.train()(_guarded(_train, resolve))
    client_app.evaluate()(_guarded(_evaluate, resolve))
    client_app.query(m.QUERY_INIT)(_guarded(_initial, resolve))
    client_app.query(m.QUERY_RELEASE)(_guarded(_release, resolve))
    return client_app


app = make_client_app()
