"""JSON Schemas of the console's own documents, for ``/api/openapi.json``.

The listings a CLI also prints (HolderList, AuditLog, PlacementStatus, DeviceList, RolloutList)
use the CLI's schemas from :mod:`fedge.output_schemas`; these exist only in the console.
They are open (extra fields allowed) so that the console can grow without breaking a reader.
"""

from __future__ import annotations

from typing import Any, Final

from fedge.output import API_VERSION

__all__ = ["CONSOLE_SCHEMAS"]

_RUN_SUMMARY: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "the run folder, below --workdir"},
        "path": {"type": "string"},
        "state": {"type": "string"},
        "round": {"type": ["integer", "null"]},
        "rounds": {"type": ["integer", "null"]},
        "clients": {"type": ["integer", "null"]},
        "accuracy": {"type": ["number", "null"]},
        "flowerRun": {"type": ["string", "null"]},
        "updated": {"type": ["number", "null"]},
    },
    "required": ["name", "state", "round", "rounds", "clients", "accuracy"],
}


def _envelope(kind: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "title": kind,
        "type": "object",
        "properties": {
            "apiVersion": {"const": API_VERSION},
            "kind": {"const": kind},
            **properties,
        },
        "required": ["apiVersion", "kind", *properties],
        "additionalProperties": True,  # open: said explicitly, as the OpenAPI document says it
    }


CONSOLE_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "ConsoleOverview": _envelope(
        "ConsoleOverview",
        {
            "runs": {"type": "array", "items": _RUN_SUMMARY},
            "holders": {
                "type": "object",
                "description": "total, counts by state, and epsilonSpent: the highest epsilon "
                "each holder reached in any run (holder name -> epsilon)",
                "properties": {
                    "total": {"type": "integer"},
                    "byState": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "epsilonSpent": {
                        "type": "object",
                        "additionalProperties": {"type": "number"},
                    },
                },
                "required": ["total", "byState", "epsilonSpent"],
            },
            "devices": {"type": "object", "description": "fleet, total, online, counts by phase"},
            "replicas": {"type": "object", "description": "total, healthy, versions"},
            "alerts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "level": {"enum": ["error", "warning"]},
                        "view": {"type": "string"},
                        "text": {"type": "string"},
                    },
                },
            },
        },
    ),
    "ConsoleRunList": _envelope(
        "ConsoleRunList",
        {"workdir": {"type": "string"}, "items": {"type": "array", "items": _RUN_SUMMARY}},
    ),
    "ConsoleExplanations": _envelope(
        "ConsoleExplanations",
        {
            "workdir": {"type": "string"},
            "items": {
                "type": "array",
                "description": "sample inferences a device explained (POST /v1/explain) during "
                "the demo, from each summary.json: run (its folder below --workdir), text, "
                "expected, device, label, score, ms, and words (word, start, end, attribution: "
                "the drop in the label's probability when the word is hidden)",
                "items": {
                    "type": "object",
                    "properties": {
                        "run": {"type": "string"},
                        "text": {"type": "string"},
                        "expected": {"type": "string"},
                        "device": {"type": "string"},
                        "label": {"type": "string"},
                        "score": {"type": "number"},
                        "ms": {"type": ["number", "null"]},
                        "words": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "word": {"type": "string"},
                                    "start": {"type": "integer"},
                                    "end": {"type": "integer"},
                                    "attribution": {"type": "number"},
                                },
                                "required": ["word", "start", "end", "attribution"],
                            },
                        },
                    },
                    "required": ["run", "text", "device", "label", "score", "words"],
                },
            },
        },
    ),
    "ConsoleRun": _envelope(
        "ConsoleRun",
        {
            "rounds": {
                "type": "array",
                "description": "metrics.jsonl, one object per round (round, status, clients, "
                "declined, eval_accuracy, train_loss, epsilon, bytes_sent, ...)",
                "items": {"type": "object", "required": ["round"]},
            },
            "summary": _RUN_SUMMARY,
            "progress": {"type": ["object", "null"]},
            "budget": {"type": ["object", "null"]},
            "epsilonPerHolder": {"type": "object", "additionalProperties": {"type": "number"}},
            "userEpsilon": {
                "type": ["number", "null"],
                "description": "privacy level user or both: the run's user-level epsilon after "
                "its last released round (each holder's whole contribution; null: level sample)",
            },
        },
    ),
}
