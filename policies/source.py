"""Reading policy YAML into plain values while remembering where every node came from.

PyYAML's composer gives nodes with positions; this module turns them into dicts, lists and
scalars itself so that it can (a) keep a ``path -> (line, column)`` index for error messages,
(b) resolve scalars with the YAML 1.2 core rules (``1e-5`` is a number, ``no`` is a string: the
YAML 1.1 surprises are gone), and (c) report duplicate keys, non-string keys, unsupported tags
and alias bombs as problems instead of silently accepting them. Reading is guarded as well: a
file that is too large, binary, or not UTF-8 is one clear problem, never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from fedge.bounded import InputError, read_capped
from fedge.errors import Problem

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "Location",
    "SourceDocument",
    "SourceFile",
    "parse_text",
    "read_policy_file",
]

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_NODES = 200_000
# Far above any count, size or seed a policy holds, far below Python's int-parsing limit.
_MAX_INT_DIGITS = 40

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Location:
    line: int
    column: int


@dataclass
class SourceDocument:
    """One YAML document: its value, and where each path (and each mapping key) starts."""

    value: Any
    start: Location
    values: dict[Path_, Location] = field(default_factory=dict)
    keys: dict[Path_, Location] = field(default_factory=dict)

    def locate(self, path: Path_, *, key: bool = False) -> Location:
        """Where ``path`` is, or its nearest ancestor that exists (a missing field: its parent)."""
        probe = tuple(path)
        while probe:
            table = self.keys if key else self.values
            if probe in table:
                return table[probe]
            if not key and probe in self.keys:
                return self.keys[probe]
            probe, key = probe[:-1], False
        return self.start


@dataclass
class SourceFile:
    name: str
    documents: list[SourceDocument]
    problems: list[Problem]


_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


class _CoreResolver(BaseResolver):
    """YAML 1.2 core schema: only true/false are booleans, exponents need no dot."""


_CoreResolver.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_CoreResolver.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_CoreResolver.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_CoreResolver.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


class _Loader(Reader, Scanner, Parser, Composer, _CoreResolver):
    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _CoreResolver.__init__(self)


def _loc(node: Node) -> Location:
    return Location(node.start_mark.line + 1, node.start_mark.column + 1)


def _scalar(node: ScalarNode) -> Any:  # noqa: PLR0911 - one return per YAML core tag
    tag, text = node.tag, node.value
    if tag == "tag:yaml.org,2002:str":
        return text
    if tag == "tag:yaml.org,2002:null":
        return None
    if tag == "tag:yaml.org,2002:bool":
        return text.lower() == "true"
    if tag == "tag:yaml.org,2002:int":
        if len(text.lstrip("+-")) > _MAX_INT_DIGITS:
            raise _UnsupportedError(
                f"the integer has {len(text)} digits; numbers in policy documents have at most "
                f"{_MAX_INT_DIGITS}",
                node,
            )
        lowered = text.lower()
        if lowered.startswith(("0x", "0o")):
            return int(lowered, 0)
        return int(text, 10)
    if tag == "tag:yaml.org,2002:float":
        lowered = text.lower().lstrip("+")
        if lowered in (".inf", "-.inf"):
            return -math.inf if lowered.startswith("-") else math.inf
        if lowered == ".nan":
            return math.nan
        return float(text)
    raise _UnsupportedError(f"the tag {tag} is not supported in policy documents", node)


class _UnsupportedError(Exception):
    def __init__(self, message: str, node: Node) -> None:
        super().__init__(message)
        self.node = node
        self.path: Path_ = ()


class _Converter:
    def __init__(self, file: str, doc: SourceDocument, problems: list[Problem]) -> None:
        self.file = file
        self.doc = doc
        self.problems = problems
        self.count = 0

    def problem(self, where: Location, path: Path_, message: str, hint: str = "") -> None:
        self.problems.append(
            Problem(self.file, where.line, where.column, dotted(path), message, hint)
        )

    def convert(self, node: Node, path: Path_) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _UnsupportedError(
                f"the document expands to more than {MAX_NODES} nodes (alias bomb?)", node
            )
        self.doc.values[path] = _loc(node)
        if isinstance(node, ScalarNode):
            try:
                return _scalar(node)
            except _UnsupportedError as exc:
                exc.path = path  # the problem names the field, not just the line
                raise
        if isinstance(node, SequenceNode):
            return [self.convert(item, (*path, index)) for index, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        raise _UnsupportedError(
            "unsupported YAML node", node
        )  # pragma: no cover - PyYAML has 3 kinds

    def _mapping(self, node: MappingNode, path: Path_) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                label = key_node.value if isinstance(key_node, ScalarNode) else "a collection"
                self.problem(
                    _loc(key_node), path, f"mapping key {label!r} must be a string", "quote it"
                )
                continue
            key = key_node.value
            if key in result:
                self.problem(
                    _loc(key_node),
                    (*path, key),
                    "duplicate key",
                    f"first given at line {self.doc.keys[(*path, key)].line}",
                )
                continue
            self.doc.keys[(*path, key)] = _loc(key_node)
            result[key] = self.convert(value_node, (*path, key))
        return result


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def dotted(path: Path_) -> str:
    """``('spec', 'targets', 0, 'name')`` -> ``spec.targets[0].name``; odd keys are quoted."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part)}]"
    return text


