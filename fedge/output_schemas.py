"""The documented shape of every ``-o json`` / ``-o yaml`` document, as JSON Schema (2020-12).

This is the contract scripts may rely on: a field listed here keeps its name and type within
``apiVersion: fedge/v1``; new fields may be added (readers should ignore fields they do not
know), so the schemas are closed only to catch a typo in fedge itself, in its tests. Times are
ISO 8601 strings; money is US dollars per month; epsilon and delta are the privacy accountant's.

=================  ==========================================  ====================================
kind               command                                     items
=================  ==========================================  ====================================
PrivacyBudget      ``fedge-client budget``                     one per charged round
HolderList         ``fedge enroll list``                       one per data holder
AuditLog           ``fedge enroll audit``                      one per registry change, oldest first
PlacementPlan      ``fedge place plan``                        one per inventory target
PlacementStatus    ``fedge place status``                      one per placed artifact version
ReplicaUrls        ``fedge place urls``                        (``replicas``: the replica-URL file)
AgentStatus        ``fedge-agent status``                      (one device: no items)
RunList            ``fedge runs``                              one per run on the SuperLink
DeviceList         ``fedge fleet status -o json``              one per device of the fleet
RolloutList        ``fedge deploy status``                     one per rollout, newest first
Explanation        ``fedge explain``                           one per word of the text, in order
=================  ==========================================  ====================================
"""

from __future__ import annotations

from typing import Any, Final

from fedge.output import API_VERSION
from fedge.replica_urls import DOCUMENT_FIELDS, URL_PATTERN

__all__ = ["SCHEMAS", "schema_for"]

