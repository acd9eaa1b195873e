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

import csv
import json
import re
import stat
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, Literal, get_args

from fedge.atomic import atomic_write_text
from fedge.errors import DataError, UsageError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DataFormat",
    "LabelledData",
    "OnBadRow",
    "detect_format",
    "format_labelled",
    "load_labelled",
    "write_labelled",
]

DataFormat = Literal["csv", "tsv", "jsonl"]
OnBadRow = Literal["error", "skip"]

DEFAULT_MAX_BYTES: Final = 1 << 30
"""1 GiB: more text than a data holder fine-tunes on in one federation; raise it explicitly."""

_SUFFIXES: Final[dict[str, DataFormat]] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_DELIMITERS: Final[dict[DataFormat, str]] = {"csv": ",", "tsv": "\t"}
_INTEGER: Final = re.compile(r"[+-]?[0-9]+")
_MAX_REASONS: Final = 20
_MAX_LABELS: Final = 100_000  # a label space is a list of names: keep a typo from filling memory
_MAX_SHOWN: Final = 40


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
# Options


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


def _check_label_options(num_labels: int | None, label_names: Sequence[str] | None) -> None:
    if num_labels is not None and not 1 <= num_labels <= _MAX_LABELS:
        raise UsageError(f"num_labels must be between 1 and {_MAX_LABELS}, got {num_labels}")
    if label_names is None:
        return
    names = tuple(label_names)
    if not names or len(set(names)) != len(names) or any(not n.strip() for n in names):
        raise UsageError(f"label_names must be distinct non-empty names, got {_shown(names)}")
    if num_labels is not None and num_labels != len(names):
        raise UsageError(f"num_labels={num_labels} but {len(names)} label_names were given")


# --------------------------------------------------------------------------------------------
# Reading: the file, its lines, its rows


