"""Which labelled-data file formats fedge reads and writes, and telling them apart by name.

CSV (``.csv``), TSV (``.tsv``, ``.tab``) and JSONL (``.jsonl``, ``.ndjson``); what each holds is
described in client/contract/labelled.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal, get_args

from fedge.errors import DataError, UsageError

__all__ = ["DELIMITERS", "DataFormat", "detect_format"]

DataFormat = Literal["csv", "tsv", "jsonl"]

_SUFFIXES: Final[dict[str, DataFormat]] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
DELIMITERS: Final[dict[DataFormat, str]] = {"csv": ",", "tsv": "\t"}


def detect_format(path: str | Path, *, format: str | None = None) -> DataFormat:
    """The format named by ``format``, else the one the file extension implies."""
    if format is not None:
        if format not in get_args(DataFormat):
            raise UsageError(f"unknown data format {format!r} (expected csv, tsv or jsonl)")
        return format  # type: ignore[return-value]  # checked against the Literal just above
    suffix = Path(path).suffix.lower()
    found = _SUFFIXES.get(suffix)
    if found is None:
        what = f"extension {suffix!r}" if suffix else "a name without an extension"
        raise DataError(
            f"cannot tell the data format from {what}: name it .csv, .tsv or .jsonl, "
            "or pass format='csv', 'tsv' or 'jsonl'",
            path=str(path),
        )
    return found
