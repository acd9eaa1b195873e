"""One ``fedge place apply`` at a time per state file (the state's ``<state>.lock``).

Against local-folder stores (no server): a second apply is refused at once, with one line naming
the state file and the holder's PID, while another process or thread holds the lock, including
while the first apply is itself in the middle of uploading or of retention; it proceeds once the
lock is released (or the holder dies), and ``--wait`` waits for the holder instead of failing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from cloud_adapters.placement.local_artifact import load_local_artifact
from cloud_adapters.placement.lock import PlacementBusyError, StateLock, lock_path
from cloud_adapters.placement.reconciler import Reconciler
from cloud_adapters.placement.replicas import Event
from cloud_adapters.placement.state import PlacementState
from cloud_adapters.stores.factory import open_store
from cloud_adapters.stores.retry import RetryPolicy
from fedge.artifact import sign_artifact
from fedge.cli import new_app
from fedge.signing import KeyPair, generate_keypair
from policies.documents import CloudInventory, PlacementPolicy
from server.cli.place import place_app
from tests.conftest import Result
from tests.support.cloud_servers import (
    inventory_document,
    local_target,
    placement_document,
    write_yaml,
)

Cli = Callable[..., Result]
FAST = RetryPolicy(attempts=1, timeout_s=5.0)
ROOT = Path(__file__).resolve().parents[2]

# A second process that takes the real lock, says so, and keeps it until its stdin closes.
HOLDER = """
import sys
from cloud_adapters.placement.lock import StateLock
with StateLock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture(scope="module")
def fedge() -> typer.Typer:
    app = new_app("fedge", "test app")
    app.add_typer(place_app, name="place")
    return app


@dataclass
class Setup:
    inventory: Path
    policy: Path
    state: Path
    keypair: KeyPair
    tmp: Path

    def artifact(self, version: str, created: str) -> Path:
        folder = self.tmp / f"artifact-{version}"
        folder.mkdir()
        (folder / "model.onnx").write_bytes(os.urandom(4096) + version.encode())
        sign_artifact(
            folder, self.keypair, name="sentiment", version=version, format="onnx-int8",
            labels={"app": "sentiment"}, created=created,
        )  # fmt: skip
        return folder

    def args(self, artifact: Path, *extra: str) -> list[str]:
        return [
            "place", "apply", "--policy", str(self.policy), "--inventory", str(self.inventory),
            "--artifact", str(artifact), "--state", str(self.state), "--attempts", "1", *extra,
        ]  # fmt: skip

    def reconciler(self, state: PlacementState, on_event: Callable[[Event], None]) -> Reconciler:
        from policies import load_one

        return Reconciler(
            load_one(self.policy, PlacementPolicy),
            load_one(self.inventory, CloudInventory),
            state,
            open_store=lambda target: open_store(target, retry=FAST),
            on_event=on_event,
            parallel=False,
        )


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    inventory = write_yaml(
        tmp_path / "inventory.yaml",
        inventory_document(
            [
                local_target(tmp_path / "store-a", name="eu-a"),
                local_target(tmp_path / "store-b", name="eu-b"),
            ]
        ),
    )
    policy = write_yaml(
        tmp_path / "policy.yaml",
        placement_document(
            {
                "artifacts": {"matchLabels": {"app": "sentiment"}},
                "residency": ["eu"],
                "replicas": {"min": 2, "max": 2},
                "strategy": {"type": "ordered", "preference": ["eu-a", "eu-b"]},
                "retention": {"keepVersions": 1},
            }
        ),
    )
    return Setup(inventory, policy, tmp_path / "state" / "placement.sqlite", generate_keypair(),
                 tmp_path)  # fmt: skip


@pytest.fixture
def holder(setup: Setup) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the real lock on ``setup.state`` until the test lets go."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(setup.state)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "held"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def _release(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.close()
    assert process.wait(timeout=10) == 0


def test_a_second_apply_is_refused_while_another_process_holds_the_state(
    cli: Cli, fedge: typer.Typer, setup: Setup, holder: subprocess.Popen[str]
) -> None:
    artifact = setup.artifact("1.0", "2024-01-01T00:00:00Z")
    started = time.monotonic()
    refused = cli(fedge, *setup.args(artifact))
    assert time.monotonic() - started < 5, "the first attempt must not block"
    assert refused.code == 2, refused
    lines = refused.err.strip().splitlines()
    assert len(lines) == 1, refused.err
    assert lines[0].startswith("fedge: error: placement state ")
    assert str(setup.state) in lines[0]
    assert f"process {holder.pid}" in lines[0]
    assert "--wait" in lines[0]
    assert not (setup.tmp / "store-a").exists(), "nothing may be uploaded without the lock"

    _release(holder)
    applied = cli(fedge, *setup.args(artifact))
    assert applied.code == 0, applied
    assert "placement ok" in applied.out
    assert lock_path(setup.state).read_text() == "", "the PID is cleared on release"


