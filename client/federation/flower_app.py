"""fedge's Flower ClientApp: the Flower adapter around the data holder's privacy transaction.

This module only speaks Flower: it reads the holder's settings from a Flower context, reads a
message into a request, decodes the global model it carries (plaintext, or the CKKS sum decrypted
with the holders' shared key), hands the round to client/federation/transaction.py (evaluate,
price with the ledger, decline past the budget, train, store the update, charge), and turns what
comes back into a reply: plaintext, masked by SecAgg+ (Flower's mod around the train handler) or
encrypted under HE.

The same app runs in the simulation engine (one virtual node per partition, settings from the run
config) and in the Deployment Engine (settings from the SuperNode's ``--node-config``). The
model, tokenizer and tokenized data are cached at module level by the transaction: in the
simulation engine the Ray actors live for the whole run, so start-up is paid once; Flower 1.41's
Deployment Engine starts a fresh ``flwr-clientapp`` process for every message, where the cache
cannot help unless the data holder runs client/node/warm.py, which fills the cache once
(:func:`warm_up`) and forks every task from that warm process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.contract.model import TrainableModel, build_for_policy, get_trainable, quiet_libraries
from client.federation.secagg import arrived_masked, secagg_mod
from client.federation.transaction import (
    Arrays,
    ClientSettings,
    Metrics,
    RoundReply,
    RoundRequest,
    coordinator_policy,
    evaluation,
    plan_for,
    prepare,
    train_and_charge,
)
from client.privacy.ledger import PrivacyLedger
from fedge import messages as m
from fedge.errors import BudgetExceededError, FedgeError, UsageError
from fedge.he_wire import chunk_name, in_chunk_order
from fedge.logs import get_logger
from policies import FederationPolicy, load_one

__all__ = [
    "app",
    "make_client_app",
    "settings_from_context",
    "settings_from_node_config",
    "warm_up",
]

log = get_logger(__name__)


def settings_from_context(context: Context) -> ClientSettings:
    """Deployment Engine: ``--node-config``; simulation: partition id plus the run config."""
    if "partition-id" in context.node_config and m.RUN_DATA_DIR in context.run_config:
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
    folder = Path(str(context.run_config[m.RUN_DATA_DIR]))
    candidates = [folder / f"{name}.{fmt}" for fmt in ("tsv", "csv", "jsonl")]
    return ClientSettings(
        name=name,
        data_path=next((p for p in candidates if p.exists()), candidates[0]),
        state_dir=Path(str(context.run_config[m.RUN_STATE_DIR])) / name,
        he_secret_context=Path(str(context.run_config[m.RUN_HE_SECRET_CONTEXT]))
        if m.RUN_HE_SECRET_CONTEXT in context.run_config
        else None,
    )


def warm_up(settings: ClientSettings) -> bool:
    """Load the model and tokenize the data now, into the module cache a task then finds warm.

    Only the holder's own policy says which model to load before a message arrives; without one
    (``policy`` None: the coordinator's policy decides) nothing is loaded and this returns False.
    """
    if settings.policy is None:
        return False
    policy = settings.policy
    prepare(settings, policy)
    # Price the next round once here, so the RDP curves it needs are computed before the fork and
    # every task inherits them (client/privacy/accounting.py caches them per noise and sample rate).
    ledger = PrivacyLedger.for_policy(settings.state_dir, policy)
    try:
        plan, _choice = plan_for(settings, policy, policy, ledger, rounds_left=policy.spec.rounds)
        ledger.quote(
            noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=plan.steps
        )
    except (BudgetExceededError, UsageError) as exc:
        log.info("warm-up: the next round would be declined (%s)", exc)
    return True


def _coordinator_policy(message: Message) -> FederationPolicy:
    return coordinator_policy(str(message.content.config_records[m.CONFIG][m.POLICY]))


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
        {chunk_name(i): Array(np.frombuffer(c, dtype=np.uint8)) for i, c in enumerate(chunks)}
    )


_he_contexts: dict[str, Any] = {}


def _he_context(settings: ClientSettings) -> Any:
    """The shared secret context, loaded once per process (it is the holders' key)."""
    from client.federation.he import load_secret_context

    path = settings.he_context_path()
    key = str(path)
    if key not in _he_contexts:
        if not path.is_file():
            raise UsageError(
                f"{path}: the federation uses protection he, and this holder has no secret "
                "context (get it from the federation's key custodian)"
            )
        _he_contexts[key] = load_secret_context(path)
    return _he_contexts[key]


def _incoming(message: Message, settings: ClientSettings, model: TrainableModel) -> Arrays:
    """The global model a message carries: plaintext, or the encrypted sum decrypted here."""
    encrypted = message.content.array_records.get(m.HE_GLOBAL)
    if encrypted is None:
        return _arrays(message)
    from client.federation.he import decrypt_aggregate

    reference = get_trainable(model.model)
    config = message.content.config_records[m.CONFIG]
    total = int(str(config[m.HE_TOTAL_WEIGHT]))
    chunks = [encrypted[name].numpy().tobytes() for name in in_chunk_order(encrypted.keys())]
    values = decrypt_aggregate(
        _he_context(settings), chunks, [v.shape for v in reference.values()], total
    )
    return dict(zip(reference, values, strict=True))


def _reply(
    message: Message,
    settings: ClientSettings,
    metrics: Metrics,
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


def _request(message: Message) -> RoundRequest:
    config = message.content.config_records[m.CONFIG]
    return RoundRequest(
        round=int(str(config[m.ROUND])),
        rounds=int(str(config[m.ROUNDS])),
        run_id=str(config[m.RUN_ID]),
        policy_text=str(config[m.POLICY]),
        evaluate=bool(int(str(config.get(m.EVALUATE, 0)))),
        masked=arrived_masked(message),
    )


def _train(message: Message, settings: ClientSettings) -> Message:
    """Train one round (client/federation/transaction.py), and say so in Flower's terms."""
    done: RoundReply = train_and_charge(
        _request(message), settings, lambda model: _incoming(message, settings, model)
    )
    reply = _reply(message, settings, done.metrics, arrays=done.arrays, reason=done.reason)
    if done.evaluation is not None and reply.has_content():
        # In the one MetricRecord Flower's strategies accept, with its own example count.
        metrics = reply.content.metric_records[m.METRICS]
        metrics[m.EVAL_EXAMPLES] = done.evaluation[m.NUM_EXAMPLES]
        metrics[m.EVAL_LOSS] = done.evaluation[m.EVAL_LOSS]
        metrics[m.EVAL_ACCURACY] = done.evaluation[m.EVAL_ACCURACY]
    return reply


def _evaluate(message: Message, settings: ClientSettings) -> Message:
    policy = settings.policy or _coordinator_policy(message)
    incoming = _incoming(message, settings, prepare(settings, policy).model)
    metrics = evaluation(settings, policy, incoming)
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
    arrays = _incoming(message, settings, prepare(settings, policy).model)
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
