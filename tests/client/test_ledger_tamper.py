"""The privacy ledger refuses a file that was altered, cut short, rolled back or lost (issue 14).

Each attack here once lowered the spend the ledger reported and let the next round be charged
against a budget that looked unspent. Now each one must stop the ledger from opening, with an
error naming the file, and leave what is on disk byte for byte as it was: no new charge is written
on top of a ledger fedge does not trust. The prices are Opacus's own (no mocks).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from client.cli import app
from client.privacy.accounting import Mechanism, PrivacyBudget, epsilon_for
from client.privacy.ledger import PrivacyLedger, reset_ledger
from client.privacy.ledger_file import (
    LEDGER_SCHEMA_V1,
    LedgerError,
    LedgerState,
    RoundCharge,
    ledger_path,
    marker_path,
    read_ledger,
    read_marker,
    stale_temp_files,
)
from tests.conftest import EXAMPLES
from tests.support.privacy import DELTA

# Three rounds that spend 7.954 of a budget of 8, the figure in the report.
SPENT: list[Mechanism] = [(0.65, 0.02, 150), (0.65, 0.02, 150), (0.85, 0.02, 60)]
NEXT: Mechanism = (50.0, 0.001, 1)  # a round cheap enough to fit whatever is left


def _ledger(directory: Path, *, accountant: str = "rdp") -> PrivacyLedger:
    budget = PrivacyBudget(target_epsilon=8.0, delta=DELTA, accountant=accountant)  # type: ignore[arg-type]
    return PrivacyLedger(directory / "ledger.json", federation="sentiment-demo", budget=budget)


def _record(ledger: PrivacyLedger, number: int, mechanism: Mechanism) -> RoundCharge:
    noise, rate, steps = mechanism
    return ledger.record(
        round=number, run_id="run-1", noise_multiplier=noise, sample_rate=rate, steps=steps
    )


def _charged(directory: Path, rounds: list[Mechanism] = SPENT) -> PrivacyLedger:
    ledger = _ledger(directory)
    for number, mechanism in enumerate(rounds, start=1):
        _record(ledger, number, mechanism)
    return ledger


def _doc(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# --- the attacks ----------------------------------------------------------------------------


def _delete(path: Path) -> None:
    path.unlink()


def _remove_a_charge(path: Path) -> None:
    doc = _doc(path)
    del doc["charges"][1]
    _write(path, doc)


def _raise_the_noise(path: Path) -> None:
    doc = _doc(path)
    doc["charges"][1]["noiseMultiplier"] = 40.0
    _write(path, doc)


def _lower_the_steps(path: Path) -> None:
    doc = _doc(path)
    doc["charges"][2]["steps"] = 1
    _write(path, doc)


def _lower_the_running_epsilon(path: Path) -> None:
    doc = _doc(path)
    doc["charges"][2]["epsilonAfter"] = 0.106
    _write(path, doc)


def _reorder(path: Path) -> None:
    doc = _doc(path)
    doc["charges"][0], doc["charges"][2] = doc["charges"][2], doc["charges"][0]
    _write(path, doc)


def _cut_the_last_charge_and_rechain(path: Path) -> None:
    """A careful edit: the shorter ledger's chain and epsilons are all consistent again."""
    doc = _doc(path)
    charges = tuple(RoundCharge.from_dict(c) for c in doc["charges"][:-1])
    path.write_text(LedgerState(doc["budgetKey"], "rdp", DELTA, charges).to_text(), "utf-8")


def _raise_the_noise_and_rechain(path: Path) -> None:
    """The chain recomputed after the edit, the running epsilon not: Opacus disagrees."""
    doc = _doc(path)
    charges = [RoundCharge.from_dict(c) for c in doc["charges"]]
    first = charges[0]
    charges[0] = RoundCharge(**{**_fields(first), "noise_multiplier": 40.0})
    path.write_text(LedgerState(doc["budgetKey"], "rdp", DELTA, tuple(charges)).to_text(), "utf-8")


def _back_to_v1(path: Path) -> None:
    """The chain stripped: the file made to look like one an older fedge wrote."""
    doc = _doc(path)
    doc["schema"] = LEDGER_SCHEMA_V1
    del doc["head"]
    for charge in doc["charges"]:
        del charge["prev"]
    _write(path, doc)


def _fields(charge: RoundCharge) -> dict[str, Any]:
    return {f.name: getattr(charge, f.name) for f in fields(charge)}


