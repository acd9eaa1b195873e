"""The contract between fedge's ServerApp and ClientApp: record names and keys in Flower messages.

Both sides import these names from the kernel (they may not import each other), so a renamed key
is a change in one place that both apps and the tests see.
"""

from __future__ import annotations

__all__ = [
    "ARRAYS",
    "BATCH_SIZE",
    "CLIENT",
    "CONFIG",
    "DECLINED",
    "EPSILON",
    "EPSILON_ROUND",
    "EVALUATE",
    "EVAL_ACCURACY",
    "EVAL_EXAMPLES",
    "EVAL_LOSS",
    "HE_DIGEST",
    "HE_GLOBAL",
    "HE_NUM_VALUES",
    "HE_TOTAL_WEIGHT",
    "HE_UPDATE",
    "INFO",
    "LEARNING_RATE",
    "MASKED",
    "METRICS",
    "NOISE_MULTIPLIER",
    "NUM_EXAMPLES",
    "POLICY",
    "QUERY_INIT",
    "QUERY_RELEASE",
    "REASON",
    "ROUND",
    "ROUNDS",
    "RUN_DATA_DIR",
    "RUN_HE_PUBLIC_CONTEXT",
    "RUN_HE_SECRET_CONTEXT",
    "RUN_ID",
    "RUN_STATE_DIR",
    "RUN_WORKDIR",
    "SECAGG_ARRAY_NAMES",
    "STEPS",
    "TRAIN_LOSS",
    "TRAIN_SECONDS",
]

# Record names inside a message's RecordDict.
ARRAYS = "arrays"  # ArrayRecord: the adapter and head weights
CONFIG = "config"  # ConfigRecord, server -> client: what to do this round
METRICS = "metrics"  # MetricRecord, client -> server: numbers only
INFO = "info"  # ConfigRecord, client -> server: who replied, and why it declined

# Server -> client config keys.
ROUND = "round"
ROUNDS = "rounds"
RUN_ID = "run-id"
POLICY = "policy"  # the coordinator's FederationPolicy as YAML; the client validates it
QUERY_INIT = "fedge_init"  # query: reply with the initial adapter and head
EVALUATE = "evaluate"  # 1 on a train message: first evaluate the model it carries
QUERY_RELEASE = "fedge_release"  # query (he): decrypt the final global model and hand it over

# protection: he. Ciphertexts travel as uint8 arrays named chunk-00000, chunk-00001, ...
HE_GLOBAL = "he-global"  # ArrayRecord, server -> client: the encrypted weighted sum
HE_TOTAL_WEIGHT = "he-total-weight"  # config: what the holders divide the decrypted sum by
HE_UPDATE = "he-update"  # ArrayRecord, client -> server: the holder's encrypted update
HE_NUM_VALUES = "he-num-values"  # metric: values in the encrypted update
HE_DIGEST = "he-digest"  # info: SHA-256 over the update's chunks

# protection: secagg. Flower's legacy FitIns config carries no array names, so the coordinator
# adds the JSON list of names in parameter order; the holder's app sees MASKED = 1 in its config
# when its update will leave the node only masked (and reports it back as a metric).
SECAGG_ARRAY_NAMES = "fedge-array-names"
MASKED = "masked"

# Run-config keys (the app folder's pyproject.toml, read by both apps through Context.run_config).
# POLICY and RUN_ID above are run-config keys too. The simulated holders find their data and state
# through these; a real holder gets its own from its SuperNode's node config instead.
RUN_WORKDIR = "workdir"
RUN_DATA_DIR = "data-dir"
RUN_STATE_DIR = "state-dir"
RUN_HE_SECRET_CONTEXT = "he-secret-context"  # noqa: S105 - a key name; simulation only
RUN_HE_PUBLIC_CONTEXT = "he-public-context"

# Client -> server metric keys.
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
TRAIN_SECONDS = "train-seconds"
EPSILON = "epsilon"  # total spent by this client in this budget, after the round
EPSILON_ROUND = "epsilon-round"
NOISE_MULTIPLIER = "noise-multiplier"
STEPS = "steps"
BATCH_SIZE = "batch-size"  # the round's expected logical batch (policy or DP-aware plan)
LEARNING_RATE = "learning-rate"
DECLINED = "declined"  # 1 when the client refused the round (its budget, its data)
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
EVAL_EXAMPLES = "eval-examples"  # on a train reply: held-out examples behind eval-loss/-accuracy

# Client -> server info keys.
CLIENT = "client"  # the data holder's stable name (Flower node ids change across restarts)
REASON = "reason"
