"""The one exception tree of fedge.

Every error that fedge raises on purpose is a :class:`FedgeError`; third-party exceptions are
translated at the boundary where they happen (``raise ... from exc``), so a caller needs one
``except`` clause and never imports libcloud, paho or flwr just to catch an error. Each class
carries the structured fields a caller needs (the file, the field, the provider) instead of making
them parse the message, and an ``exit_code`` that the command-line tools use.

::

    FedgeError                      exit 1: a runtime failure
    ├── UsageError                  exit 2: bad input from the user (a flag, a file, a value)
    │   ├── PolicyError             one or more problems in policy documents (``problems``)
    │   ├── DataError               a data holder's data file is unusable (``path``, ``field``)
    │   └── KeyFileError            a key file is missing, unreadable or not the right kind
    ├── ArtifactError               an artifact is incomplete or a file differs from its manifest
    │   └── SignatureError          the manifest signature is missing or no trusted key verifies it
    ├── CloudError                  a store failed (``provider``, ``container``, ``object_name``)
    ├── FederationError             the federation (Flower) could not run a round or a run
    │   └── BudgetExceededError     a round would spend more privacy budget than the policy allows
    └── EdgeError                   an edge agent could not fetch, verify, install or serve a model
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ArtifactError",
    "BudgetExceededError",
    "CloudError",
    "DataError",
    "EdgeError",
    "FederationError",
    "FedgeError",
    "KeyFileError",
    "PolicyError",
    "Problem",
    "SignatureError",
    "UsageError",
]


class FedgeError(Exception):
    """Base of every error fedge raises on purpose."""

    exit_code: int = 1


class UsageError(FedgeError):
    """The user gave something fedge cannot use; fixing the input fixes the error."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Problem:
    """One located problem in a policy file: ``file:line:column: path: message (hint)``."""

    file: str
    line: int
    column: int
    path: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        head = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        return f"{head} ({self.hint})" if self.hint else head


class PolicyError(UsageError):
    """Policy documents did not validate; ``problems`` holds every problem found, not just one."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        first = str(self.problems[0]) if self.problems else "invalid policy"
        more = len(self.problems) - 1
        super().__init__(first if more <= 0 else f"{first} (and {more} more)")


class DataError(UsageError):
    """A data holder's data file cannot be used (missing column, bad encoding, empty)."""

    def __init__(self, message: str, *, path: str, field: str | None = None) -> None:
        self.path = path
        self.field = field
        super().__init__(f"{path}: {message}")


class KeyFileError(UsageError):
    """A signing or public key file is missing, unreadable, or not an Ed25519 key."""

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


class ArtifactError(FedgeError):
    """An artifact does not match its manifest; ``file`` names the offending file."""

    def __init__(self, message: str, *, file: str) -> None:
        self.file = file
        super().__init__(f"{file}: {message}")


class SignatureError(ArtifactError):
    """The manifest signature is absent, malformed, or made by no trusted key."""


class CloudError(FedgeError):
    """An artifact store operation failed; the fields say where."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        container: str | None = None,
        object_name: str | None = None,
        transient: bool = False,
    ) -> None:
        self.provider = provider
        self.container = container
        self.object_name = object_name
        self.transient = transient
        where = "/".join(part for part in (container, object_name) if part)
        super().__init__(f"{provider}{': ' + where if where else ''}: {message}")


class FederationError(FedgeError):
    """A federated run or round could not complete."""


class BudgetExceededError(FederationError):
    """A round would take a data holder past its privacy budget; the ledger is left unchanged."""

    def __init__(self, message: str, *, spent: float, round_cost: float, budget: float) -> None:
        self.spent = spent
        self.round_cost = round_cost
        self.budget = budget
        super().__init__(message)


class EdgeError(FedgeError):
    """An edge agent failed to fetch, verify, install or serve a model."""
