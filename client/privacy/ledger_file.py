"""The privacy ledger's file: where it lives, what one charge holds, and reading it strictly.

One JSON document per budget key, ``<state dir>/privacy/<budget key>.json``, schema
:data:`LEDGER_SCHEMA`: the budget key, the accountant and delta its rounds were priced with, every
charge in order, and a hash chain over them. The reader accepts only what ``PrivacyLedger.record``
can write (the same rules guard its arguments, client/privacy/checks.py) and says in one line what
is wrong with anything else, since a ledger is never reset silently: resetting it would reset the
privacy budget. Locking and charging are client/privacy/ledger.py's.

The chain (schema v2) is why a file that was edited, cut short or reordered is caught rather than
priced: each charge stores ``prev``, the SHA-256 of the canonical JSON of the charge before it
(the first charge, of the ledger's header: schema, budget key, accountant, delta), and the document
stores ``head``, the hash of its last charge. :func:`verify_ledger` recomputes the chain and the
running epsilon with Opacus and names the first charge that disagrees. A v1 file (no chain) is
still read, so that the ledger can check its running epsilon and rewrite it chained, once.

Beside the ledger, ``<budget key>.json.seen`` (the *marker*) remembers how many charges the ledger
had and the chain's head at that count. It is what makes a lost ledger an error rather than a
fresh budget, and a restored older copy an error rather than a refund.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Final

from client.privacy.accounting import Mechanism, epsilon_for
from client.privacy.checks import (
    ACCOUNTANT,
    DELTA,
    NAME,
    NOISE,
    RATE,
    ROUND,
    RUN_ID,
    STEPS,
    Rule,
    check_fields,
    check_name,
    is_number,
)
from fedge.bounded import InputError, load_json, read_capped
from fedge.errors import UsageError
from policies.federation import Accountant

__all__ = [
    "EPSILON_REL_TOLERANCE",
    "LEDGER_DIR",
    "LEDGER_SCHEMA",
    "LEDGER_SCHEMA_V1",
    "MARKER_SCHEMA",
    "LedgerError",
    "LedgerState",
    "RoundCharge",
    "SeenMarker",
    "StoredLedger",
    "ledger_path",
    "marker_path",
    "parse_ledger",
    "parse_marker",
    "read_ledger",
    "read_marker",
    "stale_temp_files",
    "verify_ledger",
]

LEDGER_SCHEMA: Final = "fedge.ledger/v2"
LEDGER_SCHEMA_V1: Final = "fedge.ledger/v1"
MARKER_SCHEMA: Final = "fedge.ledger-seen/v1"
LEDGER_DIR: Final = "privacy"
MARKER_SUFFIX: Final = ".seen"
_SCHEMA_PREFIX: Final = "fedge.ledger/v"

# A ledger of ten thousand charges is about 4 MB; a file past this is not one fedge wrote.
LEDGER_LIMIT: Final = 32 * 1024 * 1024
_MARKER_LIMIT: Final = 4096

EPSILON_REL_TOLERANCE: Final = 1e-9
"""How far a stored running epsilon may be from Opacus's figure for the same charges: rounding
only (the same code computed both), never a changed noise multiplier or step count."""

_HASH = re.compile(r"[0-9a-f]{64}")
_HASH_RULE: Final[Rule] = (
    lambda v: isinstance(v, str) and _HASH.fullmatch(v) is not None,
    "a SHA-256 in lowercase hex",
)
_CHARGE_RULES_V1: Final[dict[str, Rule]] = {
    "federation": NAME,
    "runId": RUN_ID,
    "round": ROUND,
    "noiseMultiplier": NOISE,
    "sampleRate": RATE,
    "steps": STEPS,
    "epsilonAfter": (lambda v: is_number(v) and 0 <= v < math.inf, "a finite number >= 0"),
    "targetEpsilon": NOISE,
    "recordedAt": (lambda v: isinstance(v, str), "a string"),
}
_CHARGE_RULES: Final[dict[str, Rule]] = {**_CHARGE_RULES_V1, "prev": _HASH_RULE}
_LEDGER_RULES_V1: Final[dict[str, Rule]] = {
    "schema": (lambda v: v == LEDGER_SCHEMA_V1, repr(LEDGER_SCHEMA_V1)),
    "budgetKey": NAME,
    "accountant": ACCOUNTANT,
    "delta": DELTA,
    "charges": (lambda v: isinstance(v, list), "a list"),
}
_LEDGER_RULES: Final[dict[str, Rule]] = {
    **_LEDGER_RULES_V1,
    "schema": (lambda v: v == LEDGER_SCHEMA, repr(LEDGER_SCHEMA)),
    "head": _HASH_RULE,
}
_MARKER_RULES: Final[dict[str, Rule]] = {
    "schema": (lambda v: v == MARKER_SCHEMA, repr(MARKER_SCHEMA)),
    "ledger": (lambda v: isinstance(v, str), "a file name"),
    "charges": STEPS,
    "head": _HASH_RULE,
    "updatedAt": (lambda v: isinstance(v, str), "a string"),
}


class LedgerError(UsageError):
    """A privacy ledger (or its marker) that fedge will not use: unreadable, malformed, altered,
    rolled back or missing. ``path`` names the file; ``index`` the first charge at fault, if one
    is."""

    def __init__(
        self, message: str, *, path: str | os.PathLike[str], index: int | None = None
    ) -> None:
        self.path = str(path)
        self.index = index
        super().__init__(f"{self.path}: {message}")


def ledger_path(state_dir: str | os.PathLike[str], budget_key: str) -> Path:
    """Where the ledger of ``budget_key`` lives in a data holder's state directory."""
    return Path(state_dir) / LEDGER_DIR / f"{check_name(budget_key, what='budget key')}.json"


