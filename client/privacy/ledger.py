"""The data holder's privacy ledger: what each round cost, what is left, and the refusal.

DESIGN.md section 5 promises that each data holder's budget is enforced on the holder's own
machine, so no coordinator can make a client spend more than its policy allows. This module is that
enforcement: a thin stateful class (:class:`PrivacyLedger`) that keeps the history Opacus itself
keeps, a list of ``(noise_multiplier, sample_rate, steps)`` triples, in one JSON file
(client/privacy/ledger_file.py), takes a lock to charge it, and prices it with the pure math of
client/privacy/accounting.py.

The epsilon reported is always Opacus's own ``get_epsilon(delta)`` for the whole recorded history,
recomputed rather than summed, because privacy loss does not add up round by round.

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
  :class:`~client.privacy.ledger_file.LedgerError` (a :class:`~fedge.errors.UsageError`) naming
  the file; nothing here rewrites a file it could not read. The only way to start over is
  :func:`reset_ledger` (``fedge-client start --reset-ledger``), which archives the old files and
  logs a warning.

Why the ledger checks itself, and how far that goes. A lower stored noise multiplier, fewer stored
steps, a removed charge or a deleted file would each lower the epsilon reported, and the next
round would be charged against a budget that looks unspent. So every read verifies the hash chain
and prices the stored charges again with Opacus, comparing each running epsilon with the stored
one (under PRV, whose pricing is a numerical convolution, only the total: the chain already covers
every earlier charge); a marker beside the ledger (``<key>.json.seen``) remembers how many charges
it had and the chain's head then, so a missing ledger or an older copy put back is refused too;
and temporary files a killed write left behind are removed, under the lock, when it is opened.
What this protects against is accidents and partial restores (a backup of the folder from last
week, a sync tool, a half-finished copy), an edit by hand that forgot something, and another local
process writing the file. It cannot stop the holder: the machine is the holder's, and someone who
edits the charges, recomputes the epsilons and the chain and rewrites the marker (or deletes the
whole ``privacy`` folder) is lying only to themselves. That is by design, since the budget
protects the holder's own data subjects and the holder is the one enforcing it; the outside check
is the coordinator's view of what each holder spent (``epsilonPerClient`` in the run's metrics and
the artifact manifest), which a holder cannot rewrite.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypedDict

from client.privacy.accounting import (
    Mechanism,
    PrivacyBudget,
    check_mechanism,
    epsilon_for,
    opacus_history,
)
from client.privacy.checks import check_name, check_round
from client.privacy.ledger_file import (
    LedgerError,
    LedgerState,
    RoundCharge,
    SeenMarker,
    StoredLedger,
    ledger_path,
    marker_path,
    read_ledger,
    read_marker,
    stale_temp_files,
    verify_ledger,
)
from client.privacy.ledger_lock import ledger_lock, lock_fd, remove_stale_temps, reset_ledger
from fedge.atomic import atomic_write_text
from fedge.errors import BudgetExceededError, FederationError
from fedge.logs import get_logger
from policies import FederationPolicy

__all__ = ["LedgerError", "LedgerSummary", "PrivacyLedger", "RoundSummary", "reset_ledger"]

_log = get_logger(__name__)
_RESET_HINT = (
    "restore the last copy fedge wrote, or pass --reset-ledger to fedge-client start to start "
    "the budget over (logged)"
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
        self._federation = check_name(federation, what="federation")
        self._budget_key = check_name(
            federation if budget_key is None else budget_key, what="budget key"
        )
        self._budget = budget
        self._seen: tuple[RoundCharge, ...] = ()
        self._stamp: tuple[int, int, int] | None = None
        self._state = self._empty()
        self._version = 2
        # (count, head) of a prefix whose running epsilons this process has priced already.
        self._verified: tuple[int, str] = (0, self._state.head)
        self._open()  # fail now, at start, not after the first round has trained

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
        mechanism = check_mechanism(noise_multiplier, sample_rate, steps)
        return self._price([*self._load().history(), mechanism])

    def charged(self, *, round: int, run_id: str) -> RoundCharge | None:
        """The charge already recorded for this federation's ``round`` of ``run_id``, if any."""
        round_, run = check_round(round, run_id)
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
        mechanism = check_mechanism(noise_multiplier, sample_rate, steps)
        round_, run = check_round(round, run_id)
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
        mechanism = check_mechanism(noise_multiplier, sample_rate, steps)
        round_, run = check_round(round, run_id)
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
            new_state = LedgerState(
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
            self._version = 2
            self._verified = (len(new_state.charges), new_state.head)
            self._write_marker(new_state)
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

    def _empty(self) -> LedgerState:
        return LedgerState(self._budget_key, self._budget.accountant, self._budget.delta)

    def _price(self, history: Sequence[Mechanism]) -> float:
        return epsilon_for(history, delta=self._budget.delta, accountant=self._budget.accountant)

    def _affordable(
        self, state: LedgerState, mechanism: Mechanism, *, round: int
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
        with ledger_lock(self._path):
            yield

    def _open(self) -> None:
        """First read: under the lock, clear a killed write's leftovers, upgrade a v1 file to the
        chained format, and bring the marker up to date; then verify as every read does."""
        marker = marker_path(self._path)
        if not (self._path.exists() or marker.exists() or stale_temp_files(self._path)):
            self._load()  # nothing here yet: a new budget (and nothing to lock or tidy)
            return
        try:
            lock = lock_fd(self._path)
        except OSError as exc:  # a read-only copy of a state folder can still be read
            _log.debug("%s: not locked for opening (%s)", self._path, exc)
            self._load()
            return
        try:
            remove_stale_temps(self._path)
            state = self._load(force=True)
            if self._version < 2 and state.charges:
                try:
                    atomic_write_text(self._path, state.to_text(), mode=0o600)
                except OSError as exc:
                    _log.warning("%s: cannot rewrite the v1 ledger chained (%s)", self._path, exc)
                else:
                    self._version, self._stamp = 2, None
                    _log.info(
                        "privacy ledger %s: a v1 ledger (%d charges, running epsilon checked) "
                        "was rewritten with a hash chain",
                        self._path,
                        len(state.charges),
                    )
            if state.charges:
                seen = read_marker(self._path)
                if seen is None or seen.charges < len(state.charges):
                    self._write_marker(state)
        finally:
            os.close(lock)

    def _write_marker(self, state: LedgerState) -> None:
        """Remember the ledger's charge count and head; only under the lock, after a write."""
        seen = SeenMarker(self._path.name, len(state.charges), state.head)
        try:
            atomic_write_text(marker_path(self._path), seen.to_text(), mode=0o600)
        except OSError as exc:
            # The charge is in the ledger, which is what counts; the marker only catches a
            # ledger lost or rolled back later, and the next write brings it up to date.
            _log.warning(
                "%s: cannot write the ledger's marker (%s); a lost ledger would not be noticed",
                marker_path(self._path),
                exc.strerror or exc,
            )

    def _load(self, *, force: bool = False) -> LedgerState:
        """Read the file if it changed; raise a clear error rather than ever start from zero."""
        try:
            info = self._path.stat()
        except FileNotFoundError:
            info = None
        except OSError as exc:
            raise LedgerError(
                f"cannot read the privacy ledger ({exc.strerror or exc})", path=self._path
            ) from exc
        stamp = None if info is None else (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp is not None and not force and stamp == self._stamp:
            return self._state
        # The marker before the ledger: a writer replaces the ledger first and the marker after,
        # so a ledger read after its marker never holds fewer charges than the marker says.
        seen = read_marker(self._path)
        stored = read_ledger(self._path)
        if stored is None:
            if seen is not None:
                raise LedgerError(
                    f"the privacy ledger is missing, but this state folder had one "
                    f"({seen.charges} charges, head {seen.head[:16]}, per "
                    f"{marker_path(self._path).name}); {_RESET_HINT}",
                    path=self._path,
                )
            if self._seen:
                raise LedgerError(
                    f"the privacy ledger is missing: it disappeared after recording "
                    f"{len(self._seen)} round(s); {_RESET_HINT}",
                    path=self._path,
                )
            self._state, self._stamp = self._empty(), None
            return self._state
        self._verify(stored)
        state = stored.state
        self._check_belongs(state)
        self._check_marker(stored, seen)
        # The stamp is the stat before the read: if the file changed in between, the next query
        # sees a stamp that differs and reads it again.
        self._state, self._stamp, self._seen = state, stamp, state.charges
        self._version = stored.version
        return state

    def _verify(self, stored: StoredLedger) -> None:
        state = stored.state
        count, head = self._verified
        known = count <= len(state.charges) and state.heads[count] == head
        every = stored.version < 2 or state.accountant == "rdp"
        verify_ledger(stored, source=self._path, trusted=count if known else 0, every=every)
        self._verified = (len(state.charges), state.head)

    def _check_marker(self, stored: StoredLedger, seen: SeenMarker | None) -> None:
        if seen is None:
            return
        state = stored.state
        if stored.version < 2:
            raise LedgerError(
                f"an unchained (v1) ledger of {len(state.charges)} charges is where this state "
                f"folder had a chained one of {seen.charges} (per {marker_path(self._path).name}):"
                f" an old copy was put back; {_RESET_HINT}",
                path=self._path,
            )
        if seen.charges > len(state.charges):
            raise LedgerError(
                f"the privacy ledger holds {len(state.charges)} charges, but this state folder "
                f"had recorded {seen.charges} (head {seen.head[:16]}, per "
                f"{marker_path(self._path).name}): an older copy was put back or charges were "
                f"removed; {_RESET_HINT}",
                path=self._path,
                index=len(state.charges),
            )
        if state.heads[seen.charges] != seen.head:
            raise LedgerError(
                f"the first {seen.charges} charges are not the ones this state folder recorded "
                f"(their hash is not head {seen.head[:16]} of {marker_path(self._path).name}): "
                f"the ledger was replaced by another one; {_RESET_HINT}",
                path=self._path,
            )

    def _check_belongs(self, state: LedgerState) -> None:
        if state.budget_key != self._budget_key:
            raise LedgerError(
                f"this ledger keeps the budget {state.budget_key!r}, not "
                f"{self._budget_key!r}; federations share a budget only when you give them "
                "the same budget key",
                path=self._path,
            )
        terms = (state.accountant, state.delta)
        wanted = (self._budget.accountant, self._budget.delta)
        if state.charges and terms != wanted:
            raise LedgerError(
                f"rounds here were priced with the {state.accountant} accountant "
                f"at delta {state.delta:g}, but the policy asks for {wanted[0]} at delta "
                f"{wanted[1]:g}; changing them would re-price privacy already spent "
                "(keep the policy's privacy.accountant and privacy.delta, or use a new budget key)",
                path=self._path,
            )
        if self._seen and state.charges[: len(self._seen)] != self._seen:
            raise LedgerError(
                f"the privacy ledger lost or changed rounds it had recorded "
                f"({len(self._seen)} before, {len(state.charges)} now); {_RESET_HINT}",
                path=self._path,
            )
