"""Numbering the labels of a labelled data file: a class index for each distinct label string.

Integer labels are class indices and are never renumbered; names are numbered in sorted order
unless ``label_names`` fixes the order (why: client/contract/labelled.py's module docstring).
Every label the file's label space cannot hold is a :class:`~fedge.errors.DataError` naming the
line it first appears on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from client.contract.data_rows import count_of, list_names, show_value
from fedge.errors import DataError, UsageError

__all__ = ["MAX_LABELS", "LabelSpace", "Where", "check_label_options", "label_space"]

_INTEGER: Final = re.compile(r"[+-]?[0-9]+")
MAX_LABELS: Final = 100_000  # a label space is a list of names: keep a typo from filling memory


def check_label_options(num_labels: int | None, label_names: Sequence[str] | None) -> None:
    if num_labels is not None and not 1 <= num_labels <= MAX_LABELS:
        raise UsageError(f"num_labels must be between 1 and {MAX_LABELS}, got {num_labels}")
    if label_names is None:
        return
    names = tuple(label_names)
    if not names or len(set(names)) != len(names) or any(not n.strip() for n in names):
        raise UsageError(f"label_names must be distinct non-empty names, got {show_value(names)}")
    if num_labels is not None and num_labels != len(names):
        raise UsageError(f"num_labels={num_labels} but {len(names)} label_names were given")


@dataclass(frozen=True, slots=True)
class LabelSpace:
    names: tuple[str, ...]
    mapping: dict[str, int]
    named: bool


@dataclass(frozen=True, slots=True)
class Where:
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
    tokens: dict[str, int], first_line: list[int], names: tuple[str, ...], where: Where
) -> LabelSpace:
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
                f"label {show_value(token)} is neither one of the label names "
                f"({list_names(names)}) nor an index 0..{len(names) - 1}",
                line=first_line[token_id],
            )
    named = any(token in by_name for token in tokens)
    return LabelSpace(names, mapping, named)


def _integer_space(
    tokens: dict[str, int], first_line: list[int], num_labels: int | None, where: Where
) -> LabelSpace:
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
        if value >= MAX_LABELS:
            raise where.error(
                f"label {value} is too large for a class index (at most {MAX_LABELS - 1})",
                line=line,
            )
    count = num_labels if num_labels is not None else max(values.values()) + 1
    return LabelSpace(tuple(str(i) for i in range(count)), values, named=False)


def _named_space(
    tokens: dict[str, int], first_line: list[int], num_labels: int | None, where: Where
) -> LabelSpace:
    """Label names numbered in sorted order, which every holder of the same names agrees on."""
    integers = [t for t in tokens if _INTEGER.fullmatch(t)]
    if integers:
        word = next(t for t in tokens if not _INTEGER.fullmatch(t))
        raise where.error(
            f"labels mix integers ({show_value(integers[0])} on line "
            f"{first_line[tokens[integers[0]]]}) and names ({show_value(word)} on line "
            f"{first_line[tokens[word]]}); use one kind, or pass label_names"
        )
    names = tuple(sorted(tokens))
    if num_labels is not None and len(names) != num_labels:
        raise where.error(
            f"{count_of(len(names), 'distinct label name')} ({list_names(names)}) but "
            f"num_labels={num_labels}; pass label_names so that every data holder numbers "
            "the labels the same way"
        )
    return LabelSpace(names, {name: index for index, name in enumerate(names)}, named=True)


def label_space(
    tokens: dict[str, int],
    first_line: list[int],
    where: Where,
    num_labels: int | None,
    label_names: Sequence[str] | None,
) -> LabelSpace:
    """The label space of the distinct label strings ``tokens`` (each to its id, whose first line
    is ``first_line[id]``), as ``label_names`` or ``num_labels`` declare it, or as the strings
    imply."""
    if label_names is not None:
        return _declared_space(tokens, first_line, tuple(label_names), where)
    if all(_INTEGER.fullmatch(token) for token in tokens):
        return _integer_space(tokens, first_line, num_labels, where)
    return _named_space(tokens, first_line, num_labels, where)
