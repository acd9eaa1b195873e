"""What fedge's listing commands print for scripts: one envelope, one JSON and one YAML writer.

Every listing command takes ``-o table|wide|json|yaml``; ``json`` and ``yaml`` print the same
object, which :mod:`fedge.output_schemas` describes kind by kind::

    {"apiVersion": "fedge/v1", "kind": "HolderList", "items": [...], ...context fields}

A listing has ``items`` (one object per row of the table, with every column ``wide`` shows and
more); a command that shows one thing (``fedge-agent status``) has that thing's fields next to
``kind``. ``fedge place urls`` is the one exception: its document is the replica-URL file
(:mod:`fedge.replica_urls`) that ``fedge deploy`` and the devices read, so it keeps that shape.

The YAML writer is here rather than a pyyaml dependency because the kernel imports only the
standard library: it writes block-style YAML for JSON data that YAML 1.1 and 1.2 readers (PyYAML
included) load back to the same value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from enum import StrEnum
from typing import Any, Final

__all__ = ["API_VERSION", "OutputFormat", "document", "render", "to_json", "to_yaml"]

API_VERSION: Final = "fedge/v1"


class OutputFormat(StrEnum):
    """``-o``: a table for people, every column (``wide``), or a document for scripts."""

    TABLE = "table"
    WIDE = "wide"
    JSON = "json"
    YAML = "yaml"

    @property
    def is_document(self) -> bool:
        return self in (OutputFormat.JSON, OutputFormat.YAML)


def document(
    kind: str, items: Sequence[Mapping[str, Any]] | None = None, **fields: Any
) -> dict[str, Any]:
    """The envelope: ``apiVersion``, ``kind``, the context ``fields`` and then ``items``."""
    doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": kind, **fields}
    if items is not None:
        doc["items"] = [dict(item) for item in items]
    return doc


def render(doc: Mapping[str, Any], fmt: OutputFormat) -> str:
    """The text ``-o json`` or ``-o yaml`` prints, ending in a newline."""
    if fmt is OutputFormat.YAML:
        return to_yaml(doc)
    if fmt is OutputFormat.JSON:
        return to_json(doc)
    raise ValueError(f"{fmt.value} is not a document format")


def to_json(value: Any) -> str:
    """Indented JSON, non-ASCII kept as is, with a final newline."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


# --- YAML ----------------------------------------------------------------------------------

# Plain (unquoted) scalars only where no YAML 1.1 or 1.2 reader can take them for anything but
# a string; everything else is double-quoted with JSON's escapes, which YAML shares.
_PLAIN: Final = re.compile(r"[A-Za-z][A-Za-z0-9_./@+-]*")
_RESERVED: Final = frozenset({"y", "n", "yes", "no", "true", "false", "on", "off", "null"})
# Characters a YAML reader refuses raw or reads as a line break (PyYAML's NON_PRINTABLE, NEL,
# the Unicode line and paragraph separators, a BOM), less what JSON escapes already.
_UNPRINTABLE: Final = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]")


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _float(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    # YAML 1.1 floats need a dot ("1e-05" would read back as a string).
    mantissa, e, exponent = repr(value).partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return mantissa + e + exponent


def _scalar(value: object) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in _RESERVED:
            return value
        return _UNPRINTABLE.sub(_escape, json.dumps(value, ensure_ascii=False))
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _is_block(value: object) -> bool:
    return isinstance(value, Mapping | list | tuple) and len(value) > 0


def _inline(value: object) -> str:
    """A scalar, or an empty collection (``{}``/``[]``)."""
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list | tuple):
        return "[]"
    return _scalar(value)


def _block(value: object, indent: int) -> Iterator[str]:
    pad = " " * indent
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"YAML keys here are strings, not {type(key).__name__}")
            if _is_block(item):
                yield f"{pad}{_scalar(key)}:"
                yield from _block(item, indent + 2)
            else:
                yield f"{pad}{_scalar(key)}: {_inline(item)}"
        return
    assert isinstance(value, list | tuple)  # noqa: S101 - _is_block chose this branch
    for item in value:
        if not _is_block(item):
            yield f"{pad}- {_inline(item)}"
            continue
        inner = list(_block(item, indent + 2))
        # "- " takes the place of the first line's indentation: a compact sequence entry.
        yield f"{pad}- {inner[0][indent + 2 :]}"
        yield from inner[1:]


def to_yaml(value: Any) -> str:
    """Block-style YAML for JSON-shaped ``value`` (dicts with string keys, lists, scalars)."""
    if not _is_block(value):
        return _inline(value) + "\n"
    return "\n".join(_block(value, 0)) + "\n"
