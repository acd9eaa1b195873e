"""The data holder's privacy ledger: what each round cost, what is left, and the refusal.

DESIGN.md section 5 promises that each data holder's budget is enforced on the holder's own
machine, so no coordinator can make a client spend more than its policy allows. This module is that
enforcement. It is shaped like Opacus's accountants: pure math (:func:`epsilon_for`,
:func:`noise_for_budget`) over the history Opacus itself keeps, a list of
``(noise_multiplier, sample_rate, steps)`` triples, under a thin stateful class
(:class:`PrivacyLedger`) that persists the history in one JSON file.

The epsilon reported is always Opacus's own ``get_epsilon(delta)`` for the whole recorded history,
recomputed rather than summed, because privacy loss does not add up round by round. Consecutive
rounds with the same noise and sample rate are merged the way ``IAccountant.step`` merges steps,
so the figure equals what one Opacus accountant would report had it watched every step.

Semantics a caller relies on:

* **Refusal.** :meth:`PrivacyLedger.check` prices a round before training and raises
  :class:`~fedge.errors.BudgetExceededError` when it would take the total past the budget.
  :meth:`PrivacyLedger.record` checks again, under a file lock, against the file as it is now
  (another run sharing the budget may have spent in between), and only then appends. A refused
  round leaves the file byte for byte as it was.
* **When to record.** Call ``record`` after local training and *before* the update leaves the
  machine, and send nothing if it raises. A crash between ``record`` and the send leaves the round
  charged though nothing was released: the ledger errs on the side of over-counting, never under.
* **Retries are idempotent per (federation, run id, round).** Recording the same round again with
  the same noise, sample rate and steps returns the existing charge and writes nothing, so a round
  retried after a crash is not charged twice. This is sound only if at most one update per round
  leaves the machine: a client that retrains a round whose update was already sent must resend
  the first update, not a fresh one (:meth:`PrivacyLedger.charged` tells it the round is a retry).
  Recording the same round with different parameters is refused with
  :class:`~fedge.errors.FederationError`.
* **Keying.** A ledger belongs to one *budget key*, by default the federation's
  ``metadata.name``, and lives in ``<state dir>/privacy/<budget key>.json``. Two federations share
  one budget only when the holder gives both the same budget key; each charge still names its
  federation and run.
* **Terms.** The accountant and delta of a ledger are fixed by its first charge: reopening it with
  others would re-price rounds already spent, so that is refused. The target epsilon is whatever
  the holder's policy says now, and each charge records the target it was checked against.
* **Never a silent reset.** A corrupt, foreign or newer-schema file raises
  :class:`~fedge.errors.UsageError` naming the file; so does a file that lost charges this ledger
  had already seen. Nothing here rewrites a file it could not read.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypedDict, TypeGuard, get_args

from fedge.atomic import atomic_write_text
from fedge.errors import BudgetExceededError, FederationError, UsageError
from fedge.logs import get_logger
from policies import FederationPolicy
from policies.common import DNS_NAME
from policies.federation import Accountant, PrivacySpec

__all__ = [
    "LEDGER_DIR",
    "LEDGER_SCHEMA",
    "MAX_NOISE_MULTIPLIER",
    "Accountant",
    "LedgerSummary",
    "Mechanism",
    "PrivacyBudget",
    "PrivacyLedger",
    "RoundCharge",
    "RoundSummary",
    "epsilon_for",
    "ledger_path",
    "noise_for_budget",
    "opacus_history",
]

LEDGER_SCHEMA: Final = "fedge.ledger/v1"
LEDGER_DIR: Final = "privacy"
# The same ceiling as opacus.accountants.utils.MAX_SIGMA: past it, a plan cannot fit the budget.
MAX_NOISE_MULTIPLIER: Final = 1e6

Mechanism = tuple[float, float, int]
"""One entry of Opacus's accountant history: ``(noise_multiplier, sample_rate, steps)``."""

