"""Turning YAML documents into validated policies, collecting every problem with its location.

The pipeline is: source (positions) -> envelope checks (apiVersion, kind) -> pydantic (types,
ranges, unknown fields) -> rules (cross-field and cross-document). Each stage adds problems and the
next still runs where it can, so one ``fedge policy validate`` shows everything to fix at once.
Problems never echo a value that sits where a secret belongs.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from fedge.errors import PolicyError, Problem
from policies.common import API_VERSION, SecretRef
from policies.documents import KINDS, PolicyDocument
from policies.rules import check_set
from policies.source import SourceDocument, SourceFile, dotted

__all__ = ["Report", "ValidatedDocument", "validate_sources"]

Loc = tuple[str | int, ...]
_SECRET_WORDS = frozenset(
    {"password", "secret", "secretkey", "accesskey", "token", "apikey", "accountkey", "key"}
)
_SECRET_HINT = "secrets never appear inline: use {env: VAR} or {file: PATH}"  # noqa: S105


@dataclass(frozen=True)
class ValidatedDocument:
    file: str
    source: SourceDocument
    document: PolicyDocument


@dataclass
class Report:
    """Everything one validation run found: the good documents and every problem."""

    documents: list[ValidatedDocument] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        if self.problems:
            raise PolicyError(self.problems)


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types an annotation allows (Optional and unions flattened)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _type_at(root: type[BaseModel], loc: Loc) -> list[Any]:
    """The types a value at ``loc`` may take, walking model fields, lists and dicts."""
    current: list[Any] = [root]
    for part in loc:
        following: list[Any] = []
        for candidate in current:
            origin = typing.get_origin(candidate)
            if (
                isinstance(part, str)
                and isinstance(candidate, type)
                and issubclass(candidate, BaseModel)
            ):
                for name, info in candidate.model_fields.items():
                    if part in (info.alias, name):
                        following.extend(_unwrap(info.annotation))
            elif isinstance(part, int) and origin is list:
                following.extend(_unwrap(typing.get_args(candidate)[0]))
            elif isinstance(part, str) and origin is dict:
                following.extend(_unwrap(typing.get_args(candidate)[1]))
        current = following
    return current


def _description(root: type[BaseModel], loc: Loc) -> str:
    """The ``description`` of the field at ``loc``, the best hint for a value of the wrong form."""
    if not loc or not isinstance(loc[-1], str):
        return ""
    for candidate in _type_at(root, loc[:-1]):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            for name, info in candidate.model_fields.items():
                if loc[-1] in (info.alias, name) and info.description:
                    return info.description
    return ""


def _field_names(root: type[BaseModel], loc: Loc) -> list[str]:
    names: list[str] = []
    for candidate in _type_at(root, loc):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            names.extend(info.alias or name for name, info in candidate.model_fields.items())
    return names


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    options = list(choices)
    lowered = {choice.lower(): choice for choice in options}
    if word.lower() in lowered:
        return f"did you mean {lowered[word.lower()]!r}?"
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"expected one of: {', '.join(options)}" if options else ""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_secret_slot(root: type[BaseModel], loc: Loc) -> bool:
    return any(
        isinstance(t, type) and issubclass(t, SecretRef) for t in _type_at(root, loc)
    ) or any(isinstance(part, str) and part.endswith("Ref") for part in loc)


class _DocumentChecker:
    """Validates one YAML document and records its problems."""

    def __init__(self, file: str, source: SourceDocument, problems: list[Problem]) -> None:
        self.file = file
        self.source = source
        self.problems = problems

    def add(self, path: Loc, message: str, hint: str = "", *, key: bool = False) -> None:
        where = self.source.locate(path, key=key)
        self.problems.append(
            Problem(self.file, where.line, where.column, dotted(path), message, hint)
        )

    def run(self) -> PolicyDocument | None:
        value = self.source.value
        if not isinstance(value, dict):
            self.add(
                (), "a policy document must be a mapping", "with apiVersion, kind, metadata, spec"
            )
            return None
        envelope_ok = self._envelope(value)
        kind = value.get("kind")
        model = KINDS.get(kind) if isinstance(kind, str) else None
        if model is None:
            return None
        try:
            document = model.model_validate(value)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                self._translate(model, error)
            return None
        return document if envelope_ok else None

    def _envelope(self, value: dict[str, Any]) -> bool:
        ok = True
        api = value.get("apiVersion")
        if "apiVersion" not in value:
            self.add(
                ("apiVersion",), "required field is missing", f"write apiVersion: {API_VERSION}"
            )
            ok = False
        elif api != API_VERSION:
            self.add(
                ("apiVersion",), f"unknown apiVersion {_shown(api)}", f"supported: {API_VERSION}"
            )
            ok = False
        kind = value.get("kind")
        if "kind" not in value:
            self.add(("kind",), "required field is missing", f"one of: {', '.join(KINDS)}")
            ok = False
        elif not isinstance(kind, str) or kind not in KINDS:
            hint = (
                did_you_mean(kind, KINDS)
                if isinstance(kind, str)
                else f"one of: {', '.join(KINDS)}"
            )
            self.add(("kind",), f"unknown kind {_shown(kind)}", hint)
            ok = False
        return ok

    def _translate(self, model: type[BaseModel], error: Any) -> None:
        loc: Loc = tuple(part for part in error["loc"] if isinstance(part, str | int))
        kind, message = error["type"], str(error["msg"])
        if loc[:1] in (("apiVersion",), ("kind",)):
            return  # reported by the envelope check with a better hint
        if kind == "extra_forbidden":
            self._unknown_field(model, loc)
        elif kind == "missing":
            inline = (*loc[:-1], str(loc[-1]).removesuffix("Ref"))
            if str(loc[-1]).endswith("Ref") and inline in self.source.keys:
                return  # the inline secret given instead is the problem worth reporting
            self.add(loc, "required field is missing", _description(model, loc))
        elif kind == "string_pattern_mismatch":
            hint = _description(model, loc) or f"pattern {error.get('ctx', {}).get('pattern')}"
            self.add(loc, f"{_shown(error.get('input'))} is not of the required form", hint)
        elif _is_secret_slot(model, loc):
            if isinstance(error.get("input"), str):
                self.add(loc, "inline secret where a secretRef belongs", _SECRET_HINT)
            else:
                self.add(loc, message.removeprefix("Value error, "), _SECRET_HINT)
        elif kind == "literal_error" and isinstance(error.get("input"), str):
            expected = str(error.get("ctx", {}).get("expected", ""))
            choices = [c.strip().strip("'") for c in expected.replace(" or ", ",").split(",")]
            self.add(
                loc,
                f"{_shown(error['input'])} is not allowed",
                did_you_mean(error["input"], choices),
            )
        else:
            self.add(
                loc, message.removeprefix("Value error, "), f"got {_shown(error.get('input'))}"
            )

    def _unknown_field(self, model: type[BaseModel], loc: Loc) -> None:
        name = str(loc[-1])
        allowed = _field_names(model, loc[:-1])
        if f"{name}Ref" in allowed or name.lower().replace("_", "") in _SECRET_WORDS:
            ref = f"{name}Ref" if f"{name}Ref" in allowed else "a secretRef"
            self.add(
                loc,
                "inline secret where a secretRef belongs",
                f"use {ref}: {{env: VAR}} or {{file: PATH}}",
                key=True,
            )
            return
        self.add(loc, f"unknown field {name!r}", did_you_mean(name, allowed), key=True)


def validate_sources(sources: Sequence[SourceFile]) -> Report:
    """Validate every document of every file as one set (cross-document rules included)."""
    report = Report()
    for source in sources:
        report.problems.extend(source.problems)
        for doc in source.documents:
            document = _DocumentChecker(source.name, doc, report.problems).run()
            if document is not None:
                report.documents.append(ValidatedDocument(source.name, doc, document))
    for finding in check_set([entry.document for entry in report.documents]):
        entry = report.documents[finding.index]
        _DocumentChecker(entry.file, entry.source, report.problems).add(
            finding.path, finding.message, finding.hint
        )
    order = {source.name: index for index, source in enumerate(sources)}
    report.problems.sort(key=lambda p: (order.get(p.file, len(order)), p.line, p.column))
    return report
