"""A data holder's own labelled text: read from CSV, TSV or JSONL, written back the same way.

The reader is strict on purpose. A federated run trains on data nobody else can look at, so a bad
row that is dropped silently, or found an hour into training, shows up only as a worse model that
no one can explain. Every problem is therefore a :class:`~fedge.errors.DataError` raised before
training starts, with one line that names the file and, where it applies, the column and the line
number in the file. Skipping bad rows is possible, but only when asked for (``on_bad_row="skip"``)
and the count of skipped rows travels with the data.

Formats (chosen by extension, or by ``format=``):

- ``csv`` (``.csv``) and ``tsv`` (``.tsv``, ``.tab``): a header row naming the columns, then one
  record per row; quoting follows RFC 4180 with ``"`` for both (a TSV field that contains a tab, a
  newline or starts with ``"`` must be quoted, as pandas and Python's ``csv`` read it). Other
  columns are allowed and ignored.
- ``jsonl`` (``.jsonl``, ``.ndjson``): one JSON object per line; other fields are ignored.

Blank lines are not rows and are passed over in every format. Text must be UTF-8 (a byte-order
mark is accepted).

Labels are integers or names. Integer labels are class indices and are never renumbered, because
each data holder sees only part of the label space: renumbering the labels one client happens to
hold would give the same class different numbers on different clients. Names are numbered in
sorted order unless ``label_names`` fixes the order, which is what a federation should do.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, get_args

from client.contract.data_format import DELIMITERS, DataFormat, detect_format
from client.contract.data_rows import BadRow, Row, check_file, delimited_rows, jsonl_rows
from client.contract.label_space import Where, check_label_options, label_space
from fedge.atomic import atomic_write_text
from fedge.errors import DataError, UsageError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "LabelledData",
    "OnBadRow",
    "format_labelled",
    "load_labelled",
    "write_labelled",
]

OnBadRow = Literal["error", "skip"]

DEFAULT_MAX_BYTES: Final = 1 << 30
"""1 GiB: more text than a data holder fine-tunes on in one federation; raise it explicitly."""

_MAX_REASONS: Final = 20


@dataclass(frozen=True, slots=True)
class LabelledData:
    """Texts with integer labels, and where they came from.

    ``label_names[i]`` names class ``i``. ``named_labels`` records whether the source wrote names
    (``"positive"``) rather than indices (``1``), so that a file written back reads the same way.
    ``skipped`` counts rows left out under ``on_bad_row="skip"``; ``skip_reasons`` holds the
    first few reasons, each naming its line.
    """

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    label_names: tuple[str, ...]
    path: str
    named_labels: bool = False
    skipped: int = 0
    skip_reasons: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        # A mismatch here is a programming error in fedge, not a problem with the user's file.
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        bad = [label for label in self.labels if not 0 <= label < len(self.label_names)]
        if bad:
            raise ValueError(f"label {bad[0]} outside 0..{len(self.label_names) - 1}")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def label_counts(self) -> tuple[int, ...]:
        """How many examples each class has, zeros included, indexed by label."""
        counts = [0] * self.num_labels
        for label in self.labels:
            counts[label] += 1
        return tuple(counts)

    def subset(self, indices: Iterable[int], *, path: str | None = None) -> LabelledData:
        """The examples at ``indices``, in that order, with the same label space."""
        chosen = tuple(indices)
        return LabelledData(
            texts=tuple(self.texts[i] for i in chosen),
            labels=tuple(self.labels[i] for i in chosen),
            label_names=self.label_names,
            path=self.path if path is None else path,
            named_labels=self.named_labels,
        )


# --------------------------------------------------------------------------------------------
# Collecting rows (their labels are numbered by client/contract/label_space.py)


@dataclass(slots=True)
class _Collected:
    """Rows as they stream in; each distinct label string is stored once."""

    texts: list[str] = field(default_factory=list)
    label_ids: array[int] = field(default_factory=lambda: array("l"))
    tokens: dict[str, int] = field(default_factory=dict)
    first_line: list[int] = field(default_factory=list)
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        token_id = self.tokens.setdefault(row.label, len(self.tokens))
        if token_id == len(self.first_line):
            self.first_line.append(row.line)
        self.texts.append(row.text)
        self.label_ids.append(token_id)

    def skip(self, bad: BadRow) -> None:
        self.skipped += 1
        if len(self.reasons) < _MAX_REASONS:
            self.reasons.append(bad.describe())


def _collect(
    rows: Iterator[Row | BadRow], shown: str, fmt: DataFormat, on_bad_row: OnBadRow
) -> _Collected:
    collected = _Collected()
    for row in rows:
        if isinstance(row, Row):
            collected.add(row)
        elif on_bad_row == "skip":
            collected.skip(row)
        else:
            raise DataError(row.describe(), path=shown, field=row.field)
    if not collected.texts:
        if collected.skipped:
            raise DataError(
                f"no usable rows: all {collected.skipped} skipped (first: {collected.reasons[0]})",
                path=shown,
            )
        only = "blank lines" if fmt == "jsonl" else "a header"
        raise DataError(f"no data rows, only {only}", path=shown)
    return collected


# --------------------------------------------------------------------------------------------
# The public reader and writer


def load_labelled(
    path: str | Path,
    *,
    format: str | None = None,  # the word users know, as in pandas
    text_column: str = "text",
    label_column: str = "label",
    num_labels: int | None = None,
    label_names: Sequence[str] | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    on_bad_row: OnBadRow = "error",
) -> LabelledData:
    """Read a data holder's labelled text file, or raise one :class:`DataError` that says why.

    ``num_labels`` checks integer labels against ``0..num_labels-1`` (and the count of names);
    ``label_names`` fixes the numbering of named labels. ``max_bytes=None`` lifts the size limit.
    With ``on_bad_row="skip"`` a row with a problem of its own (wrong field count, invalid JSON,
    a missing field, an empty text or label) is left out and counted in ``skipped``; problems of
    the whole file (encoding, an unclosed quote, a missing column in the header, a label outside
    the declared label space) always raise, since skipping would hide a wrong setting.
    """
    shown = str(path)
    source = Path(path)
    check_label_options(num_labels, label_names)
    if on_bad_row not in get_args(OnBadRow):
        raise UsageError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    check_file(source, shown, max_bytes)
    fmt = detect_format(source, format=format)
    try:
        with source.open("rb") as handle:
            rows = (
                jsonl_rows(handle, shown, text_column, label_column)
                if fmt == "jsonl"
                else delimited_rows(handle, shown, fmt, text_column, label_column)
            )
            collected = _collect(rows, shown, fmt, on_bad_row)
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror or exc}", path=shown) from exc
    where = Where(shown, label_column, "field" if fmt == "jsonl" else "column")
    space = label_space(collected.tokens, collected.first_line, where, num_labels, label_names)
    ids = [space.mapping[token] for token in collected.tokens]
    return LabelledData(
        texts=tuple(collected.texts),
        labels=tuple(ids[token_id] for token_id in collected.label_ids),
        label_names=space.names,
        path=shown,
        named_labels=space.named,
        skipped=collected.skipped,
        skip_reasons=tuple(collected.reasons),
    )


def _quoted(value: str, delimiter: str) -> str:
    """RFC 4180 quoting, also for a carriage return, which ``csv.writer`` leaves bare."""
    if any(char in value for char in (delimiter, '"', "\n", "\r")):
        return '"' + value.replace('"', '""') + '"'
    return value


def format_labelled(
    data: LabelledData,
    fmt: DataFormat,
    *,
    text_column: str = "text",
    label_column: str = "label",
) -> str:
    """The file content :func:`load_labelled` reads back as ``data``.

    The label numbers read back are the same when every label occurs in ``data``; for a part of a
    data set (one client's share), read it with the ``label_names`` or ``num_labels`` of the whole.
    """
    values: list[str | int] = [
        data.label_names[label] if data.named_labels else label for label in data.labels
    ]
    if fmt == "jsonl":
        return "".join(
            json.dumps({text_column: text, label_column: value}, ensure_ascii=False) + "\n"
            for text, value in zip(data.texts, values, strict=True)
        )
    delimiter = DELIMITERS[fmt]
    lines = [delimiter.join(_quoted(name, delimiter) for name in (text_column, label_column))]
    lines.extend(
        f"{_quoted(text, delimiter)}{delimiter}{_quoted(str(value), delimiter)}"
        for text, value in zip(data.texts, values, strict=True)
    )
    return "\n".join(lines) + "\n"


def write_labelled(
    path: str | Path,
    data: LabelledData,
    *,
    format: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
) -> Path:
    """Write ``data`` atomically: a reader sees the old file or the whole new one, never half."""
    fmt = detect_format(path, format=format)
    text = format_labelled(data, fmt, text_column=text_column, label_column=label_column)
    return atomic_write_text(path, text)