ATTACKS: list[Any] = [
    pytest.param(_delete, r"is missing, but this state folder had one \(3 charges", id="delete"),
    pytest.param(
        _remove_a_charge, r"charges\[1\]\.prev is not the hash of charges\[0\]", id="remove"
    ),
    pytest.param(
        _raise_the_noise,
        r"charges\[1\] \(round 2 of run 'run-1', noise multiplier 40, .* stores a running epsilon",
        id="raise-noise",
    ),
    pytest.param(
        _lower_the_steps,
        r"head is not the hash of charges\[2\].*charges\[2\] .*1 steps\) stores",
        id="lower-steps",
    ),
    pytest.param(
        _lower_the_running_epsilon,
        r"head is not the hash.*stores a running epsilon of 0\.106, but Opacus prices",
        id="edit-epsilon",
    ),
    pytest.param(
        _reorder, r"charges\[0\]\.prev is not the hash of the ledger's header", id="order"
    ),
    pytest.param(
        _cut_the_last_charge_and_rechain,
        r"holds 2 charges, but this state folder had recorded 3",
        id="cut-and-rechain",
    ),
    pytest.param(
        _raise_the_noise_and_rechain,
        r"charges\[0\] \(round 1 .*noise multiplier 40.*Opacus prices charges\[0\.\.0\]",
        id="rechained-noise",
    ),
    pytest.param(_back_to_v1, r"an unchained \(v1\) ledger of 3 charges", id="downgrade"),
]


@pytest.mark.parametrize(("attack", "match"), ATTACKS)
def test_an_altered_or_lost_ledger_refuses_to_open_and_charges_nothing(
    tmp_path: Path, attack: Callable[[Path], None], match: str
) -> None:
    honest = _charged(tmp_path)
    spent = honest.spent()
    assert spent == pytest.approx(7.954, abs=0.01)
    attack(honest.path)
    before = _snapshot(tmp_path)

    with pytest.raises(LedgerError, match=match) as refused:
        _ledger(tmp_path)
    assert str(refused.value).startswith(f"{honest.path}: ")
    assert refused.value.path == str(honest.path)
    assert refused.value.exit_code == 2
    # The handle opened before the attack refuses to price or charge on it, too.
    with pytest.raises(LedgerError):
        honest.spent()
    with pytest.raises(LedgerError):
        _record(honest, 4, NEXT)
    assert _snapshot(tmp_path) == before


def test_the_error_names_the_charge_that_was_edited(tmp_path: Path) -> None:
    honest = _charged(tmp_path)
    _raise_the_noise(honest.path)
    with pytest.raises(LedgerError) as refused:
        _ledger(tmp_path)
    assert refused.value.index == 1
    # Both checks say so: the chain breaks after charges[1], and its epsilon is not Opacus's.
    assert "charges[2].prev is not the hash of charges[1]" in str(refused.value)
    priced = epsilon_for([SPENT[0], (40.0, *SPENT[1][1:])], delta=DELTA, accountant="rdp")
    assert f"prices charges[0..1] at {priced:.6g}" in str(refused.value)


def test_an_older_copy_put_back_is_refused(tmp_path: Path) -> None:
    ledger = _charged(tmp_path, SPENT[:2])
    old_copy = ledger.path.read_bytes()  # last week's backup
    _record(ledger, 3, SPENT[2])
    ledger.path.write_bytes(old_copy)  # a valid, chained ledger: only the marker can tell
    before = _snapshot(tmp_path)
    with pytest.raises(LedgerError, match="holds 2 charges, but this state folder had recorded 3"):
        _ledger(tmp_path)
    with pytest.raises(LedgerError):
        _record(ledger, 4, NEXT)
    assert _snapshot(tmp_path) == before


def test_another_ledger_of_the_same_length_in_its_place_is_refused(tmp_path: Path) -> None:
    first = tmp_path / "first"
    _charged(first, SPENT[:1])
    other = _charged(tmp_path / "other", [(3.0, 0.01, 10)])
    shutil.copyfile(other.path, first / "ledger.json")
    with pytest.raises(LedgerError, match="the first 1 charges are not the ones"):
        _ledger(first)


def test_a_corrupt_marker_is_refused_naming_the_marker(tmp_path: Path) -> None:
    ledger = _charged(tmp_path, SPENT[:1])
    marker_path(ledger.path).write_text("{}", encoding="utf-8")
    with pytest.raises(LedgerError, match="schema: missing") as refused:
        _ledger(tmp_path)
    assert refused.value.path == str(marker_path(ledger.path))


# --- what still works -----------------------------------------------------------------------