_log = get_logger(__name__)
_ACCOUNTANTS: Final[tuple[str, ...]] = get_args(Accountant)
_NAME = re.compile(DNS_NAME)
_SCHEMA_PREFIX: Final = "fedge.ledger/v"


# --------------------------------------------------------------------------------------------
# Values


def _is_number(value: object) -> TypeGuard[int | float]:
    # bool is an int to Python, but ``true`` is never a noise multiplier.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_count(value: object, minimum: int) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_name(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _NAME.match(value) is not None


_Rule = tuple[Callable[[Any], bool], str]
# The same rules guard arguments and stored fields, so a file can hold only what record() wrote.
_NOISE: Final[_Rule] = (lambda v: _is_number(v) and 0 < v < math.inf, "a positive finite number")
_RATE: Final[_Rule] = (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]")
_STEPS: Final[_Rule] = (lambda v: _is_count(v, 1), "a positive integer")
_ROUND: Final[_Rule] = (lambda v: _is_count(v, 0), "a non-negative integer")
_RUN_ID: Final[_Rule] = (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")
_NAME_RULE: Final[_Rule] = (_is_name, "lowercase letters, digits, '-' and '.' (a metadata.name)")
_CHARGE_RULES: Final[dict[str, _Rule]] = {
    "federation": _NAME_RULE,
    "runId": _RUN_ID,
    "round": _ROUND,
    "noiseMultiplier": _NOISE,
    "sampleRate": _RATE,
    "steps": _STEPS,
    "epsilonAfter": (lambda v: _is_number(v) and 0 <= v < math.inf, "a finite number >= 0"),
    "targetEpsilon": _NOISE,
    "recordedAt": (lambda v: isinstance(v, str), "a string"),
}
_LEDGER_RULES: Final[dict[str, _Rule]] = {
    "schema": (lambda v: v == LEDGER_SCHEMA, repr(LEDGER_SCHEMA)),
    "budgetKey": _NAME_RULE,
    "accountant": (lambda v: v in _ACCOUNTANTS, f"one of {', '.join(_ACCOUNTANTS)}"),
    "delta": (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    "charges": (lambda v: isinstance(v, list), "a list"),
}


def _check_fields(data: Mapping[str, Any], rules: Mapping[str, _Rule]) -> None:
    """Raise ``ValueError('field: problem')`` for the first unknown, missing or bad field."""
    unknown = sorted(set(data) - set(rules))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field")
    for name, (ok, expected) in rules.items():
        if name not in data:
            raise ValueError(f"{name}: missing")
        if not ok(data[name]):
            raise ValueError(f"{name}: must be {expected} (got {data[name]!r})")


def _check_argument(name: str, value: object, rule: _Rule, hint: str = "") -> None:
    ok, expected = rule
    if not ok(value):
        raise UsageError(f"{name} must be {expected} (got {value!r}){hint}")


def _check_mechanism(noise_multiplier: float, sample_rate: float, steps: int) -> Mechanism:
    """Refuse a mechanism Opacus cannot price, before it reaches Opacus (or hangs in it)."""
    _check_argument(
        "noise_multiplier",
        noise_multiplier,
        _NOISE,
        "; a round without noise has no privacy guarantee",
    )
    _check_argument("sample_rate", sample_rate, _RATE)
    _check_argument("steps", steps, _STEPS)
    return (float(noise_multiplier), float(sample_rate), steps)


def _check_round(round: int, run_id: str) -> tuple[int, str]:
    _check_argument("round", round, _ROUND)
    _check_argument("run_id", run_id, _RUN_ID)
    return round, run_id


def _check_name(value: str, *, what: str) -> str:
    # Budget keys become file names; the policy's DNS-style names are safe on every system.
    _check_argument(what, value, _NAME_RULE)
    return value


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class PrivacyBudget:
    """What a data holder agreed to spend: the policy's ``spec.privacy`` without the training knobs.

    ``delta`` and ``accountant`` are the units epsilon is measured in; ``target_epsilon`` is the
    ceiling no round may cross.
    """

    target_epsilon: float
    delta: float
    accountant: Accountant = "rdp"

    def __post_init__(self) -> None:
        _check_argument("target_epsilon", self.target_epsilon, _NOISE)
        _check_argument("delta", self.delta, _LEDGER_RULES["delta"])
        _check_argument("accountant", self.accountant, _LEDGER_RULES["accountant"])
        object.__setattr__(self, "target_epsilon", float(self.target_epsilon))
        object.__setattr__(self, "delta", float(self.delta))

    @classmethod
    def from_policy(cls, privacy: PrivacySpec) -> PrivacyBudget:
        """The budget of a FederationPolicy's ``spec.privacy`` (the holder's own copy of it)."""
        return cls(
            target_epsilon=privacy.target_epsilon,
            delta=privacy.delta,
            accountant=privacy.accountant,
        )


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
        _check_fields(data, _CHARGE_RULES)
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


class RoundSummary(TypedDict):
    federation: str
    run_id: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_round: float
    epsilon_total: float
    target_epsilon: float
    recorded_at: str


class LedgerSummary(TypedDict):
    path: str
    budget_key: str
    federation: str
    accountant: str
    delta: float
    target_epsilon: float
    spent: float
    remaining: float
    rounds: list[RoundSummary]


# --------------------------------------------------------------------------------------------
# Pure math over Opacus


def opacus_history(mechanisms: Iterable[Mechanism]) -> list[Mechanism]:
    """Merge consecutive equal (noise, rate) entries exactly as ``IAccountant.step`` does.

    Without the merge, PRV would discretise a different composition than the accountant that
    watched the training steps, and report a (slightly) different epsilon.
    """
    merged: list[Mechanism] = []
    for noise, rate, steps in mechanisms:
        if merged and merged[-1][0] == noise and merged[-1][1] == rate:
            merged[-1] = (noise, rate, merged[-1][2] + steps)
        else:
            merged.append((noise, rate, steps))
    return merged


def epsilon_for(history: Iterable[Mechanism], *, delta: float, accountant: Accountant) -> float:
    """Epsilon that Opacus's ``accountant`` reports for ``history`` at ``delta``.

    An Opacus accountant is built, given the (merged) history and asked ``get_epsilon(delta)``
    with its defaults, so this is Opacus's figure and not a re-derivation of it. RDP costs a few
    milliseconds per distinct (noise, rate) entry; PRV convolves numerically and grows with the
    total number of steps and as the noise shrinks (seconds for thousands of steps at noise
    below about 0.3), which is why results are cached.
    """
    _check_argument("accountant", accountant, _LEDGER_RULES["accountant"])
    _check_argument("delta", delta, _LEDGER_RULES["delta"])
    checked = tuple(_check_mechanism(*entry) for entry in history)
    return _epsilon(tuple(opacus_history(checked)), float(delta), accountant)


@functools.lru_cache(maxsize=256)
def _epsilon(history: tuple[Mechanism, ...], delta: float, accountant: str) -> float:
    # Cached because check(), record() and spent() price the same history in turn, and PRV takes
    # tenths of a second per call. Opacus itself is imported here, not at module import, so that
    # reading a ledger's summary does not load torch.
    if not history:
        return 0.0
    from opacus.accountants import create_accountant

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if accountant == "rdp":
                epsilon = _rdp_epsilon(history, delta)
            else:
                opacus_accountant = create_accountant(mechanism=accountant)
                opacus_accountant.history = list(history)
                epsilon = float(opacus_accountant.get_epsilon(delta=delta))
        except (ArithmeticError, ValueError, RuntimeError, IndexError) as exc:
            raise FederationError(
                f"the {accountant} accountant cannot price this history ({exc}); "
                "the round is refused"
            ) from exc
    for warning in caught:
        # Opacus warns that an RDP bound could be tighter; the bound stays valid (conservative).
        _log.debug("opacus (%s accountant): %s", accountant, warning.message)
    if math.isnan(epsilon) or epsilon < 0:
        raise FederationError(f"the {accountant} accountant returned epsilon {epsilon}")
    return epsilon


def _rdp_epsilon(history: tuple[Mechanism, ...], delta: float) -> float:
    """``RDPAccountant.get_epsilon`` for ``history``, with the per-step RDP curves cached.

    Opacus computes ``compute_rdp(q, sigma, steps, orders)`` as one per-step curve times
    ``steps``, and that curve (about 150 orders, a series per fractional order) is nearly all
    of the cost: a few tenths of a second. Every pricing of a round (the plan, the check, the
    quote, the record) repeats it with a different step count. Keeping the curve per
    ``(sigma, q)`` and summing ``curve * steps`` in Opacus's own order gives the accountant's
    value bit for bit at a fraction of the cost; a warm ClientApp (client/node/warm.py) computes the
    curves once before it forks, so the rounds it serves inherit them.
    """
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as privacy_analysis

    rdp = sum([_rdp_curve(noise, rate) * steps for noise, rate, steps in history])
    eps, _ = privacy_analysis.get_privacy_spent(
        orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta
    )
    return float(eps)


@functools.lru_cache(maxsize=1024)
def _rdp_curve(noise_multiplier: float, sample_rate: float) -> Any:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as privacy_analysis

    return privacy_analysis.compute_rdp(
        q=sample_rate,
        noise_multiplier=noise_multiplier,
        steps=1,
        orders=RDPAccountant.DEFAULT_ALPHAS,
    )


def noise_for_budget(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps_per_round: int,
    rounds: int,
    accountant: Accountant = "rdp",
    history: Sequence[Mechanism] = (),
    epsilon_tolerance: float = 0.01,
) -> float:
    """The smallest noise multiplier (within tolerance) that fits ``rounds`` more rounds.

    The search is the one in ``opacus.accountants.utils.get_noise_multiplier`` (same bounds, same
    bisection), but it prices ``history`` plus the planned rounds as the ledger will, so every
    planned round passes :meth:`PrivacyLedger.check`. With no history it returns exactly what
    ``get_noise_multiplier(steps=rounds * steps_per_round)`` returns.
    """
    budget = PrivacyBudget(target_epsilon=target_epsilon, delta=delta, accountant=accountant)
    _check_argument("rounds", rounds, _STEPS)
    _check_argument("sample_rate", sample_rate, _RATE)
    _check_argument("steps_per_round", steps_per_round, _STEPS)
    _check_argument("epsilon_tolerance", epsilon_tolerance, _NOISE)
    past = list(history)

    def price(sigma: float) -> float:
        planned = [(sigma, float(sample_rate), steps_per_round)] * rounds
        return epsilon_for(past + planned, delta=budget.delta, accountant=budget.accountant)

    if past:
        spent = epsilon_for(past, delta=budget.delta, accountant=budget.accountant)
        if spent >= budget.target_epsilon:
            # More rounds only add epsilon: say so now, not after a search up to the noise cap.
            raise UsageError(
                f"epsilon {spent:.4g} is already spent of a budget of {budget.target_epsilon:g} "
                f"(delta {budget.delta:g}); no further round fits"
            )
    if past and past[-1][1:] == (float(sample_rate), steps_per_round):
        # A run that keeps its plan asks the same question every round: the noise chosen last
        # round still answers it, and one pricing replaces a dozen in the search below.
        sigma = past[-1][0]
        eps = price(sigma)
        if eps <= budget.target_epsilon and budget.target_epsilon - eps <= epsilon_tolerance:
            return sigma
    sigma_low, sigma_high, eps_high = 0.0, 10.0, math.inf
    while eps_high > budget.target_epsilon:
        sigma_high *= 2
        eps_high = price(sigma_high)
        if sigma_high > MAX_NOISE_MULTIPLIER:
            spent = epsilon_for(past, delta=budget.delta, accountant=budget.accountant)
            raise UsageError(
                f"no noise multiplier up to {MAX_NOISE_MULTIPLIER:g} keeps {rounds} round(s) of "
                f"{steps_per_round} steps at sample rate {sample_rate:g} within epsilon "
                f"{budget.target_epsilon:g} (delta {budget.delta:g}, already spent {spent:.4g})"
            )
    while budget.target_epsilon - eps_high > epsilon_tolerance:
        sigma = (sigma_low + sigma_high) / 2
        eps = price(sigma)
        if eps < budget.target_epsilon:
            sigma_high, eps_high = sigma, eps
        else:
            sigma_low = sigma
    return sigma_high


# --------------------------------------------------------------------------------------------
# The file


def ledger_path(state_dir: str | os.PathLike[str], budget_key: str) -> Path:
    """Where the ledger of ``budget_key`` lives in a data holder's state directory."""
    return Path(state_dir) / LEDGER_DIR / f"{_check_name(budget_key, what='budget key')}.json"


@dataclass(frozen=True, slots=True)
class _State:
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


def _parse(data: bytes) -> _State:
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
    _check_fields(doc, _LEDGER_RULES)
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
    return _State(doc["budgetKey"], doc["accountant"], float(doc["delta"]), tuple(charges))


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a ledger can hold")


# --------------------------------------------------------------------------------------------
# The stateful ledger


class PrivacyLedger:
    """One data holder's record of privacy spent under one budget key, kept in one JSON file.

    Every query reads the file as it is now (it is small, and another run may share the budget),
    so two ledgers open on the same file never disagree for long, and ``record`` re-reads it under
    an exclusive lock before it decides.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        federation: str,
        budget: PrivacyBudget,
        budget_key: str | None = None,
    ) -> None:
        self._path = Path(path)
        self._federation = _check_name(federation, what="federation")
        self._budget_key = _check_name(
            federation if budget_key is None else budget_key, what="budget key"
        )
        self._budget = budget
        self._seen: tuple[RoundCharge, ...] = ()
        self._stamp: tuple[int, int, int] | None = None
        self._state = self._empty()
        self._load()  # fail now, at start, not after the first round has trained

    @classmethod
    def for_policy(
        cls,
        state_dir: str | os.PathLike[str],
        policy: FederationPolicy,
        *,
        budget_key: str | None = None,
    ) -> PrivacyLedger:
        """The ledger a data holder keeps for ``policy``, in its own state directory."""
        name = policy.metadata.name
        key = name if budget_key is None else budget_key
        return cls(
            ledger_path(state_dir, key),
            federation=name,
            budget=PrivacyBudget.from_policy(policy.spec.privacy),
            budget_key=key,
        )

    @property
    def path(self) -> Path:
        return self._path

    @property
    def federation(self) -> str:
        return self._federation

    @property
    def budget_key(self) -> str:
        return self._budget_key

    @property
    def budget(self) -> PrivacyBudget:
        return self._budget

    # --- queries -------------------------------------------------------------------------

    def charges(self) -> tuple[RoundCharge, ...]:
        """Every recorded round, oldest first, across all federations sharing this budget."""
        return self._load().charges

    def history(self) -> list[Mechanism]:
        """The recorded rounds as Opacus's accountant history (merged as ``step`` merges)."""
        return opacus_history(self._load().history())

    def spent(self) -> float:
        """Epsilon spent so far: Opacus's figure for the whole recorded history."""
        return self._price(self._load().history())

    def remaining(self) -> float:
        return max(0.0, self._budget.target_epsilon - self.spent())

    def quote(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """The total epsilon after one more such round; records nothing."""
        mechanism = _check_mechanism(noise_multiplier, sample_rate, steps)
        return self._price([*self._load().history(), mechanism])

    def charged(self, *, round: int, run_id: str) -> RoundCharge | None:
        """The charge already recorded for this federation's ``round`` of ``run_id``, if any."""
        round_, run = _check_round(round, run_id)
        return self._load().find((self._federation, run, round_))

    def check(
        self,
        *,
        round: int,
        run_id: str,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
    ) -> float:
        """Price a round before training it; raise if it would exceed the budget.

        Returns the total epsilon after the round. A round already recorded with the same
        parameters (a retry) costs nothing more and always passes.

        Raises:
            BudgetExceededError: the round would take the total past the target epsilon.
            FederationError: the round was already recorded with other parameters.
        """
        mechanism = _check_mechanism(noise_multiplier, sample_rate, steps)
        round_, run = _check_round(round, run_id)
        state = self._load()
        existing = state.find((self._federation, run, round_))
        if existing is not None:
            self._same_or_conflict(existing, mechanism)
            return self._price(state.history())
        return self._affordable(state, mechanism, round=round_)[1]

    def summary(self) -> LedgerSummary:
        """Plain data for ``fedge-client budget``: each round's cost and the totals."""
        state = self._load()
        spent = self._price(state.history())
        rounds: list[RoundSummary] = []
        before = 0.0
        for charge in state.charges:
            rounds.append(
                RoundSummary(
                    federation=charge.federation,
                    run_id=charge.run_id,
                    round=charge.round,
                    noise_multiplier=charge.noise_multiplier,
                    sample_rate=charge.sample_rate,
                    steps=charge.steps,
                    epsilon_round=charge.epsilon_after - before,
                    epsilon_total=charge.epsilon_after,
                    target_epsilon=charge.target_epsilon,
                    recorded_at=charge.recorded_at,
                )
            )
            before = charge.epsilon_after
        return LedgerSummary(
            path=str(self._path),
            budget_key=self._budget_key,
            federation=self._federation,
            accountant=self._budget.accountant,
            delta=self._budget.delta,
            target_epsilon=self._budget.target_epsilon,
            spent=spent,
            remaining=max(0.0, self._budget.target_epsilon - spent),
            rounds=rounds,
        )

    # --- the one write -------------------------------------------------------------------

    def record(
        self,
        *,
        round: int,
        run_id: str,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
    ) -> RoundCharge:
        """Charge a trained round, durably, before its update leaves the machine.

        Idempotent per (federation, run id, round): a retry with the same parameters returns the
        existing charge and writes nothing.

        Raises:
            BudgetExceededError: the round would exceed the budget; the file is unchanged.
            FederationError: the round was recorded before with other parameters, or the file
                could not be written (the round must then not be sent).
        """
        mechanism = _check_mechanism(noise_multiplier, sample_rate, steps)
        round_, run = _check_round(round, run_id)
        with self._locked():
            state = self._load(force=True)
            existing = state.find((self._federation, run, round_))
            if existing is not None:
                self._same_or_conflict(existing, mechanism)
                return existing
            _, after = self._affordable(state, mechanism, round=round_)
            charge = RoundCharge(
                federation=self._federation,
                run_id=run,
                round=round_,
                noise_multiplier=mechanism[0],
                sample_rate=mechanism[1],
                steps=mechanism[2],
                epsilon_after=after,
                target_epsilon=self._budget.target_epsilon,
            )
            new_state = _State(
                self._budget_key,
                self._budget.accountant,
                self._budget.delta,
                (*state.charges, charge),
            )
            try:
                atomic_write_text(self._path, new_state.to_text(), mode=0o600)
            except OSError as exc:
                raise FederationError(
                    f"{self._path}: cannot write the privacy ledger ({exc.strerror or exc}); "
                    f"round {round_} is not charged and its update must not be sent"
                ) from exc
            self._state, self._seen, self._stamp = new_state, new_state.charges, None
        _log.info(
            "privacy ledger %s: round %d of run %s charged, epsilon %.4g of %g",
            self._budget_key,
            round_,
            run,
            after,
            self._budget.target_epsilon,
        )
        return charge

    # --- internals -----------------------------------------------------------------------

    def _empty(self) -> _State:
        return _State(self._budget_key, self._budget.accountant, self._budget.delta)

    def _price(self, history: Sequence[Mechanism]) -> float:
        return epsilon_for(history, delta=self._budget.delta, accountant=self._budget.accountant)

    def _affordable(
        self, state: _State, mechanism: Mechanism, *, round: int
    ) -> tuple[float, float]:
        """(spent, total after) for one more round, or the refusal."""
        history = state.history()
        spent = self._price(history)
        after = self._price([*history, mechanism])
        if after > self._budget.target_epsilon:
            raise BudgetExceededError(
                f"round {round} of {self._federation} would take epsilon from {spent:.4g} to "
                f"{after:.4g}, past the budget of {self._budget.target_epsilon:g} "
                f"(delta {self._budget.delta:g}, {self._budget.accountant} accountant); "
                f"the round is refused and {self._path} is unchanged",
                spent=spent,
                round_cost=after - spent,
                budget=self._budget.target_epsilon,
            )
        return spent, after

    def _same_or_conflict(self, existing: RoundCharge, mechanism: Mechanism) -> None:
        if existing.mechanism != mechanism:
            noise, rate, steps = existing.mechanism
            raise FederationError(
                f"{self._path}: round {existing.round} of run {existing.run_id!r} "
                f"({existing.federation}) is already charged with noise multiplier {noise:g}, "
                f"sample rate {rate:g} and {steps} steps; a retry must repeat them "
                f"(asked {mechanism[0]:g}, {mechanism[1]:g}, {mechanism[2]})"
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive lock for a read-decide-write, across processes sharing the file."""
        lock_path = self._path.with_name(f".{self._path.name}.lock")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise FederationError(
                f"{lock_path}: cannot lock the privacy ledger ({exc.strerror or exc})"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _load(self, *, force: bool = False) -> _State:
        """Read the file if it changed; raise a clear error rather than ever start from zero."""
        try:
            info = self._path.stat()
        except FileNotFoundError:
            info = None
        except OSError as exc:
            raise UsageError(
                f"{self._path}: cannot read the privacy ledger ({exc.strerror or exc})"
            ) from exc
        if info is None:
            if self._seen:
                raise UsageError(
                    f"{self._path}: the privacy ledger disappeared after recording "
                    f"{len(self._seen)} round(s); restore it before taking part again, "
                    "or the budget would start again from zero"
                )
            self._state, self._stamp = self._empty(), None
            return self._state
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if not force and stamp == self._stamp:
            return self._state
        try:
            state = _parse(self._path.read_bytes())
        except OSError as exc:
            raise UsageError(
                f"{self._path}: cannot read the privacy ledger ({exc.strerror or exc})"
            ) from exc
        except ValueError as exc:
            raise UsageError(
                f"{self._path}: {exc}; fix or restore the file (it is never reset, "
                "because that would reset the privacy budget)"
            ) from exc
        self._check_belongs(state)
        self._state, self._stamp, self._seen = state, stamp, state.charges
        return state

    def _check_belongs(self, state: _State) -> None:
        if state.budget_key != self._budget_key:
            raise UsageError(
                f"{self._path}: this ledger keeps the budget {state.budget_key!r}, not "
                f"{self._budget_key!r}; federations share a budget only when you give them "
                "the same budget key"
            )
        terms = (state.accountant, state.delta)
        wanted = (self._budget.accountant, self._budget.delta)
        if state.charges and terms != wanted:
            raise UsageError(
                f"{self._path}: rounds here were priced with the {state.accountant} accountant "
                f"at delta {state.delta:g}, but the policy asks for {wanted[0]} at delta "
                f"{wanted[1]:g}; changing them would re-price privacy already spent "
                "(keep the policy's privacy.accountant and privacy.delta, or use a new budget key)"
            )
        if self._seen and state.charges[: len(self._seen)] != self._seen:
            raise UsageError(
                f"{self._path}: the privacy ledger lost or changed rounds it had recorded "
                f"({len(self._seen)} before, {len(state.charges)} now); restore it before "
                "taking part again"
            )
