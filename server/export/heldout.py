"""The held-out file export measures accuracy on: read it, with a data holder's conventions, and
score logits against its labels.

The server may not import the client's reader (DESIGN.md section 2), so this is a small one with
the same rules: CSV, TSV or JSONL; integer labels are class indices; label names are numbered in
sorted order unless the operator fixes the order.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from fedge.errors import DataError, UsageError

__all__ = ["HeldOut", "accuracy", "read_heldout"]

_SUFFIXES: Final = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".jsonl": "", ".ndjson": ""}
_INTEGER: Final = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True, slots=True)
class HeldOut:
    """Labelled texts for measuring accuracy; ``label_names[i]`` names class ``i``."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    label_names: tuple[str, ...]
    path: str


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text (byte {exc.start})", path=str(path)) from exc
    except OSError as exc:
        raise DataError(f"cannot read ({exc.strerror})", path=str(path)) from exc


def _jsonl_records(
    path: Path, text_column: str, label_column: str
) -> Iterator[tuple[int, str, str]]:
    shown = str(path)
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DataError(f"line {number}: invalid JSON ({exc})", path=shown) from exc
        if not isinstance(record, dict):
            raise DataError(f"line {number}: expected a JSON object", path=shown)
        for name in (text_column, label_column):
            if name not in record:
                raise DataError(f"line {number}: no field {name!r}", path=shown, field=name)
        text, label = record[text_column], record[label_column]
        if not isinstance(text, str) or isinstance(label, bool) or not isinstance(label, str | int):
            raise DataError(
                f"line {number}: {text_column!r} must be a string and {label_column!r} an "
                "integer or a string",
                path=shown,
            )
        yield number, text, str(label)


def _delimited_records(
    path: Path, delimiter: str, text_column: str, label_column: str
) -> Iterator[tuple[int, str, str]]:
    shown = str(path)
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter, strict=True)
    try:
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
        if header is None:
            raise DataError("no header row", path=shown)
        columns = [name.strip() for name in header]
        for name, role in ((text_column, "text"), (label_column, "label")):
            if name not in columns:
                raise DataError(
                    f"no {role} column {name!r} (columns: {', '.join(columns)})",
                    path=shown,
                    field=name,
                )
        text_at, label_at = columns.index(text_column), columns.index(label_column)
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(columns):
                raise DataError(
                    f"line {reader.line_num}: {len(row)} fields, the header has {len(columns)}",
                    path=shown,
                )
            yield reader.line_num, row[text_at], row[label_at]
    except csv.Error as exc:
        raise DataError(f"line {reader.line_num}: malformed file ({exc})", path=shown) from exc


def read_heldout(
    path: str | os.PathLike[str],
    *,
    num_labels: int,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
) -> HeldOut:
    """Read a held-out CSV, TSV or JSONL file with the conventions of a data holder's file.

    The server may not import the client's reader (DESIGN.md section 2), so this is a small one
    with the same rules: integer labels are class indices ``0..num_labels-1``; names are numbered
    in sorted order unless ``label_names`` fixes the order.
    """
    source = Path(path)
    shown = str(source)
    if source.suffix.lower() not in _SUFFIXES:
        raise DataError("name the held-out file .csv, .tsv or .jsonl", path=shown)
    if not source.is_file():
        raise DataError("held-out file does not exist", path=shown)
    delimiter = _SUFFIXES[source.suffix.lower()]
    rows = list(
        _delimited_records(source, delimiter, text_column, label_column)
        if delimiter
        else _jsonl_records(source, text_column, label_column)
    )
    for line, text, label in rows:
        if not text.strip() or not label.strip():
            missing = text_column if not text.strip() else label_column
            raise DataError(f"line {line}: empty {missing!r}", path=shown, field=missing)
    if not rows:
        raise DataError("no labelled rows", path=shown)
    tokens = [label.strip() for _line, _text, label in rows]
    names, mapping = _label_space(tokens, num_labels, label_names, shown, label_column)
    return HeldOut(
        texts=tuple(text for _line, text, _label in rows),
        labels=tuple(mapping[token] for token in tokens),
        label_names=names,
        path=shown,
    )


def _label_space(
    tokens: Sequence[str],
    num_labels: int,
    label_names: Sequence[str] | None,
    shown: str,
    column: str,
) -> tuple[tuple[str, ...], dict[str, int]]:
    distinct = sorted(set(tokens))
    if label_names is not None:
        names = tuple(label_names)
        if len(names) != num_labels:
            raise UsageError(
                f"--label-names: {len(names)} names, but the model has {num_labels} labels"
            )
    elif all(_INTEGER.fullmatch(token) for token in distinct):
        names = tuple(str(index) for index in range(num_labels))
    else:
        names = tuple(distinct)
        if len(names) != num_labels:
            raise DataError(
                f"{len(names)} distinct label names ({', '.join(names)}) but the model has "
                f"{num_labels} labels; pass --label-names",
                path=shown,
                field=column,
            )
    mapping: dict[str, int] = {}
    for token in distinct:
        if token in names:
            mapping[token] = names.index(token)
        elif _INTEGER.fullmatch(token) and 0 <= int(token) < num_labels:
            mapping[token] = int(token)
        else:
            raise DataError(
                f"label {token!r} is neither a label name ({', '.join(names)}) nor an index "
                f"0..{num_labels - 1}",
                path=shown,
                field=column,
            )
    return names, mapping


def accuracy(logits: npt.NDArray[Any], labels: Sequence[int]) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels)))