def test_an_honest_ledger_reopens_and_charges(tmp_path: Path) -> None:
    _charged(tmp_path)
    reopened = _ledger(tmp_path)
    charge = _record(reopened, 4, NEXT)
    history = [*SPENT, NEXT]
    assert charge.epsilon_after == epsilon_for(history, delta=DELTA, accountant="rdp")
    assert _ledger(tmp_path).spent() == charge.epsilon_after
    seen = _doc(marker_path(reopened.path))
    assert (seen["charges"], seen["head"]) == (4, _doc(reopened.path)["head"])


def test_a_prv_ledger_is_verified_by_its_total(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, accountant="prv")
    _record(ledger, 1, (1.0, 0.02, 20))
    _record(ledger, 2, (1.0, 0.02, 20))
    assert _ledger(tmp_path, accountant="prv").spent() == ledger.spent()
    doc = _doc(ledger.path)
    doc["charges"][1]["steps"] = 2
    _write(ledger.path, doc)
    with pytest.raises(LedgerError, match=r"charges\[1\] .*2 steps\) stores a running epsilon"):
        _ledger(tmp_path, accountant="prv")


def test_a_v1_ledger_is_checked_and_rewritten_chained_once(tmp_path: Path) -> None:
    _charged(tmp_path)
    path = tmp_path / "ledger.json"
    chained = path.read_bytes()
    _back_to_v1(path)
    marker_path(path).unlink()  # as an older fedge left its state folder: no marker
    v1 = path.read_bytes()

    reopened = _ledger(tmp_path)
    assert path.read_bytes() == chained  # the same charges, chained again
    assert _doc(marker_path(path))["charges"] == 3
    assert reopened.spent() == pytest.approx(7.954, abs=0.01)

    # An unchained file whose running epsilon does not add up is not taken as a v1 ledger.
    doc = json.loads(v1)
    doc["charges"][2]["steps"] = 1
    _write(path, doc)
    marker_path(path).unlink()
    tampered = path.read_bytes()
    with pytest.raises(LedgerError, match=r"charges\[2\] .*1 steps\) stores a running epsilon"):
        _ledger(tmp_path)
    assert path.read_bytes() == tampered
    assert not marker_path(path).exists()


def test_a_stale_temporary_file_is_removed_on_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = _charged(tmp_path, SPENT[:1])
    stale = tmp_path / ".ledger.json.k3x_9q0z.tmp"  # what fedge.atomic leaves when SIGKILLed
    stale_marker = tmp_path / ".ledger.json.seen.a1b2c3d4.tmp"
    kept = [tmp_path / ".ledger.json.tmp", tmp_path / ".other.json.k3x_9q0z.tmp"]
    for path in (stale, stale_marker, *kept):
        path.write_text('{"half": ', encoding="utf-8")
    before = ledger.path.read_bytes()
    with caplog.at_level(logging.INFO, logger="fedge"):
        _ledger(tmp_path)
    assert not stale.exists() and not stale_marker.exists()
    assert all(path.exists() for path in kept)  # not the exact pattern fedge.atomic uses
    assert ledger.path.read_bytes() == before
    assert any(
        "killed write" in r.getMessage() and str(stale) in r.getMessage() for r in caplog.records
    )


def test_the_cleanup_recognises_the_names_fedge_atomic_makes(tmp_path: Path) -> None:
    # fedge.atomic names its temporary with tempfile.mkstemp(prefix=".<name>.", suffix=".tmp").
    fd, name = tempfile.mkstemp(prefix=".ledger.json.", suffix=".tmp", dir=tmp_path)
    os.close(fd)
    fd, marker_name = tempfile.mkstemp(prefix=".ledger.json.seen.", suffix=".tmp", dir=tmp_path)
    os.close(fd)
    (tmp_path / "ledger.json").write_text("{}", encoding="utf-8")
    assert stale_temp_files(tmp_path / "ledger.json") == sorted([Path(name), Path(marker_name)])


def test_a_reader_never_mistakes_a_write_in_progress_for_a_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer replaces the ledger, then the marker. Another process that reads the two while
    # a round is charged must read them in the order that never shows a marker ahead of the
    # ledger, or it would call an honest ledger rolled back. The charge is made to land exactly
    # between the reader's two reads, whichever it reads first.
    writer = _charged(tmp_path, SPENT[:1])
    reader = _ledger(tmp_path)
    _record(writer, 2, SPENT[1])  # the reader's copy is now out of date: it reads both again
    armed = [True]

    def between(real: Callable[[Path], Any]) -> Callable[[Path], Any]:
        def read(path: Path) -> Any:
            result = real(path)
            if armed[0]:
                armed[0] = False
                _record(writer, 3, SPENT[2])
            return result

        return read

    # Both names as client/privacy/ledger.py looks them up, both the real readers.
    monkeypatch.setattr("client.privacy.ledger.read_marker", between(read_marker))
    monkeypatch.setattr("client.privacy.ledger.read_ledger", between(read_ledger))
    reader.spent()
    assert not armed[0]  # the charge did land between the reads
    assert len(reader.charges()) == 3


