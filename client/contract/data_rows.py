"""Reading a labelled data file row by row: the file's checks, its UTF-8 lines, its CSV, TSV or
JSONL records.

Each record becomes a :class:`Row` (its line number, text and label string) or a :class:`BadRow`
(a problem confined to that row, which the loader raises or, if asked, skips). Problems of the
whole file (missing, empty, too large, not UTF-8, an unclosed quote, a header without the
columns) raise :class:`~fedge.errors.DataError` at once. Numbering the labels is
client/contract/label_space.py's; the rules for each format are client/contract/labelled.py's
module docstring.
"""

from __future__ import annotations

import csv
import json
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from client.contract.data_format import DELIMITERS, DataFormat
from fedge.errors import DataError

__all__ = [
    "BadRow",
    "Row",
    "check_file",
    "count_of",
    "delimited_rows",
    "jsonl_rows",
    "list_names",
    "show_value",
]

_MAX_SHOWN: Final = 40


def show_value(value: object) -> str:
    """A value quoted for a one-line message: newlines escaped, long values cut short."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def count_of(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def list_names(names: Iterable[str]) -> str:
    items = [show_value(name) for name in names]
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


def check_file(source: Path, shown: str, max_bytes: int | None) -> None:
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
class Row:
    line: int
    text: str
    label: str


@dataclass(frozen=True, slots=True)
class BadRow:
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
            f"no {role} column {wanted!r} (columns: {list_names(columns)})",
            path=shown,
            field=wanted,
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
                    f"header names column {show_value(duplicates[0])} more than once",
                    path=shown,
                    field=duplicates[0],
                )
            return columns
    raise DataError(f"no header row (only blank lines) in this {fmt.upper()} file", path=shown)


def delimited_rows(
    handle: BinaryIO, shown: str, fmt: DataFormat, text_column: str, label_column: str
) -> Iterator[Row | BadRow]:
    reader = csv.reader(_decoded_lines(handle, shown), delimiter=DELIMITERS[fmt], strict=True)
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
            yield BadRow(
                line, f"{count_of(len(record), 'field')}, but the header has {len(columns)}"
            )
        else:
            values = (record[text_at], record[label_at])
            yield _checked_row(line, values, (text_column, label_column), "column")


def _checked_row(
    line: int, values: tuple[str, str], columns: tuple[str, str], noun: str
) -> Row | BadRow:
    (text, label), (text_column, label_column) = values, columns
    if not text.strip():
        return BadRow(line, f"{noun} {text_column!r}: empty text", text_column)
    if not label.strip():
        return BadRow(line, f"{noun} {label_column!r}: empty label", label_column)
    return Row(line, text, label.strip())


def _json_kind(value: object) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return kinds.get(type(value), "a number")


def _json_row(line: int, record: object, text_column: str, label_column: str) -> Row | BadRow:
    if not isinstance(record, dict):
        return BadRow(line, f"expected a JSON object, found {_json_kind(record)}")
    for name in (text_column, label_column):
        if name not in record:
            return BadRow(line, f"no field {name!r} (fields: {list_names(record)})", name)
    text, label = record[text_column], record[label_column]
    if not isinstance(text, str):
        return BadRow(
            line, f"field {text_column!r}: expected a string, found {_json_kind(text)}", text_column
        )
    if isinstance(label, int) and not isinstance(label, bool):
        label = str(label)
    elif not isinstance(label, str):
        return BadRow(
            line,
            f"field {label_column!r}: expected an integer or a string, found {_json_kind(label)}",
            label_column,
        )
    return _checked_row(line, (text, label), (text_column, label_column), "field")


def jsonl_rows(
    handle: BinaryIO, shown: str, text_column: str, label_column: str
) -> Iterator[Row | BadRow]:
    for line, content in enumerate(_decoded_lines(handle, shown), start=1):
        if not content.strip():
            continue
        try:
            record = json.loads(content)
        except json.JSONDecodeError as exc:
            yield BadRow(line, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        except RecursionError:
            yield BadRow(line, "invalid JSON: nested too deeply")
            continue
        yield _json_row(line, record, text_column, label_column)