def test_a_lock_held_by_a_process_that_died_is_free_again(
    cli: Cli, fedge: typer.Typer, setup: Setup, holder: subprocess.Popen[str]
) -> None:
    holder.kill()
    holder.wait(timeout=10)
    applied = cli(fedge, *setup.args(setup.artifact("1.0", "2024-01-01T00:00:00Z")))
    assert applied.code == 0, applied


def test_wait_lets_the_second_apply_run_once_the_first_is_done(
    cli: Cli, fedge: typer.Typer, setup: Setup, holder: subprocess.Popen[str]
) -> None:
    artifact = setup.artifact("1.0", "2024-01-01T00:00:00Z")
    timer = threading.Timer(0.6, _release, args=(holder,))
    timer.start()
    try:
        started = time.monotonic()
        applied = cli(fedge, *setup.args(artifact, "--wait", "20"))
        elapsed = time.monotonic() - started
    finally:
        timer.join()
    assert applied.code == 0, applied
    assert elapsed >= 0.5, "it must have waited for the holder"


def test_wait_gives_up_at_its_deadline_and_says_how_long_it_waited(
    cli: Cli, fedge: typer.Typer, setup: Setup, holder: subprocess.Popen[str]
) -> None:
    refused = cli(
        fedge, *setup.args(setup.artifact("1.0", "2024-01-01T00:00:00Z"), "--wait", "0.3")
    )
    assert refused.code == 2, refused
    assert "after waiting 0.3s" in refused.err
    assert f"process {holder.pid}" in refused.err


@pytest.mark.parametrize("value", ["-1", "inf", "nan", "1e30"])
def test_an_unusable_wait_is_one_line(
    cli: Cli, fedge: typer.Typer, setup: Setup, value: str
) -> None:
    result = cli(fedge, *setup.args(setup.artifact("1.0", "2024-01-01T00:00:00Z"), "--wait", value))
    assert result.code == 2, result
    assert "--wait must be between 0 and 86400 seconds" in result.err


def test_the_lock_is_held_through_uploads_and_retention(setup: Setup) -> None:
    """Two threads, two reconcilers, one state file: the race of the incident, now refused.

    Apply 1.0, then apply 2.0 whose retention removes 1.0 (keepVersions 1). From inside 2.0's own
    upload and its retention (its event callback), a second reconciler tries 1.0 again: it is
    refused both times, so it can neither report 1.0 intact while retention removes it, nor plan
    from a state the first run is changing.
    """
    v1 = load_local_artifact(setup.artifact("1.0", "2024-01-01T00:00:00Z"), trusted=[])
    v2 = load_local_artifact(setup.artifact("2.0", "2024-02-01T00:00:00Z"), trusted=[])
    refusals: dict[str, str] = {}

    def meanwhile(event: Event) -> None:
        if event.kind not in ("upload", "remove") or event.kind in refusals:
            return
        box: list[BaseException] = []

        def second() -> None:
            try:
                with PlacementState(setup.state) as other:
                    setup.reconciler(other, lambda _e: None).apply(v1)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                box.append(exc)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=10)
        assert box, f"a second apply ran during the first one's {event.kind}"
        assert isinstance(box[0], PlacementBusyError), box[0]
        assert box[0].pid == os.getpid()
        refusals[event.kind] = str(box[0])

    with PlacementState(setup.state) as state:
        setup.reconciler(state, lambda _e: None).apply(v1)
        report = setup.reconciler(state, meanwhile).apply(v2)
        assert set(refusals) == {"upload", "remove"}
        assert {(version, why.split(":")[0]) for version, _t, why in report.removed} == {
            ("1.0", "retention")
        }
        assert [record.version for record in state.versions("sentiment")] == ["2.0"]
        # Released afterwards: the next run (in this thread) takes the lock at once.
        again = setup.reconciler(state, lambda _e: None).apply(v2)
        assert again.health == "ok"
    assert str(setup.state) in refusals["remove"]


def test_two_locks_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    state = tmp_path / "placement.sqlite"
    with StateLock(state) as first:
        assert first.held
        assert lock_path(state).read_text().strip() == str(os.getpid())
        with pytest.raises(PlacementBusyError) as refused:
            StateLock(state).acquire()
        assert refused.value.state == state
        assert refused.value.exit_code == 2
    second = StateLock(state)
    second.acquire()
    assert second.held
    second.release()
    assert not second.held
