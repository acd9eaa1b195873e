"""The data holder's privacy ledger, against Opacus's own accountants (no mocks).

The ledger's promise is DESIGN.md section 5: the budget is enforced on the holder's machine. These
tests hold it to the numbers Opacus computes, to refusing without touching the file, and to never
starting a budget again from zero. The pricing alone (no file) is tests/client/test_accounting.py.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from client.privacy.accounting import Mechanism, PrivacyBudget, epsilon_for, noise_for_budget
from client.privacy.ledger import PrivacyLedger
from client.privacy.ledger_file import (
    LEDGER_SCHEMA,
    LedgerError,
    LedgerState,
    RoundCharge,
    ledger_path,
    marker_path,
)
from fedge.errors import BudgetExceededError, FederationError, UsageError
from policies import FederationPolicy, load_one
from policies.common import Metadata
from tests.conftest import EXAMPLES, REPO
from tests.support.privacy import ACCOUNTANTS, DELTA, ROUNDS
from tests.support.privacy import watched as _watched


def _ledger(
    directory: Path,
    *,
    target: float = 8.0,
    accountant: str = "rdp",
    federation: str = "sentiment-demo",
    budget_key: str | None = None,
    name: str = "ledger.json",
) -> PrivacyLedger:
    budget = PrivacyBudget(target_epsilon=target, delta=DELTA, accountant=accountant)  # type: ignore[arg-type]
    return PrivacyLedger(
        directory / name, federation=federation, budget=budget, budget_key=budget_key
    )


def _record(ledger: PrivacyLedger, round: int, mechanism: Mechanism, *, run_id: str = "run-1"):
    noise, rate, steps = mechanism
    return ledger.record(
        round=round, run_id=run_id, noise_multiplier=noise, sample_rate=rate, steps=steps
    )


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# --- the numbers are Opacus's ---------------------------------------------------------------


@pytest.mark.parametrize(("name", "cls"), ACCOUNTANTS)
def test_the_ledger_reports_what_opacus_computes_for_the_same_history(tmp_path, name, cls):
    ledger = _ledger(tmp_path, target=50.0, accountant=name)
    for number, mechanism in enumerate(ROUNDS, start=1):
        charge = _record(ledger, number, mechanism)
        expected = _watched(cls, ROUNDS[:number]).get_epsilon(DELTA)
        assert charge.epsilon_after == pytest.approx(expected, rel=1e-12)
        assert ledger.spent() == pytest.approx(expected, rel=1e-12)
    assert ledger.history() == _watched(cls, ROUNDS).history
    if name == "rdp":
        # Set directly, unmerged, as Opacus's own history attribute: the same up to rounding.
        direct = RDPAccountant()
        direct.history = list(ROUNDS)
        assert ledger.spent() == pytest.approx(direct.get_epsilon(DELTA), rel=1e-9)


# --- refusing a round -----------------------------------------------------------------------


def test_a_round_over_budget_is_refused_and_the_file_is_byte_for_byte_unchanged(tmp_path):
    ledger = _ledger(tmp_path, target=1.3)
    _record(ledger, 1, (1.0, 0.01, 100))  # epsilon about 1.21
    before = ledger.path.read_bytes()
    spent = ledger.spent()
    greedy: dict[str, Any] = {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 300}
    quote = ledger.quote(**greedy)
    assert quote > 1.3

    with pytest.raises(BudgetExceededError) as refused:
        ledger.check(round=2, run_id="run-1", **greedy)
    error = refused.value
    assert isinstance(error, FederationError)  # a FedgeError the ClientApp turns into a reply
    assert error.spent == spent
    assert error.round_cost == pytest.approx(quote - spent)
    assert error.budget == 1.3
    assert "round 2" in str(error)
    assert str(ledger.path) in str(error)

    with pytest.raises(BudgetExceededError):
        ledger.record(round=2, run_id="run-1", **greedy)
    assert ledger.path.read_bytes() == before
    assert len(ledger.charges()) == 1
    assert ledger.spent() == spent
    assert _leftovers(tmp_path) == []

    # A cheaper round still fits, and the refusal did not block it.
    cheap: dict[str, Any] = {"noise_multiplier": 4.0, "sample_rate": 0.01, "steps": 10}
    assert ledger.check(round=2, run_id="run-1", **cheap) <= 1.3
    ledger.record(round=2, run_id="run-1", **cheap)
    assert len(ledger.charges()) == 2


def test_quote_and_check_record_nothing(tmp_path):
    ledger = _ledger(tmp_path)
    assert ledger.quote(noise_multiplier=1.0, sample_rate=0.01, steps=10) > 0
    assert ledger.check(round=1, run_id="r", noise_multiplier=1.0, sample_rate=0.01, steps=10) > 0
    assert not ledger.path.exists()
    assert ledger.spent() == 0.0


def test_a_lowered_target_is_enforced_on_rounds_already_spent(tmp_path):
    _record(_ledger(tmp_path, target=8.0), 1, (1.0, 0.01, 100))
    stricter = _ledger(tmp_path, target=1.0)  # the holder tightened the policy
    with pytest.raises(BudgetExceededError):
        stricter.check(round=2, run_id="run-1", noise_multiplier=50.0, sample_rate=0.01, steps=1)
    assert stricter.remaining() == 0.0


# --- persistence and crash safety -----------------------------------------------------------


def test_a_reopened_ledger_remembers_every_round(tmp_path):
    ledger = _ledger(tmp_path)
    for number, mechanism in enumerate(ROUNDS[:3], start=1):
        _record(ledger, number, mechanism)
    reopened = _ledger(tmp_path)
    assert reopened.charges() == ledger.charges()
    assert reopened.spent() == ledger.spent()
    assert reopened.summary() == ledger.summary()


def test_record_leaves_a_complete_private_file_and_no_temporary(tmp_path):
    ledger = _ledger(tmp_path)
    charge = _record(ledger, 1, (1.0, 0.01, 100))
    doc = json.loads(ledger.path.read_text(encoding="utf-8"))
    assert doc["schema"] == LEDGER_SCHEMA
    assert doc["budgetKey"] == "sentiment-demo"
    assert (doc["accountant"], doc["delta"]) == ("rdp", DELTA)
    assert [{k: v for k, v in c.items() if k != "prev"} for c in doc["charges"]] == [
        charge.to_dict()
    ]
    assert doc["head"] == LedgerState("sentiment-demo", "rdp", DELTA, (charge,)).head
    assert ledger.path.stat().st_mode & 0o777 == 0o600
    seen = json.loads(marker_path(ledger.path).read_text(encoding="utf-8"))
    assert (seen["charges"], seen["head"]) == (1, doc["head"])
    assert marker_path(ledger.path).stat().st_mode & 0o777 == 0o600
    assert _leftovers(tmp_path) == []


def test_a_crash_while_writing_keeps_the_old_ledger(tmp_path, monkeypatch):
    ledger = _ledger(tmp_path)
    _record(ledger, 1, (1.0, 0.01, 100))
    before = ledger.path.read_bytes()

    def no_space(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", no_space)
        with pytest.raises(FederationError, match="not charged and its update must not be sent"):
            _record(ledger, 2, (1.0, 0.01, 100))
    assert ledger.path.read_bytes() == before
    assert _leftovers(tmp_path) == []
    assert len(_ledger(tmp_path).charges()) == 1
    assert len(ledger.charges()) == 1
    _record(ledger, 2, (1.0, 0.01, 100))  # the retry after the crash goes through
    assert len(_ledger(tmp_path).charges()) == 2


def test_a_ledger_that_disappears_is_an_error_not_a_fresh_budget(tmp_path):
    ledger = _ledger(tmp_path)
    _record(ledger, 1, (1.0, 0.01, 100))
    ledger.path.unlink()
    with pytest.raises(LedgerError, match="is missing, but this state folder had one"):
        ledger.spent()
    with pytest.raises(LedgerError, match="is missing"):
        _record(ledger, 2, (1.0, 0.01, 100))
    assert not ledger.path.exists()
    marker_path(ledger.path).unlink()  # the marker gone too: the open handle still remembers
    with pytest.raises(LedgerError, match="disappeared after recording 1 round"):
        ledger.spent()


def test_two_handles_on_one_file_see_each_others_rounds(tmp_path):
    first = _ledger(tmp_path, target=1.3)  # one round of (1.0, 0.01, 100) fits, two do not
    second = _ledger(tmp_path, target=1.3)  # e.g. another run sharing the budget
    _record(first, 1, (1.0, 0.01, 100))
    assert second.spent() == first.spent()
    with pytest.raises(BudgetExceededError):
        _record(second, 1, (1.0, 0.01, 100), run_id="run-2")
    assert len(first.charges()) == 1


# --- retries --------------------------------------------------------------------------------


def test_a_retried_round_is_charged_once(tmp_path):
    ledger = _ledger(tmp_path, target=1.3)  # one such round fits, two do not
    round_one = (1.0, 0.01, 100)
    first = _record(ledger, 1, round_one)
    before = ledger.path.read_bytes()

    assert _record(ledger, 1, round_one) == first
    assert ledger.path.read_bytes() == before
    assert ledger.charged(round=1, run_id="run-1") == first
    assert ledger.charged(round=2, run_id="run-1") is None
    # The retry is free, so it passes the check a new round of the same size fails.
    retry: dict[str, Any] = {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 100}
    assert ledger.check(round=1, run_id="run-1", **retry) == ledger.spent()
    with pytest.raises(BudgetExceededError):
        ledger.check(round=2, run_id="run-1", **retry)


def test_a_retry_with_other_parameters_is_refused(tmp_path):
    ledger = _ledger(tmp_path)
    _record(ledger, 1, (1.0, 0.01, 100))
    before = ledger.path.read_bytes()
    with pytest.raises(FederationError, match="already charged"):
        _record(ledger, 1, (1.0, 0.01, 101))
    with pytest.raises(FederationError, match="already charged"):
        ledger.check(round=1, run_id="run-1", noise_multiplier=0.9, sample_rate=0.01, steps=100)
    assert ledger.path.read_bytes() == before


def test_the_same_round_number_in_another_run_is_a_new_charge(tmp_path):
    ledger = _ledger(tmp_path)
    _record(ledger, 1, (1.0, 0.01, 100), run_id="run-1")
    _record(ledger, 1, (1.0, 0.01, 100), run_id="run-2")
    assert len(ledger.charges()) == 2
    assert ledger.spent() == epsilon_for([(1.0, 0.01, 100)] * 2, delta=DELTA, accountant="rdp")


# --- corrupt and foreign files --------------------------------------------------------------


def _valid_doc() -> dict[str, Any]:
    """A chained ledger of one charge, as PrivacyLedger.record writes it (real Opacus epsilon)."""
    charge = RoundCharge(
        federation="sentiment-demo",
        run_id="run-1",
        round=1,
        noise_multiplier=1.0,
        sample_rate=0.01,
        steps=100,
        epsilon_after=epsilon_for([(1.0, 0.01, 100)], delta=DELTA, accountant="rdp"),
        target_epsilon=8.0,
        recorded_at="2025-01-01T00:00:00Z",
    )
    doc: dict[str, Any] = json.loads(
        LedgerState("sentiment-demo", "rdp", DELTA, (charge,)).to_text()
    )
    return doc


def test_the_valid_document_of_these_tests_opens(tmp_path):
    (tmp_path / "ledger.json").write_text(json.dumps(_valid_doc()), encoding="utf-8")
    assert len(_ledger(tmp_path).charges()) == 1


def _changed(**changes: Any) -> bytes:
    doc = _valid_doc()
    for key, value in changes.items():
        if key.startswith("charge_"):
            doc["charges"][0][key.removeprefix("charge_")] = value
        else:
            doc[key] = value
    return json.dumps(doc).encode()


def _without(key: str) -> bytes:
    doc = _valid_doc()
    del doc[key]
    return json.dumps(doc).encode()


def _twice() -> bytes:
    doc = _valid_doc()
    doc["charges"].append(dict(doc["charges"][0]))
    return json.dumps(doc).encode()


CORRUPT = [
    pytest.param(b"", "not valid JSON", id="empty"),
    pytest.param(b'{"schema": "fedge.ledger/v1", "char', "not valid JSON", id="truncated"),
    pytest.param(b"\xff\xfe\x00garbage", "not UTF-8", id="binary"),
    pytest.param(b"[]", "not a privacy ledger", id="array"),
    pytest.param(_changed(schema="fedge.artifact/v1"), "not a privacy ledger", id="foreign"),
    pytest.param(_changed(schema="fedge.ledger/v3"), "another fedge version", id="newer"),
    pytest.param(_without("delta"), "delta: missing", id="missing-field"),
    pytest.param(_changed(note="hi"), "note: unknown field", id="unknown-field"),
    pytest.param(_changed(charge_steps=0), r"charges\[0\]\.steps", id="zero-steps"),
    pytest.param(_changed(charge_round=True), r"charges\[0\]\.round", id="bool-round"),
    pytest.param(_changed(charges={}), "charges: must be a list", id="charges-not-list"),
    pytest.param(_changed(charge_epsilonAfter="NaN").replace(b'"NaN"', b"NaN"), "NaN", id="nan"),
    pytest.param(_changed(charge_prev="0" * 63), r"charges\[0\]\.prev", id="bad-prev"),
    pytest.param(_without("head"), "head: missing", id="no-head"),
    pytest.param(_twice(), "charged twice", id="duplicate-round"),
]


@pytest.mark.parametrize(("content", "match"), CORRUPT)
def test_a_corrupt_ledger_is_an_error_naming_the_file_and_is_never_reset(tmp_path, content, match):
    path = tmp_path / "ledger.json"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=match) as failed:
        _ledger(tmp_path)
    assert str(failed.value).startswith(f"{path}: ")
    assert failed.value.exit_code == 2
    assert path.read_bytes() == content


def test_a_ledger_too_big_to_be_one_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "ledger.json"
    with path.open("wb") as handle:
        handle.truncate(33 * 1024 * 1024)  # sparse: nothing is written, nothing should be read
    with pytest.raises(LedgerError, match="over the .* limit for a privacy ledger"):
        _ledger(tmp_path)
    assert path.stat().st_size == 33 * 1024 * 1024


def test_a_ledger_corrupted_while_open_is_not_overwritten(tmp_path):
    ledger = _ledger(tmp_path)
    _record(ledger, 1, (1.0, 0.01, 100))
    ledger.path.write_bytes(b"{oops")
    with pytest.raises(UsageError, match="not valid JSON"):
        _record(ledger, 2, (1.0, 0.01, 100))
    assert ledger.path.read_bytes() == b"{oops"


def test_a_ledger_that_lost_rounds_it_had_is_an_error(tmp_path):
    ledger = _ledger(tmp_path)
    _record(ledger, 1, (1.0, 0.01, 100))
    _record(ledger, 2, (1.0, 0.01, 100))
    doc = json.loads(ledger.path.read_text(encoding="utf-8"))
    doc["charges"] = doc["charges"][:1]  # e.g. an old backup copied over the live file
    ledger.path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(
        LedgerError, match="changed outside fedge, so it is not used: head is not the hash"
    ):
        ledger.spent()


def test_changing_accountant_or_delta_under_spent_rounds_is_refused(tmp_path):
    _record(_ledger(tmp_path, accountant="rdp"), 1, (1.0, 0.01, 100))
    with pytest.raises(UsageError, match="re-price"):
        _ledger(tmp_path, accountant="prv")
    with pytest.raises(UsageError, match="re-price"):
        PrivacyLedger(
            tmp_path / "ledger.json",
            federation="sentiment-demo",
            budget=PrivacyBudget(target_epsilon=8.0, delta=1e-6),
        )


# --- keying by federation -------------------------------------------------------------------


def _policy(name: str | None = None) -> FederationPolicy:
    policy = load_one(EXAMPLES / "federation.yaml", FederationPolicy)
    if name is None:
        return policy
    return policy.model_copy(update={"metadata": Metadata(name=name)})


def test_each_federation_gets_its_own_ledger_in_the_state_dir(tmp_path):
    policy = _policy()
    ledger = PrivacyLedger.for_policy(tmp_path, policy)
    assert ledger.path == tmp_path / "privacy" / "sentiment-demo.json"
    assert ledger.path == ledger_path(tmp_path, "sentiment-demo")
    assert ledger.budget == PrivacyBudget.from_policy(policy.spec.privacy)
    assert ledger.budget.target_epsilon == policy.spec.privacy.target_epsilon

    other = PrivacyLedger.for_policy(tmp_path, _policy("fraud-demo"))
    _record(ledger, 1, (1.0, 0.01, 100))
    assert other.spent() == 0.0
    assert other.path != ledger.path


def test_a_ledger_of_another_budget_is_refused(tmp_path):
    _record(_ledger(tmp_path, federation="sentiment-demo"), 1, (1.0, 0.01, 100))
    with pytest.raises(UsageError, match="keeps the budget 'sentiment-demo', not 'fraud-demo'"):
        _ledger(tmp_path, federation="fraud-demo")


def test_federations_share_a_budget_when_the_holder_says_so(tmp_path):
    sentiment = PrivacyLedger.for_policy(tmp_path, _policy(), budget_key="hospital")
    fraud = PrivacyLedger.for_policy(tmp_path, _policy("fraud-demo"), budget_key="hospital")
    assert sentiment.path == fraud.path == tmp_path / "privacy" / "hospital.json"
    _record(sentiment, 1, (1.0, 0.01, 100))
    _record(fraud, 1, (1.2, 0.02, 50))  # same run and round, other federation: a new charge
    assert [c.federation for c in fraud.charges()] == ["sentiment-demo", "fraud-demo"]
    combined = [(1.0, 0.01, 100), (1.2, 0.02, 50)]
    assert sentiment.spent() == epsilon_for(combined, delta=DELTA, accountant="rdp")


# --- inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("noise", "rate", "steps"),
    [
        (0.0, 0.01, 10),
        (-1.0, 0.01, 10),
        (math.nan, 0.01, 10),
        (math.inf, 0.01, 10),
        (True, 0.01, 10),
        (1.0, 0.0, 10),
        (1.0, 1.5, 10),
        (1.0, 0.01, 0),
        (1.0, 0.01, 2.5),
        (1.0, 0.01, True),
    ],
)
def test_a_mechanism_opacus_cannot_price_is_a_usage_error(tmp_path, noise, rate, steps):
    ledger = _ledger(tmp_path)
    with pytest.raises(UsageError):
        ledger.quote(noise_multiplier=noise, sample_rate=rate, steps=steps)
    with pytest.raises(UsageError):
        epsilon_for([(noise, rate, steps)], delta=DELTA, accountant="rdp")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"federation": "Not/A/Name"},
        {"federation": "ok", "budget_key": "../escape"},
    ],
)
def test_names_that_cannot_be_file_names_are_refused(tmp_path, kwargs):
    with pytest.raises(UsageError):
        PrivacyLedger(tmp_path / "l.json", budget=PrivacyBudget(8.0, DELTA), **kwargs)


@pytest.mark.parametrize(("round", "run_id"), [(-1, "run-1"), (True, "run-1"), (1, ""), (1, 7)])
def test_round_and_run_must_identify_a_round(tmp_path, round, run_id):
    ledger = _ledger(tmp_path)
    with pytest.raises(UsageError):
        ledger.record(round=round, run_id=run_id, noise_multiplier=1.0, sample_rate=0.01, steps=10)
    assert not ledger.path.exists()


# --- planning noise -------------------------------------------------------------------------


def test_noise_for_the_remaining_budget_lets_every_planned_round_through(tmp_path):
    ledger = _ledger(tmp_path, target=4.0)
    _record(ledger, 1, (1.0, 0.01, 100))
    sigma = noise_for_budget(
        target_epsilon=4.0,
        delta=DELTA,
        sample_rate=0.01,
        steps_per_round=50,
        rounds=3,
        history=ledger.history(),
        epsilon_tolerance=0.05,
    )
    for number in (2, 3, 4):
        _record(ledger, number, (sigma, 0.01, 50))
    assert 4.0 - 0.05 <= ledger.spent() <= 4.0


# --- what the CLI prints --------------------------------------------------------------------


def test_summary_is_plain_data_per_round_and_in_total(tmp_path):
    ledger = _ledger(tmp_path, target=8.0)
    for number, mechanism in enumerate(ROUNDS, start=1):
        _record(ledger, number, mechanism)
    summary = ledger.summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["spent"] == ledger.spent()
    assert summary["remaining"] == pytest.approx(8.0 - ledger.spent())
    assert [row["round"] for row in summary["rounds"]] == [1, 2, 3, 4]
    assert sum(row["epsilon_round"] for row in summary["rounds"]) == pytest.approx(summary["spent"])
    assert all(row["epsilon_round"] > 0 for row in summary["rounds"])
    assert summary["rounds"][-1]["epsilon_total"] == summary["spent"]


def test_reading_a_ledger_does_not_load_torch():
    code = "import sys, client.privacy.ledger; print(sorted(m for m in ('torch', 'opacus') if m in sys.modules))"
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]"


# --- properties -----------------------------------------------------------------------------

mechanisms = st.tuples(
    st.sampled_from([0.8, 1.0, 1.5, 3.0]),
    st.sampled_from([0.005, 0.01, 0.05]),
    st.integers(min_value=1, max_value=80),
)


@settings(max_examples=20, deadline=None)
@given(rounds=st.lists(mechanisms, min_size=1, max_size=5), target=st.floats(0.3, 6.0))
def test_spent_never_decreases_never_passes_the_budget_and_quote_is_the_charge(rounds, target):
    with tempfile.TemporaryDirectory() as directory:
        ledger = _ledger(Path(directory), target=target)
        spent = ledger.spent()
        for number, (noise, rate, steps) in enumerate(rounds, start=1):
            quote = ledger.quote(noise_multiplier=noise, sample_rate=rate, steps=steps)
            before = ledger.path.read_bytes() if ledger.path.exists() else None
            if quote <= target:
                charge = _record(ledger, number, (noise, rate, steps))
                assert charge.epsilon_after == quote
                assert ledger.spent() == quote
            else:
                with pytest.raises(BudgetExceededError):
                    _record(ledger, number, (noise, rate, steps))
                after = ledger.path.read_bytes() if ledger.path.exists() else None
                assert after == before
            now = ledger.spent()
            assert spent <= now <= target
            spent = now
        assert ledger.spent() == epsilon_for(ledger.history(), delta=DELTA, accountant="rdp")