# --- starting over, on purpose --------------------------------------------------------------


def test_reset_archives_the_ledger_and_its_marker_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = _charged(tmp_path)
    _raise_the_noise(ledger.path)  # a ledger that no longer opens
    old, old_marker = ledger.path.read_bytes(), marker_path(ledger.path).read_bytes()
    with caplog.at_level(logging.WARNING, logger="fedge"):
        archived = reset_ledger(ledger.path)
    assert [p.name.split(".reset-")[0] for p in archived] == ["ledger.json", "ledger.json.seen"]
    assert [p.read_bytes() for p in archived] == [old, old_marker]
    assert not ledger.path.exists() and not marker_path(ledger.path).exists()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "starts again from zero" in warnings[0].getMessage()
    assert str(archived[0]) in warnings[0].getMessage()

    fresh = _ledger(tmp_path)
    assert fresh.spent() == 0.0
    _record(fresh, 1, SPENT[0])
    assert len(_ledger(tmp_path).charges()) == 1
    # A second reset in the same second does not overwrite the first archive.
    again = reset_ledger(ledger.path)
    assert len({*archived, *again}) == 4
    assert [p.read_bytes() for p in archived] == [old, old_marker]


def _policy(tmp_path: Path) -> Path:
    policy = tmp_path / "federation.yaml"
    text = (EXAMPLES / "federation.yaml").read_text(encoding="utf-8")
    # No such model folder: `start` stops right after the ledger, before any model is loaded.
    policy.write_text(text.replace("builtin:all-MiniLM-L6-v2", "./no-model"), encoding="utf-8")
    return policy


def _holder(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    policy, state = _policy(tmp_path), tmp_path / "state"
    ca = tmp_path / "ca.crt"
    ca.write_text("not read before the ledger", encoding="utf-8")
    budget = PrivacyBudget(8.0, DELTA)
    ledger = PrivacyLedger(
        ledger_path(state, "sentiment-demo"), federation="sentiment-demo", budget=budget
    )
    for number, mechanism in enumerate(SPENT, start=1):
        _record(ledger, number, mechanism)
    argv = ["start", "--data", str(tmp_path / "mine.tsv"), "--policy", str(policy)]
    argv += ["--state-dir", str(state), "--superlink", "127.0.0.1:9", "--ca", str(ca)]
    return state, ledger.path, argv


def test_start_refuses_a_state_folder_whose_ledger_is_gone(tmp_path: Path, cli: Any) -> None:
    state, path, argv = _holder(tmp_path)
    path.unlink()
    before = _snapshot(path.parent)
    result = cli(app, *argv)
    assert result.code == 2, result.err
    assert f"{path}: the privacy ledger is missing" in result.err
    assert "--reset-ledger" in result.err
    assert _snapshot(path.parent) == before
    budget = cli(app, "budget", "--policy", str(_policy(tmp_path)), "--state-dir", str(state))
    assert budget.code == 2 and "is missing" in budget.err


def test_start_with_reset_ledger_archives_and_starts_fresh(tmp_path: Path, cli: Any) -> None:
    state, path, argv = _holder(tmp_path)
    _lower_the_steps(path)
    assert cli(app, *argv).code == 2  # refused as it is
    old = path.read_bytes()
    result = cli(app, *argv, "--reset-ledger")
    # The reset happened; then start went on to the model, which this test left out.
    assert "no-model: model folder does not exist" in result.err
    assert result.code == 2
    warning = [line for line in result.err.splitlines() if " WARNING " in line]
    assert len(warning) == 1 and "reset on the holder's request" in warning[0]
    assert f"privacy ledger archived as {path}.reset-" in result.out
    archived = sorted(p for p in path.parent.iterdir() if ".reset-" in p.name)
    assert [p.name.split(".reset-")[0] for p in archived] == [
        "sentiment-demo.json",
        "sentiment-demo.json.seen",
    ]
    assert archived[0].read_bytes() == old
    assert not path.exists() and not marker_path(path).exists()
    fresh = PrivacyLedger(path, federation="sentiment-demo", budget=PrivacyBudget(8.0, DELTA))
    assert fresh.spent() == 0.0
    assert state.is_dir()


def test_reset_ledger_is_in_the_help(cli: Any) -> None:
    result = cli(app, "start", "--help")
    assert result.code == 0
    assert "--reset-ledger" in result.out
