"""JSON Schema for each kind, so editors (VS Code YAML, JetBrains) can complete and check files."""

from __future__ import annotations

from typing import Any

from fedge.errors import UsageError
from policies.documents import KINDS

__all__ = ["json_schema"]

_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of one document kind (camelCase field names, as written in YAML)."""
    model = KINDS.get(kind)
    if model is None:
        from policies.validation import did_you_mean

        raise UsageError(f"unknown kind {kind!r} ({did_you_mean(kind, KINDS)})")
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": _DIALECT, "$id": f"https://fedge.dev/schemas/v1/{kind}.json", **schema}