def _compose(text: str) -> Iterator[Node]:
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                yield node
    finally:
        loader.dispose()


def parse_text(text: str, *, name: str) -> SourceFile:
    """Parse YAML text into documents and problems; never raises for any input string."""
    problems: list[Problem] = []
    documents: list[SourceDocument] = []
    try:
        for node in _compose(text):
            doc = SourceDocument(value=None, start=_loc(node))
            converter = _Converter(name, doc, problems)
            try:
                doc.value = converter.convert(node, ())
            except _UnsupportedError as exc:
                where = _loc(exc.node)
                problems.append(Problem(name, where.line, where.column, dotted(exc.path), str(exc)))
                continue
            documents.append(doc)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        detail = exc.problem or exc.context or "invalid YAML"
        problems.append(Problem(name, line, column, "", f"YAML syntax error: {detail}"))
    except yaml.YAMLError as exc:  # reader errors: control characters and the like
        problems.append(Problem(name, 1, 1, "", f"not readable as YAML: {exc}"))
    except RecursionError:
        problems.append(Problem(name, 1, 1, "", "the YAML is nested too deeply"))
    return SourceFile(name=name, documents=documents, problems=problems)


def _file_problem(name: str, message: str, hint: str = "") -> SourceFile:
    return SourceFile(name=name, documents=[], problems=[Problem(name, 1, 1, "", message, hint)])


_FILE_REASONS = {
    "does not exist": "file does not exist",
    "is a folder, not a file": "is a folder, not a policy file",
}


def read_policy_file(path: str | os.PathLike[str]) -> SourceFile:
    """Read and parse a policy file, turning every way a file can be unusable into a problem.

    The kernel's bounded reader refuses folders, devices and FIFOs before reading a byte, so
    ``fedge validate`` and every command that loads a policy accept and refuse the same files.
    """
    name = str(path)
    try:
        data = read_capped(path, limit=MAX_FILE_BYTES, what="a policy file")
    except InputError as exc:
        if "limit" in exc.reason:
            return _file_problem(name, exc.reason, "policy files are small text documents")
        return _file_problem(name, _FILE_REASONS.get(exc.reason, exc.reason))
    if b"\x00" in data:
        return _file_problem(
            name, f"binary content (NUL byte at offset {data.index(0)})", "expected YAML text"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return _file_problem(
            name, f"not UTF-8 text (invalid byte at offset {exc.start})", "save the file as UTF-8"
        )
    if _is_blank(text):
        return _file_problem(
            name, "file holds no YAML document", "expected apiVersion, kind, metadata and spec"
        )
    return parse_text(text, name=name)


def _is_blank(text: str) -> bool:
    """True when only comments, blank lines and document markers remain: empty in all but name."""
    return not any(
        line.strip() and not line.lstrip().startswith("#") and line.strip() not in ("---", "...")
        for line in text.splitlines()
    )
