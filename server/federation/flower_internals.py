"""Every Flower internal the coordinator's side touches, in one list (flwr pinned to 1.41.0).

"Internal" means any name outside Flower's documented app API (``flwr.app``, ``flwr.serverapp``,
``flwr.clientapp``, ``flwr.simulation``, the top level of ``flwr.common``, ``flwr.client``,
``flwr.server`` and their ``mod``/``strategy``/``workflow`` packages). The modules that use them
import them where they need them; ``tests/test_flower_internals.py`` checks that each such import
is listed here (or in ``client/node/flower_internals.py``) and that each listed name still has the
signature and fields fedge relies on. Before raising the pin, run that test and re-read the
``why`` of each entry against the new release.
"""

from __future__ import annotations

from fedge.internals import Internal

__all__ = ["INTERNALS"]

_SECAGG = "server/federation/secagg.py"

INTERNALS: tuple[Internal, ...] = (
    Internal(
        "flwr.serverapp.strategy.dp_adaptive_clipping",
        "DifferentialPrivacyServerSideAdaptiveClipping",
        "server/federation/user_dp.py: overrides _geometric_update, which Flower feeds the "
        "clipped share where "
        "Andrew et al. feed the unclipped one (the norm would collapse)",
        attributes=("_geometric_update", "_noisy_fraction"),
    ),
    Internal(
        "flwr.server.workflow.secure_aggregation.secaggplus_workflow",
        "pseudo_rand_gen",
        f"{_SECAGG}: installs client/contract/secagg_masks.py in place of this module global, as "
        "on the holder's side: the masks of drop-outs are regenerated with the same generator",
        parameters=("seed", "num_range", "dimensions_list"),
    ),
    Internal(
        "flwr.simulation.run_simulation",
        "_run_simulation",
        "simulation_engine.py: the public run_simulation cannot load a ClientApp by name from an "
        "app folder or pass it the run config",
        parameters=(
            "num_supernodes",
            "exit_event",
            "server_app",
            "client_app_attr",
            "app_dir",
            "is_app",
            "backend_name",
            "backend_config",
        ),
    ),
    Internal(
        "flwr.supercore.telemetry",
        "EventType",
        "simulation_engine.py: the exit event _run_simulation requires",
        attributes=("PYTHON_API_RUN_SIMULATION_LEAVE",),
    ),
    Internal(
        "flwr.server.compat.legacy_context",
        "LegacyContext",
        f"{_SECAGG}: SecAggPlusWorkflow reads its round from a LegacyContext",
        parameters=("context", "strategy"),
    ),
    Internal(
        "flwr.server.compat.grid_client_proxy",
        "GridClientProxy",
        f"{_SECAGG}: the client proxies the workflow's configure_fit hands out",
        parameters=("node_id", "grid", "run_id"),
    ),
    Internal(
        "flwr.server.workflow.secure_aggregation.secaggplus_workflow",
        "WorkflowState",
        f"{_SECAGG}: the workflow subclass forgets nodes that left before the masked vectors",
        attributes=("active_node_ids", "sampled_node_ids", "nid_to_neighbours", "threshold"),
    ),
    Internal(
        "flwr.server.workflow.secure_aggregation.secaggplus_workflow",
        "SecAggPlusWorkflow.setup_stage",
        f"{_SECAGG}: overridden, each stage's outcome is checked after Flower's own",
        parameters=("grid", "context", "state"),
    ),
    Internal(
        "flwr.server.workflow.secure_aggregation.secaggplus_workflow",
        "SecAggPlusWorkflow.share_keys_stage",
        f"{_SECAGG}: overridden as setup_stage",
        parameters=("grid", "context", "state"),
    ),
    Internal(
        "flwr.server.workflow.secure_aggregation.secaggplus_workflow",
        "SecAggPlusWorkflow.collect_masked_vectors_stage",
        f"{_SECAGG}: overridden as setup_stage",
        parameters=("grid", "context", "state"),
    ),
    Internal(
        "flwr.server.workflow.secure_aggregation.secaggplus_workflow",
        "SecAggPlusWorkflow.unmask_stage",
        f"{_SECAGG}: overridden as setup_stage",
        parameters=("grid", "context", "state"),
    ),
    Internal(
        "flwr.server.workflow.constant",
        "MAIN_CONFIGS_RECORD",
        f"{_SECAGG}: the record the legacy workflow reads the round number from",
    ),
    Internal(
        "flwr.server.workflow.constant",
        "MAIN_PARAMS_RECORD",
        f"{_SECAGG}: the record the legacy workflow reads the global parameters from",
    ),
    Internal(
        "flwr.server.workflow.constant",
        "Key",
        f"{_SECAGG}: the round-number key in that record",
        attributes=("CURRENT_ROUND",),
    ),
    Internal(
        "flwr.server.client_manager",
        "ClientManager",
        f"{_SECAGG}: type of the legacy Strategy's arguments",
    ),
    Internal(
        "flwr.server.client_proxy",
        "ClientProxy",
        f"{_SECAGG}: type of the legacy Strategy's arguments",
    ),
    Internal(
        "flwr.app.message.message",
        "make_message",
        f"{_SECAGG}: replies rebuilt with the metadata of the reply they replace",
        parameters=("metadata", "content", "error"),
    ),
    Internal(
        "flwr.common.constant",
        "ErrorCode",
        f"{_SECAGG}: a holder's decline becomes the error reply the workflow counts as drop-out",
        attributes=("UNKNOWN",),
    ),
    Internal(
        "flwr.common.secure_aggregation.secaggplus_constants",
        "RECORD_KEY_CONFIGS",
        f"{_SECAGG}: where a stage message carries its SecAgg+ configuration",
    ),
    Internal(
        "flwr.common.secure_aggregation.secaggplus_constants",
        "Key",
        f"{_SECAGG}: the stage and masked-parameters keys of a stage message",
        attributes=("STAGE", "MASKED_PARAMETERS"),
    ),
    Internal(
        "flwr.common.secure_aggregation.secaggplus_constants",
        "Stage",
        f"{_SECAGG}: the stage whose replies carry the training metrics",
        attributes=("COLLECT_MASKED_VECTORS",),
    ),
    Internal(
        "flwr.proto.node_pb2",
        "NodeInfo",
        f"{_SECAGG}: return type of Grid.get_nodes, which the counting Grid forwards",
    ),
    Internal(
        "flwr.supercore.run",
        "Run",
        f"{_SECAGG}: type of Grid.run, which the counting Grid forwards",
        attributes=("run_id",),
    ),
)
