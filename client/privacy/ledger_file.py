"""The privacy ledger's file: where it lives, what one charge holds, and reading it strictly.

One JSON document per budget key, ``<state dir>/privacy/<budget key>.json``, schema
:data:`LEDGER_SCHEMA`: the budget key, the accountant and delta its rounds were priced with, and
every charge in order. The reader accepts only what ``PrivacyLedger.record`` can write (the same
rules guard its arguments, client/privacy/checks.py) and says in one line what is wrong with
anything else, since a ledger is never reset: resetting it would reset the privacy budget. Locking
and charging are client/privacy/ledger.py's.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from client.privacy.accounting import Mechanism
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
from policies.federation import Accountant

__all__ = [
    "LEDGER_DIR",
    "LEDGER_SCHEMA",
    "LedgerState",
    "RoundCharge",
    "ledger_path",
    "parse_ledger",
]

LEDGER_SCHEMA: Final = "fedge.ledger/v1"
LEDGER_DIR: Final = "privacy"
_SCHEMA_PREFIX: Final = "fedge.ledger/v"

_CHARGE_RULES: Final[dict[str, Rule]] = {
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
_LEDGER_RULES: Final[dict[str, Rule]] = {
    "schema": (lambda v: v == LEDGER_SCHEMA, repr(LEDGER_SCHEMA)),
    "budgetKey": NAME,
    "accountant": ACCOUNTANT,
    "delta": DELTA,
    "charges": (lambda v: isinstance(v, list), "a list"),
}


def ledger_path(state_dir: str | os.PathLike[str], budget_key: str) -> Path:
    """Where the ledger of ``budget_key`` lives in a data holder's state directory."""
    return Path(state_dir) / LEDGER_DIR / f"{check_name(budget_key, what='budget key')}.json"


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


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
    def from_dict(cls, data: Mapping[str, Any]) -> RoundCharge:
        """Parse one stored charge; raises ``ValueError`` naming the field, for the loader."""
        check_fields(data, _CHARGE_RULES)
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


@dataclass(frozen=True, slots=True)
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

    def to_text(self) -> str:
        doc = {
            "schema": LEDGER_SCHEMA,
            "budgetKey": self.budget_key,
            "accountant": self.accountant,
            "delta": self.delta,
            "charges": [charge.to_dict() for charge in self.charges],
        }
        return json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def parse_ledger(data: bytes) -> LedgerState:
    """Parse and validate a ledger file; ``ValueError`` says what is wrong, for the caller."""
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise ValueError("not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(doc, dict):
        raise ValueError("not a privacy ledger (expected a JSON object)")
    schema = doc.get("schema")
    if schema != LEDGER_SCHEMA:
        if isinstance(schema, str) and schema.startswith(_SCHEMA_PREFIX):
            raise ValueError(
                f"written by another fedge version (schema {schema!r}, "
                f"this one reads {LEDGER_SCHEMA!r})"
            )
        raise ValueError(f"not a privacy ledger (schema {schema!r}, expected {LEDGER_SCHEMA!r})")
    check_fields(doc, _LEDGER_RULES)
    charges: list[RoundCharge] = []
    seen: set[tuple[str, str, int]] = set()
    for index, entry in enumerate(doc["charges"]):
        if not isinstance(entry, dict):
            raise ValueError(f"charges[{index}]: must be an object")
        try:
            charge = RoundCharge.from_dict(entry)
        except ValueError as exc:
            raise ValueError(f"charges[{index}].{exc}") from exc
        if charge.key in seen:
            raise ValueError(
                f"charges[{index}]: round {charge.round} of run {charge.run_id!r} "
                f"({charge.federation}) is charged twice"
            )
        seen.add(charge.key)
        charges.append(charge)
    return LedgerState(doc["budgetKey"], doc["accountant"], float(doc["delta"]), tuple(charges))


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a ledger can hold")