def _shown(value: object) -> str:
    """A value quoted for a one-line message: newlines escaped, long values cut short."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _listed(names: Iterable[str]) -> str:
    items = [_shown(name) for name in names]
    return ", ".join(items[:12]) + (f" and {len(items) - 12} more" if len(items) > 12 else "")


def _size_text(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    scaled, unit = size / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if scaled < 1024:
            break
        scaled, unit = scaled / 1024, bigger
    return f"{scaled:.1f} {unit}"


def _check_file(source: Path, shown: str, max_bytes: int | None) -> None:
    """File-level problems, found before a byte is read."""
    try:
        info = source.stat()
    except FileNotFoundError as exc:
        raise DataError("no such file", path=shown) from exc
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror or exc}", path=shown) from exc
    if stat.S_ISDIR(info.st_mode):
        raise DataError("is a directory, not a data file", path=shown)
    if not stat.S_ISREG(info.st_mode):
        raise DataError("is not a regular file", path=shown)
    if info.st_size == 0:
        raise DataError("file is empty", path=shown)
    if max_bytes is not None and info.st_size > max_bytes:
        raise DataError(
            f"file is {_size_text(info.st_size)}, larger than the {_size_text(max_bytes)} "
            "limit (raise max_bytes to read it)",
            path=shown,
        )


def _decoded_lines(handle: BinaryIO, shown: str) -> Iterator[str]:
    """Lines of UTF-8 text, one at a time, so a large file is never held as one string.

    Splitting on the newline byte is safe before decoding: in UTF-8 no byte of a multi-byte
    character equals ``\\n``, so a decoding error is pinned to its own line.
    """
    for number, line in enumerate(handle, start=1):
        raw = line
        if number == 1:
            if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                raise DataError("file is UTF-16 encoded; save it as UTF-8", path=shown)
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        if b"\x00" in raw:
            raise DataError(
                f"line {number}: NUL byte: this looks like a binary file, not UTF-8 text",
                path=shown,
            )
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            hint = "a binary file? data must be UTF-8 text" if number == 1 else "save it as UTF-8"
            raise DataError(
                f"line {number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                f"{exc.start + 1}); {hint}",
                path=shown,
            ) from exc


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    text: str
    label: str


@dataclass(frozen=True, slots=True)
class _BadRow:
    """A problem confined to one row: the loader raises it or, if asked, skips the row."""

    line: int
    message: str
    field: str | None = None

    def describe(self) -> str:
        return f"line {self.line}: {self.message}"


def _csv_problem(exc: csv.Error, line: int, fmt: DataFormat) -> str:
    text = str(exc)
    if "unexpected end of data" in text:
        return f"line {line}: a quoted field opened here is never closed (unmatched '\"')"
    if "field larger than field limit" in text:
        return (
            f"line {line}: a field is longer than {csv.field_size_limit()} characters "
            "(an unmatched '\"'?)"
        )
    if "new-line character seen in unquoted field" in text:
        return f"line {line}: a carriage return inside an unquoted field; quote the field"
    if "expected after" in text:
        return (
            f"line {line}: text follows a closing '\"' in a quoted field; "
            f"double a '\"' inside a quoted field (malformed {fmt.upper()})"
        )
    return f"line {line}: malformed {fmt.upper()}: {text}"


def _column(columns: Sequence[str], wanted: str, role: str, shown: str) -> int:
    try:
        return columns.index(wanted)
    except ValueError:
        raise DataError(
            f"no {role} column {wanted!r} (columns: {_listed(columns)})", path=shown, field=wanted
        ) from None


def _is_blank(record: list[str]) -> bool:
    """A line with nothing but white space: not a row, in any format."""
    return not record or (len(record) == 1 and not record[0].strip())


def _read_header(reader: Iterator[list[str]], shown: str, fmt: DataFormat) -> list[str]:
    for record in reader:
        if not _is_blank(record):
            columns = [name.strip() for name in record]
            duplicates = sorted({name for name in columns if columns.count(name) > 1})
            if duplicates:
                raise DataError(
                    f"header names column {_shown(duplicates[0])} more than once",
                    path=shown,
                    field=duplicates[0],
                )
            return columns
    raise DataError(f"no header row (only blank lines) in this {fmt.upper()} file", path=shown)


def _delimited_rows(
    handle: BinaryIO, shown: str, fmt: DataFormat, text_column: str, label_column: str
) -> Iterator[_Row | _BadRow]:
    reader = csv.reader(_decoded_lines(handle, shown), delimiter=_DELIMITERS[fmt], strict=True)
    try:
        columns = _read_header(reader, shown, fmt)
    except csv.Error as exc:
        raise DataError(_csv_problem(exc, max(reader.line_num, 1), fmt), path=shown) from exc
    text_at = _column(columns, text_column, "text", shown)
    label_at = _column(columns, label_column, "label", shown)
    while True:
        line = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(_csv_problem(exc, line, fmt), path=shown) from exc
        if _is_blank(record):
            continue
        if len(record) != len(columns):
            yield _BadRow(
                line, f"{_count(len(record), 'field')}, but the header has {len(columns)}"
            )
        else:
            values = (record[text_at], record[label_at])
            yield _checked_row(line, values, (text_column, label_column), "column")


def _checked_row(
    line: int, values: tuple[str, str], columns: tuple[str, str], noun: str
) -> _Row | _BadRow:
    (text, label), (text_column, label_column) = values, columns
    if not text.strip():
        return _BadRow(line, f"{noun} {text_column!r}: empty text", text_column)
    if not label.strip():
        return _BadRow(line, f"{noun} {label_column!r}: empty label", label_column)
    return _Row(line, text, label.strip())


def _json_kind(value: object) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return kinds.get(type(value), "a number")


def _json_row(line: int, record: object, text_column: str, label_column: str) -> _Row | _BadRow:
    if not isinstance(record, dict):
        return _BadRow(line, f"expected a JSON object, found {_json_kind(record)}")
    for name in (text_column, label_column):
        if name not in record:
            return _BadRow(line, f"no field {name!r} (fields: {_listed(record)})", name)
    text, label = record[text_column], record[label_column]
    if not isinstance(text, str):
        return _BadRow(
            line, f"field {text_column!r}: expected a string, found {_json_kind(text)}", text_column
        )
    if isinstance(label, int) and not isinstance(label, bool):
        label = str(label)
    elif not isinstance(label, str):
        return _BadRow(
            line,
            f"field {label_column!r}: expected an integer or a string, found {_json_kind(label)}",
            label_column,
        )
    return _checked_row(line, (text, label), (text_column, label_column), "field")


def _jsonl_rows(
    handle: BinaryIO, shown: str, text_column: str, label_column: str
) -> Iterator[_Row | _BadRow]:
    for line, content in enumerate(_decoded_lines(handle, shown), start=1):
        if not content.strip():
            continue
        try:
            record = json.loads(content)
        except json.JSONDecodeError as exc:
            yield _BadRow(line, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        except RecursionError:
            yield _BadRow(line, "invalid JSON: nested too deeply")
            continue
        yield _json_row(line, record, text_column, label_column)


# --------------------------------------------------------------------------------------------
# Collecting rows, then numbering the labels


@dataclass(slots=True)
class _Collected:
    """Rows as they stream in; each distinct label string is stored once."""

    texts: list[str] = field(default_factory=list)
    label_ids: array[int] = field(default_factory=lambda: array("l"))
    tokens: dict[str, int] = field(default_factory=dict)
    first_line: list[int] = field(default_factory=list)
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def add(self, row: _Row) -> None:
        token_id = self.tokens.setdefault(row.label, len(self.tokens))
        if token_id == len(self.first_line):
            self.first_line.append(row.line)
        self.texts.append(row.text)
        self.label_ids.append(token_id)

    def skip(self, bad: _BadRow) -> None:
        self.skipped += 1
        if len(self.reasons) < _MAX_REASONS:
            self.reasons.append(bad.describe())


def _collect(
    rows: Iterator[_Row | _BadRow], shown: str, fmt: DataFormat, on_bad_row: OnBadRow
) -> _Collected:
    collected = _Collected()
    for row in rows:
        if isinstance(row, _Row):
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


@dataclass(frozen=True, slots=True)
class _LabelSpace:
    names: tuple[str, ...]
    mapping: dict[str, int]
    named: bool


@dataclass(frozen=True, slots=True)
class _Where:
    """The file and its label column, worded as the format words it: column or field."""

    path: str
    column: str
    noun: str

    def error(self, message: str, *, line: int | None = None) -> DataError:
        at = "" if line is None else f"line {line}: "
        return DataError(
            f"{at}{self.noun} {self.column!r}: {message}", path=self.path, field=self.column
        )


def _declared_space(
    tokens: dict[str, int], first_line: list[int], names: tuple[str, ...], where: _Where
) -> _LabelSpace:
    """Labels against ``label_names``: a name, or an index into the names."""
    by_name = {name: index for index, name in enumerate(names)}
    mapping: dict[str, int] = {}
    for token, token_id in tokens.items():
        if token in by_name:
            mapping[token] = by_name[token]
        elif _INTEGER.fullmatch(token) and 0 <= int(token) < len(names):
            mapping[token] = int(token)
        else:
            raise where.error(
                f"label {_shown(token)} is neither one of the label names ({_listed(names)}) "
                f"nor an index 0..{len(names) - 1}",
                line=first_line[token_id],
            )
    named = any(token in by_name for token in tokens)
    return _LabelSpace(names, mapping, named)


def _integer_space(
    tokens: dict[str, int], first_line: list[int], num_labels: int | None, where: _Where
) -> _LabelSpace:
    """Integer labels are class indices as they stand: never renumbered (see the module doc)."""
    values = {token: int(token) for token in tokens}
    for token, value in values.items():
        line = first_line[tokens[token]]
        if value < 0:
            raise where.error(
                f"label {value} is negative; integer labels are class indices 0..K-1", line=line
            )
        if num_labels is not None and value >= num_labels:
            raise where.error(
                f"label {value} is out of range 0..{num_labels - 1} (num_labels={num_labels})",
                line=line,
            )
        if value >= _MAX_LABELS:
            raise where.error(
                f"label {value} is too large for a class index (at most {_MAX_LABELS - 1})",
                line=line,
            )
    count = num_labels if num_labels is not None else max(values.values()) + 1
    return _LabelSpace(tuple(str(i) for i in range(count)), values, named=False)


def _named_space(
    tokens: dict[str, int], first_line: list[int], num_labels: int | None, where: _Where
) -> _LabelSpace:
    """Label names numbered in sorted order, which every holder of the same names agrees on."""
    integers = [t for t in tokens if _INTEGER.fullmatch(t)]
    if integers:
        word = next(t for t in tokens if not _INTEGER.fullmatch(t))
        raise where.error(
            f"labels mix integers ({_shown(integers[0])} on line "
            f"{first_line[tokens[integers[0]]]}) and names ({_shown(word)} on line "
            f"{first_line[tokens[word]]}); use one kind, or pass label_names"
        )
    names = tuple(sorted(tokens))
    if num_labels is not None and len(names) != num_labels:
        raise where.error(
            f"{_count(len(names), 'distinct label name')} ({_listed(names)}) but "
            f"num_labels={num_labels}; pass label_names so that every data holder numbers "
            "the labels the same way"
        )
    return _LabelSpace(names, {name: index for index, name in enumerate(names)}, named=True)


def _label_space(
    collected: _Collected,
    where: _Where,
    num_labels: int | None,
    label_names: Sequence[str] | None,
) -> _LabelSpace:
    tokens, first_line = collected.tokens, collected.first_line
    if label_names is not None:
        return _declared_space(tokens, first_line, tuple(label_names), where)
    if all(_INTEGER.fullmatch(token) for token in tokens):
        return _integer_space(tokens, first_line, num_labels, where)
    return _named_space(tokens, first_line, num_labels, where)


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
    _check_label_options(num_labels, label_names)
    if on_bad_row not in get_args(OnBadRow):
        raise UsageError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    _check_file(source, shown, max_bytes)
    fmt = detect_format(source, format=format)
    try:
        with source.open("rb") as handle:
            rows = (
                _jsonl_rows(handle, shown, text_column, label_column)
                if fmt == "jsonl"
                else _delimited_rows(handle, shown, fmt, text_column, label_column)
            )
            collected = _collect(rows, shown, fmt, on_bad_row)
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror or exc}", path=shown) from exc
    where = _Where(shown, label_column, "field" if fmt == "jsonl" else "column")
    space = _label_space(collected, where, num_labels, label_names)
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
    delimiter = _DELIMITERS[fmt]
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
