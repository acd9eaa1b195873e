"""Every Flower internal the data holder's side touches, in one list (flwr pinned to 1.41.0).

"Internal" means any name outside Flower's documented app API (see
``server/federation/flower_internals.py`` for the coordinator's list and the definition). The
warm executor (``client/node/warm.py``) patches the SuperNode and the SuperExec; the SecAgg+
wrapper (``client/federation/secagg.py``) speaks the legacy records Flower's ``secaggplus_mod``
expects. ``tests/test_flower_internals.py`` imports each entry and checks the parameters and
fields fedge relies on, and checks that no module imports a Flower internal not listed here or in
the coordinator's list. The warm patches also switch themselves off on any Flower but 1.41.x.
"""

from __future__ import annotations

from fedge.internals import Internal

__all__ = ["INTERNALS"]

_WARM = "client/node/warm.py"
_SECAGG = "client/federation/secagg.py"
_EXECUTOR = "flwr.supercore.superexec.executor.subprocess_executor"

INTERNALS: tuple[Internal, ...] = (
    Internal(
        "flwr.client.mod.secure_aggregation.secaggplus_mod",
        "pseudo_rand_gen",
        f"{_SECAGG}: installs client/contract/secagg_masks.py in place of this module global; "
        "Flower folds each mask seed to 32 bits for a Mersenne Twister (Flower #7522)",
        parameters=("seed", "num_range", "dimensions_list"),
    ),
    Internal(
        "flwr.common.secure_aggregation.secaggplus_utils",
        "pseudo_rand_gen",
        "tests/client/test_secagg_masks.py: Flower's own generator, to show the folded-seed defect",
        parameters=("seed", "num_range", "dimensions_list"),
    ),
    Internal(
        "flwr.supercore",
        "log",
        f"{_WARM}: the patches log through Flower's logger, in Flower's format",
        parameters=("level", "msg"),
    ),
    Internal(
        "flwr.supercore.version",
        "package_version",
        f"{_WARM}: the patches turn themselves off on any Flower but the pinned 1.41.x",
    ),
    Internal(
        "flwr.supernode.start_client_internal",
        "time",
        f"{_WARM} patch 2: this module global is rebound to a `time` whose sleep is capped",
        attributes=("sleep", "monotonic"),
    ),
    Internal(
        "flwr.supernode.start_client_internal",
        "pull_objects",
        f"{_WARM} patch 4: rebound with a short initial_backoff",
        parameters=("initial_backoff",),
    ),
    Internal(
        "flwr.supernode.runtime.run_clientapp",
        "pull_and_inflate_object_from_tree",
        f"{_WARM} patch 3: rebound with a short initial_backoff",
        parameters=("initial_backoff",),
    ),
    Internal(
        "flwr.supernode.runtime.run_clientapp",
        "run_clientapp",
        f"{_WARM} patch 1: the forked task calls it with the fields of the ExecutionSpec",
        parameters=(
            "runtime_api_address",
            "token",
            "insecure",
            "certificates",
            "parent_pid",
            "runtime_dependency_install",
        ),
    ),
    Internal(
        "flwr.supernode.cli.flower_supernode",
        "flower_supernode",
        f"{_WARM}: the stock flower-supernode main, run after patching",
    ),
    Internal(
        "flwr.supercore.cli.flower_superexec",
        "flower_superexec",
        f"{_WARM}: the stock flower-superexec main, run after patching",
    ),
    Internal(
        _EXECUTOR,
        "SubprocessExecutor.launch",
        f"{_WARM} patch 1: replaced on the class; ClientApp tasks are forked",
        parameters=("self", "spec"),
    ),
    Internal(
        _EXECUTOR,
        "SubprocessExecutor.reconcile",
        f"{_WARM} patch 1: wrapped to reap the forked tasks first",
        parameters=("self",),
    ),
    Internal(
        "flwr.supercore.superexec.executor.types",
        "ExecutionSpec",
        f"{_WARM} patch 1: the fields the forked task reads",
        attributes=(
            "task_type",
            "task_id",
            "runtime_api_address",
            "token",
            "insecure",
            "root_certificates_path",
            "runtime_dependency_install",
            "parent_pid",
            "suppress_output",
        ),
    ),
    Internal(
        "flwr.supercore.superexec.executor.types",
        "LaunchResult",
        f"{_WARM} patch 1: what the replaced launch returns",
        attributes=("accepted", "failed"),
    ),
    Internal(
        "flwr.supercore.constant",
        "TaskType",
        f"{_WARM} patch 1: only ClientApp tasks are forked",
        attributes=("CLIENT_APP",),
    ),
    Internal(
        "flwr.supercore.exit.exit_handler",
        "registered_exit_handlers",
        f"{_WARM} patch 1: emptied in the forked task (the SuperExec's handlers are not its own)",
        attributes=("clear",),
    ),
    Internal(
        "flwr.supercore.tls",
        "validate_and_resolve_root_certificates",
        f"{_WARM} patch 1: the forked task resolves its certificates as flwr-clientapp does",
        parameters=("root_cert_path", "insecure"),
    ),
    Internal(
        "flwr.common.config",
        "parse_config_args",
        f"{_WARM}: a --node-config string parsed exactly as Flower parses it",
        parameters=("config",),
    ),
    Internal(
        "flwr.client.mod.secure_aggregation.secaggplus_mod",
        "SecAggPlusState",
        f"{_SECAGG}: the protocol state the holder checks an update against before masking",
        attributes=("max_weight", "target_range", "clipping_range", "sample_num", "mod_range"),
    ),
    Internal(
        "flwr.clientapp.typing",
        "ClientAppCallable",
        f"{_SECAGG}: the type of the handler a mod wraps",
    ),
    Internal(
        "flwr.app.message.message",
        "make_message",
        f"{_SECAGG}: replies rebuilt with the metadata of the message they answer",
        parameters=("metadata", "content", "error"),
    ),
    Internal(
        "flwr.common.secure_aggregation.secaggplus_constants",
        "RECORD_KEY_CONFIGS",
        f"{_SECAGG}: where a stage message carries its SecAgg+ configuration",
    ),
    Internal(
        "flwr.common.secure_aggregation.secaggplus_constants",
        "RECORD_KEY_STATE",
        f"{_SECAGG}: where secaggplus_mod keeps its state in Context.state",
    ),
    Internal(
        "flwr.common.secure_aggregation.secaggplus_constants",
        "Key",
        f"{_SECAGG}: the stage key of a stage message",
        attributes=("STAGE", "MASKED_PARAMETERS"),
    ),
    Internal(
        "flwr.common.secure_aggregation.quantization",
        "dequantize",
        "tests/server/test_secagg.py: undoes the mod's quantization to check a masked update",
        parameters=("quantized_parameters", "clipping_range", "target_range"),
    ),
    Internal(
        "flwr.compat.common.recorddict_compat",
        "fitres_to_recorddict",
        f"{_SECAGG}: the app's reply as the FitRes records secaggplus_mod expects",
        parameters=("fitres", "keep_input"),
    ),
    Internal(
        "flwr.compat.common.recorddict_compat",
        "recorddict_to_fitins",
        f"{_SECAGG}: the mod's FitIns records as the arrays and config the app reads",
        parameters=("recorddict", "keep_input"),
    ),
)