_STR: Final[dict[str, Any]] = {"type": "string"}
_OPT_STR: Final[dict[str, Any]] = {"type": ["string", "null"]}
_INT: Final[dict[str, Any]] = {"type": "integer"}
_OPT_INT: Final[dict[str, Any]] = {"type": ["integer", "null"]}
_NUM: Final[dict[str, Any]] = {"type": "number"}
_BOOL: Final[dict[str, Any]] = {"type": "boolean"}
_TIME: Final[dict[str, Any]] = {"type": "string", "format": "date-time"}
_STRS: Final[dict[str, Any]] = {"type": "array", "items": _STR}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    """An object with exactly these fields, all present (a null says "none")."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _envelope(kind: str, fields: dict[str, Any], item: dict[str, Any] | None) -> dict[str, Any]:
    properties = {"apiVersion": {"const": API_VERSION}, "kind": {"const": kind}, **fields}
    if item is not None:
        properties["items"] = {"type": "array", "items": item}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": kind,
        **_object(properties),
    }


_ROUND = _object(
    {
        "federation": _STR,
        "runId": _STR,
        "round": _INT,
        "noiseMultiplier": _NUM,
        "sampleRate": _NUM,
        "steps": _INT,
        "epsilonRound": _NUM,
        "epsilonTotal": _NUM,
        "targetEpsilon": _NUM,
        "recordedAt": _STR,
    }
)
_HOLDER = _object(
    {
        "name": _STR,
        "state": {"enum": ["pending", "active", "revoked"]},
        "fingerprint": _OPT_STR,
        "publicKey": _OPT_STR,
        "nodeId": _OPT_INT,
        "atSuperLink": _OPT_STR,  # the SuperLink's word for the node; null without --superlink
        "createdAt": _TIME,
        "updatedAt": _TIME,
    }
)
_AUDIT_ENTRY = _object(
    {
        "seq": _INT,
        "at": _TIME,
        "action": _STR,
        "subject": _STR,
        "detail": _STR,
        "actor": _STR,
    }
)
_DECISION = _object(
    {
        "target": _STR,
        "provider": _STR,
        "region": _STR,
        "residency": _STR,
        "decision": {"enum": ["replica", "spare", "rejected"]},
        "monthlyUsd": _NUM,
        "reason": _STR,
    }
)
_VERSION = _object(
    {
        "artifact": _STR,
        "version": _STR,
        "health": {"enum": ["ok", "degraded", "short"]},
        "deployed": _BOOL,
        "detail": _STR,
        "policy": _STR,
        "created": _STR,
        "updated": _STR,
        "sizeBytes": _INT,
        "manifestDigest": _STR,
        "preferred": _STRS,
        "actual": _STRS,
        "replicas": {
            "type": "array",
            "items": _object(
                {
                    "target": _STR,
                    "provider": _STR,
                    "container": _STR,
                    "status": {"enum": ["partial", "intact"]},
                    "updated": _STR,
                }
            ),
        },
    }
)
_URL: Final[dict[str, Any]] = {"type": "string", "pattern": URL_PATTERN}
_REPLICA = _object(
    {
        "target": _OPT_STR,
        "provider": _OPT_STR,
        "region": _OPT_STR,
        "residency": _OPT_STR,
        "expires": _OPT_STR,
        "manifest": _URL,
        "signature": _URL,
        "files": {"type": "object", "additionalProperties": _URL, "minProperties": 1},
    }
)
_MODEL = {
    "oneOf": [
        {"type": "null"},
        _object(
            {
                "name": _STR,
                "version": _STR,
                "manifestSha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "path": _STR,
                "deploymentId": _OPT_STR,
                "activatedAt": _TIME,
            }
        ),
    ]
}
_DEPLOYMENT = {
    "oneOf": [
        {"type": "null"},
        _object(
            {
                "deploymentId": _STR,
                "phase": _STR,
                "error": _OPT_STR,
                "retryable": {"type": ["boolean", "null"]},
                "artifact": _STR,
                "version": _STR,
                "updatedAt": _TIME,
            }
        ),
    ]
}

_OPT_NUM: Final[dict[str, Any]] = {"type": ["number", "null"]}
_RUN = _object(
    {
        "run": {"type": "string", "pattern": "^[0-9]+$"},  # a string: 64-bit ids lose digits in JS
        "state": _STR,
        "details": _OPT_STR,
        "started": _OPT_STR,
        "name": _OPT_STR,
        "round": _OPT_INT,
        "rounds": _OPT_INT,
        "clients": _OPT_INT,
        "progress": {"enum": [None, "starting", "waiting", "training", "finished", "failed"]},
        "workdir": _OPT_STR,
    }
)
_DEVICE = _object(
    {
        "device": _STR,
        "online": _BOOL,
        "desired": _OPT_STR,
        "reported": _OPT_STR,
        "phase": _OPT_STR,
        "error": _OPT_STR,
        "samples": _INT,
        "errorRate": _OPT_NUM,
        "p50Ms": _OPT_NUM,
        "p95Ms": _OPT_NUM,
        "lastSeen": {"type": ["string", "null"], "format": "date-time"},
    }
)
# The retained rollout state (server/fleet/progress.py's RolloutDocument) plus two derived fields.
# Open: the document grows with the controller; these are the fields scripts may rely on.
_ROLLOUT = {
    "type": "object",
    "properties": {
        "fleet": _STR,
        "deploymentId": _STR,
        "artifact": _STR,
        "version": _STR,
        "stage": _STR,
        "stateText": _STR,
        "reason": _STR,
        "rolledBack": _BOOL,
        "stopped": _OPT_STR,
        "devices": _STRS,
        "canary": _STRS,
        "updated": _STRS,
        "succeeded": _INT,  # devices of this rollout that reached SUCCEEDED
        "batch": _INT,
        "batches": _INT,
        "startedAt": _TIME,
        "updatedAt": _TIME,
        "deviceStates": {"type": "object"},
        "events": {"type": "array"},
    },
    "required": [
        "fleet",
        "deploymentId",
        "artifact",
        "version",
        "stage",
        "stateText",
        "devices",
        "canary",
        "updated",
        "succeeded",
        "startedAt",
        "updatedAt",
    ],
}

_WORD = _object({"word": _STR, "start": _INT, "end": _INT, "attribution": _NUM})

SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "PrivacyBudget": _envelope(
        "PrivacyBudget",
        {
            "ledger": _STR,
            "budgetKey": _STR,
            "federation": _STR,
            "accountant": _STR,
            "delta": _NUM,
            "targetEpsilon": _NUM,
            "spent": _NUM,
            "remaining": _NUM,
        },
        _ROUND,
    ),
    "HolderList": _envelope("HolderList", {"workdir": _STR, "superlink": _OPT_STR}, _HOLDER),
    "AuditLog": _envelope("AuditLog", {"workdir": _STR, "name": _OPT_STR}, _AUDIT_ENTRY),
    "PlacementPlan": _envelope(
        "PlacementPlan",
        {
            "policy": _STR,
            "strategy": _STR,
            "enforcement": {"enum": ["Enforce", "Audit"]},
            "artifact": _STR,
            "version": _STR,
            "sizeBytes": _INT,
            "selected": _STRS,
            "preferred": _STRS,
            "monthlyUsd": _NUM,
            "refused": _BOOL,
            "violations": _STRS,
            "policyViolations": _STRS,
            "warnings": _STRS,
            "down": {"type": "array", "items": _object({"target": _STR, "reason": _STR})},
        },
        _DECISION,
    ),
    "PlacementStatus": _envelope(
        "PlacementStatus", {"state": _STR, "artifact": _OPT_STR}, _VERSION
    ),
    # The replica-URL file (fedge/replica_urls.py): no envelope, as devices and deploy read it.
    "ReplicaUrls": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ReplicaUrls",
        **_object(
            dict(
                zip(
                    DOCUMENT_FIELDS, (_STR, _STR, {"type": "array", "items": _REPLICA}), strict=True
                )
            )
        ),
    },
    "AgentStatus": _envelope(
        "AgentStatus",
        {
            "deviceId": _STR,
            "fleet": _STR,
            "stateDir": _STR,
            "running": _BOOL,
            "birthSeq": _INT,
            "current": _MODEL,
            "previous": _MODEL,
            "deployment": _DEPLOYMENT,
            "httpPort": _OPT_INT,
        },
        None,
    ),
    "RunList": _envelope("RunList", {"superlink": _STR}, _RUN),
    "DeviceList": _envelope("DeviceList", {"fleet": _STR}, _DEVICE),
    "RolloutList": _envelope("RolloutList", {"fleet": _OPT_STR}, _ROLLOUT),
    # start and end are character offsets of the word in text; attribution is the drop in the
    # predicted label's probability when the word is hidden (edge_agent/explain.py)
    "Explanation": _envelope(
        "Explanation",
        {
            "artifact": _STR,
            "version": _STR,
            "text": _STR,
            "label": _STR,
            "score": _NUM,
            "scores": {"type": "object", "additionalProperties": _NUM},
            "method": {"const": "occlusion"},
            "ms": _NUM,
        },
        _WORD,
    ),
}


def schema_for(kind: str) -> dict[str, Any]:
    """The JSON Schema of documents of ``kind``; ``KeyError`` names the known kinds."""
    try:
        return SCHEMAS[kind]
    except KeyError:
        raise KeyError(f"no output kind {kind!r}; known: {', '.join(SCHEMAS)}") from None
