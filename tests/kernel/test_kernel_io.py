"""Atomic writes and log redaction."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from fedge.atomic import atomic_write_bytes
from fedge.logs import RedactingFilter, get_logger, register_secret


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new content", mode=0o600)
    assert target.read_bytes() == b"new content"
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The crash is simulated by making the final rename fail."""
    target = tmp_path / "ledger.json"
    atomic_write_bytes(target, b"precious")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"half")
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json"]


def test_registered_secrets_never_reach_a_log(caplog: pytest.LogCaptureFixture) -> None:
    register_secret("hunter2-very-secret")
    logger = get_logger("tests.redact")
    assert logger.name == "fedge.tests.redact"
    handler_filter = RedactingFilter()
    caplog.handler.addFilter(handler_filter)
    try:
        with caplog.at_level(logging.INFO, logger="fedge"):
            logger.info("connecting with password %s to %s", "hunter2-very-secret", "broker")
    finally:
        caplog.handler.removeFilter(handler_filter)
    assert caplog.messages == ["connecting with password *** to broker"]