def marker_path(ledger: str | os.PathLike[str]) -> Path:
    """The marker beside a ledger: ``<ledger file name>.seen``."""
    path = Path(ledger)
    return path.with_name(path.name + MARKER_SUFFIX)


def stale_temp_files(ledger: str | os.PathLike[str]) -> list[Path]:
    """Temporary files fedge.atomic leaves beside the ledger or its marker when killed mid-write.

    Only the exact names ``tempfile.mkstemp(prefix=".<name>.", suffix=".tmp")`` makes (eight
    characters of its alphabet) match, so nothing else in the folder is ever touched. Only a
    caller holding the ledger's lock may remove them: every write happens under it.
    """
    path = Path(ledger)
    names = (path.name, marker_path(path).name)
    pattern = re.compile("|".join(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp" for name in names))
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return []
    return sorted(
        Path(entry.path)
        for entry in entries
        if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
    )


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _canonical(value: Mapping[str, Any]) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _sha256(value: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical(value)).hexdigest()


@dataclass(frozen=True, slots=True)
class RoundCharge:
    """One round this data holder took part in, as recorded in its ledger.

    ``epsilon_after`` is the total for the whole ledger right after this round, as Opacus computed
    it when the round was recorded; ``target_epsilon`` is the budget it was checked against.
    """

    federation: str
    run_id: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_after: float
    target_epsilon: float
    recorded_at: str = field(default_factory=_now)

    @property
    def key(self) -> tuple[str, str, int]:
        """What makes a retry the same round: (federation, run id, round)."""
        return (self.federation, self.run_id, self.round)

    @property
    def mechanism(self) -> Mechanism:
        """The entry Opacus's accountant history would hold for this round."""
        return (self.noise_multiplier, self.sample_rate, self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "federation": self.federation,
            "runId": self.run_id,
            "round": self.round,
            "noiseMultiplier": self.noise_multiplier,
            "sampleRate": self.sample_rate,
            "steps": self.steps,
            "epsilonAfter": self.epsilon_after,
            "targetEpsilon": self.target_epsilon,
            "recordedAt": self.recorded_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, chained: bool = True) -> RoundCharge:
        """Parse one stored charge; raises ``ValueError`` naming the field, for the loader."""
        check_fields(data, _CHARGE_RULES if chained else _CHARGE_RULES_V1)
        return cls(
            federation=data["federation"],
            run_id=data["runId"],
            round=data["round"],
            noise_multiplier=float(data["noiseMultiplier"]),
            sample_rate=float(data["sampleRate"]),
            steps=data["steps"],
            epsilon_after=float(data["epsilonAfter"]),
            target_epsilon=float(data["targetEpsilon"]),
            recorded_at=data["recordedAt"],
        )


@dataclass(frozen=True)
class LedgerState:
    """A ledger file's content: its terms and every charge, oldest first."""

    budget_key: str
    accountant: Accountant
    delta: float
    charges: tuple[RoundCharge, ...] = ()

    def find(self, key: tuple[str, str, int]) -> RoundCharge | None:
        return next((charge for charge in self.charges if charge.key == key), None)

    def history(self) -> list[Mechanism]:
        return [charge.mechanism for charge in self.charges]

    @cached_property
    def heads(self) -> tuple[str, ...]:
        """The chain: ``heads[k]`` is the hash after the first ``k`` charges (``heads[0]`` of the
        header alone), so ``heads[k]`` is also what charge ``k`` stores as ``prev``."""
        header = {
            "schema": LEDGER_SCHEMA,
            "budgetKey": self.budget_key,
            "accountant": self.accountant,
            "delta": self.delta,
        }
        heads = [_sha256(header)]
        for charge in self.charges:
            heads.append(_sha256({**charge.to_dict(), "prev": heads[-1]}))
        return tuple(heads)

    @property
    def head(self) -> str:
        return self.heads[-1]

    def to_text(self) -> str:
        doc = {
            "schema": LEDGER_SCHEMA,
            "budgetKey": self.budget_key,
            "accountant": self.accountant,
            "delta": self.delta,
            "charges": [
                {**charge.to_dict(), "prev": prev}
                for charge, prev in zip(self.charges, self.heads, strict=False)
            ],
            "head": self.head,
        }
        return json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


@dataclass(frozen=True, slots=True)
class StoredLedger:
    """A ledger as read, before it is trusted: its content, its schema version, and the chain as
    stored (each charge's ``prev`` and the ``head``; empty and None for a v1 file)."""

    state: LedgerState
    version: int
    links: tuple[str, ...] = ()
    head: str | None = None


def read_ledger(path: str | os.PathLike[str]) -> StoredLedger | None:
    """Read and parse a ledger through the bounded reader; None when there is no file."""
    try:
        data = read_capped(path, limit=LEDGER_LIMIT, what="a privacy ledger")
    except InputError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise LedgerError(
            f"{exc.reason}; fix or restore the file (it is never reset silently, because that "
            "would reset the privacy budget)",
            path=path,
        ) from exc
    return parse_ledger(data, source=path)


def parse_ledger(data: bytes, *, source: str | os.PathLike[str]) -> StoredLedger:
    """Parse and validate a ledger file's fields (not yet its chain or its epsilons)."""

    def bad(message: str, index: int | None = None) -> LedgerError:
        return LedgerError(
            f"{message}; fix or restore the file (it is never reset silently, because that "
            "would reset the privacy budget)",
            path=source,
            index=index,
        )

    try:
        doc = load_json(data, source=str(source), limit=LEDGER_LIMIT, allow_constants=False)
    except InputError as exc:
        raise bad(exc.reason) from exc
    if not isinstance(doc, dict):
        raise bad("not a privacy ledger (expected a JSON object)")
    schema = doc.get("schema")
    if schema not in (LEDGER_SCHEMA, LEDGER_SCHEMA_V1):
        if isinstance(schema, str) and schema.startswith(_SCHEMA_PREFIX):
            raise bad(
                f"written by another fedge version (schema {schema!r}, "
                f"this one reads {LEDGER_SCHEMA!r})"
            )
        raise bad(f"not a privacy ledger (schema {schema!r}, expected {LEDGER_SCHEMA!r})")
    chained = schema == LEDGER_SCHEMA
    try:
        check_fields(doc, _LEDGER_RULES if chained else _LEDGER_RULES_V1)
    except ValueError as exc:
        raise bad(str(exc)) from exc
    charges: list[RoundCharge] = []
    links: list[str] = []
    seen: set[tuple[str, str, int]] = set()
    for index, entry in enumerate(doc["charges"]):
        if not isinstance(entry, dict):
            raise bad(f"charges[{index}]: must be an object", index)
        try:
            charge = RoundCharge.from_dict(entry, chained=chained)
        except ValueError as exc:
            raise bad(f"charges[{index}].{exc}", index) from exc
        if charge.key in seen:
            raise bad(
                f"charges[{index}]: round {charge.round} of run {charge.run_id!r} "
                f"({charge.federation}) is charged twice",
                index,
            )
        seen.add(charge.key)
        charges.append(charge)
        if chained:
            links.append(entry["prev"])
    state = LedgerState(doc["budgetKey"], doc["accountant"], float(doc["delta"]), tuple(charges))
    if not chained:
        return StoredLedger(state, 1)
    return StoredLedger(state, 2, tuple(links), doc["head"])


def verify_ledger(
    stored: StoredLedger,
    *,
    source: str | os.PathLike[str],
    trusted: int = 0,
    every: bool = True,
) -> None:
    """Refuse a ledger whose chain or running epsilon disagrees with its charges.

    The chain is checked whole (hashing is cheap). The running epsilon of each charge after the
    first ``trusted`` ones (already verified by this process) is priced again with Opacus, under
    the file's own accountant and delta, and compared with the stored ``epsilonAfter``; with
    ``every`` False only the last charge's (the total) is. One error names every disagreement
    found (the first chain break, the first epsilon), so that an edited noise multiplier is named
    as such and not only as a broken link.
    """
    state = stored.state
    problems: list[str] = []
    first: int | None = None
    if stored.version >= 2:
        heads = state.heads
        for index, link in enumerate(stored.links):
            if link != heads[index]:
                if index:
                    problems.append(
                        f"charges[{index}].prev is not the hash of charges[{index - 1}]: "
                        f"charges[{index - 1}] was edited, or charges were removed or reordered "
                        f"before charges[{index}]"
                    )
                else:
                    problems.append(
                        "charges[0].prev is not the hash of the ledger's header (budget key, "
                        "accountant, delta): the header was edited, or charges[0] is not the "
                        "first charge (one was removed before it, or they were reordered)"
                    )
                first = index
                break
        else:
            if stored.head != state.head:
                last = len(state.charges) - 1
                problems.append(
                    f"head is not the hash of charges[{last}], the last charge: it was edited, "
                    "or charges after it were removed"
                    if last >= 0
                    else "head is not the hash of an empty ledger: its charges were removed"
                )
                first = max(last, 0)
    mismatch = _first_epsilon_mismatch(state, start=trusted, every=every)
    if mismatch is not None:
        index, stored_eps, priced = mismatch
        c = state.charges[index]
        problems.append(
            f"charges[{index}] (round {c.round} of run {c.run_id!r}, noise multiplier "
            f"{c.noise_multiplier:g}, sample rate {c.sample_rate:g}, {c.steps} steps) stores a "
            f"running epsilon of {stored_eps:.6g}, but Opacus prices charges[0..{index}] at "
            f"{priced:.6g} ({state.accountant}, delta {state.delta:g})"
        )
        first = index if first is None else min(first, index)
    if problems:
        raise LedgerError(
            "the privacy ledger was changed outside fedge, so it is not used: "
            + "; ".join(problems)
            + ". Restore the last copy fedge wrote, or pass --reset-ledger to fedge-client start "
            "to start the budget over (logged)",
            path=source,
            index=first,
        )


def _first_epsilon_mismatch(
    state: LedgerState, *, start: int, every: bool
) -> tuple[int, float, float] | None:
    charges = state.charges
    if not charges or start >= len(charges):
        return None
    indices: Sequence[int] = range(start, len(charges)) if every else [len(charges) - 1]
    history = state.history()
    for index in indices:
        priced = epsilon_for(history[: index + 1], delta=state.delta, accountant=state.accountant)
        stored = charges[index].epsilon_after
        if not math.isclose(stored, priced, rel_tol=EPSILON_REL_TOLERANCE, abs_tol=1e-12):
            return index, stored, priced
    return None


@dataclass(frozen=True, slots=True)
class SeenMarker:
    """What the marker beside a ledger remembers: how many charges it had, and the chain's head
    at that count."""

    ledger: str
    charges: int
    head: str
    updated_at: str = field(default_factory=_now)

    def to_text(self) -> str:
        doc = {
            "schema": MARKER_SCHEMA,
            "ledger": self.ledger,
            "charges": self.charges,
            "head": self.head,
            "updatedAt": self.updated_at,
        }
        return json.dumps(doc, indent=2) + "\n"


def read_marker(ledger: str | os.PathLike[str]) -> SeenMarker | None:
    """The marker beside ``ledger``, or None when there is none."""
    path = marker_path(ledger)
    try:
        data = read_capped(path, limit=_MARKER_LIMIT, what="a privacy ledger's marker")
    except InputError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise LedgerError(
            f"{exc.reason}; this marker records how many charges the privacy ledger beside it "
            "had (restore it, or pass --reset-ledger to fedge-client start)",
            path=path,
        ) from exc
    return parse_marker(data, source=path)


def parse_marker(data: bytes, *, source: str | os.PathLike[str]) -> SeenMarker:
    try:
        doc = load_json(data, source=str(source), limit=_MARKER_LIMIT, allow_constants=False)
        if not isinstance(doc, dict):
            raise ValueError("not a privacy ledger's marker (expected a JSON object)")
        check_fields(doc, _MARKER_RULES)
    except (InputError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, InputError) else str(exc)
        raise LedgerError(
            f"{reason}; this marker records how many charges the privacy ledger beside it had "
            "(restore it, or pass --reset-ledger to fedge-client start)",
            path=source,
        ) from exc
    return SeenMarker(doc["ledger"], doc["charges"], doc["head"], doc["updatedAt"])
