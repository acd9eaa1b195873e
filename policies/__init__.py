"""Policy documents: the YAML contracts between the operator and every part of fedge.

Load with :func:`load_files` (raises :class:`fedge.errors.PolicyError` carrying every problem) or
inspect with :func:`check_files` (returns a :class:`Report`). Import-light: pydantic and PyYAML,
never torch, flwr, libcloud or paho.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from fedge.errors import UsageError
from policies.documents import (
    KINDS,
    AgentConfig,
    CloudInventory,
    FederationPolicy,
    PlacementPolicy,
    PolicyDocument,
    RolloutPolicy,
)
from policies.schema import json_schema
from policies.source import parse_text, read_policy_file
from policies.validation import Report, ValidatedDocument, validate_sources

__all__ = [
    "EXAMPLES_DIR",
    "KINDS",
    "AgentConfig",
    "CloudInventory",
    "FederationPolicy",
    "PlacementPolicy",
    "PolicyDocument",
    "Report",
    "RolloutPolicy",
    "ValidatedDocument",
    "check_files",
    "check_text",
    "json_schema",
    "load_files",
    "load_one",
    "the_one",
]

EXAMPLES_DIR = Path(__file__).with_name("examples")

D = TypeVar("D", FederationPolicy, PlacementPolicy, RolloutPolicy, CloudInventory, AgentConfig)


def check_files(paths: Sequence[str | os.PathLike[str]]) -> Report:
    """Validate files together; never raises for bad content (problems are in the report)."""
    return validate_sources([read_policy_file(path) for path in paths])


def check_text(text: str, *, name: str = "<text>") -> Report:
    """Validate YAML text; never raises for any string."""
    return validate_sources([parse_text(text, name=name)])


def load_files(paths: Sequence[str | os.PathLike[str]]) -> list[PolicyDocument]:
    """Every document of the files, or :class:`~fedge.errors.PolicyError` with every problem."""
    report = check_files(paths)
    report.raise_for_problems()
    return [entry.document for entry in report.documents]


def the_one(report: Report, kind: type[D], *, source: str) -> D:
    """The single document of ``kind`` in a validated ``report``; ``source`` names it in errors.

    Problems anywhere in the report raise first (:class:`~fedge.errors.PolicyError`, located),
    so a file with one good document of ``kind`` and a broken other document is still refused.
    """
    report.raise_for_problems()
    found = [entry.document for entry in report.documents if isinstance(entry.document, kind)]
    if len(found) != 1:
        raise UsageError(
            f"{source}: expected exactly one {kind.__name__} document, found {len(found)}"
        )
    return found[0]


def load_one(path: str | os.PathLike[str], kind: type[D]) -> D:
    """The single document of ``kind`` in ``path`` (other kinds in the file are validated too)."""
    return the_one(check_files([path]), kind, source=str(path))
