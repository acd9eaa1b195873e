"""The operator's side of the Flower Deployment Engine: submit a run, follow it, stop it.

A federation in production is a ``flower-superlink`` the operator runs and one
``flower-supernode`` per data holder (DESIGN.md section 4). The operator talks to the SuperLink's
Control API through Flower's own ``flwr`` command line, the supported client of that API, rather
than through Flower's internal Python modules, whose shape changes between releases. This module
wraps the three commands fedge needs and turns every way they can fail (binary missing, non-zero
exit, a JSON answer that says ``success: false``, or no JSON at all) into a
:class:`~fedge.errors.FederationError` naming the command.

``flwr`` keeps its connections in ``$FLWR_HOME/config.toml``; fedge writes a private one per
operator work directory (:func:`write_flwr_home`) and names its connection ``fedge`` on every
command. A ``flwr`` command pointed at a home without that file would fall back to Flower's
default ``local`` connection and start a background SuperLink of its own, so the commands here
refuse to run until the file exists.

Flower reports a run that *failed* with exit status 0 (``flwr run --stream`` included); the
run's status (``finished:completed``, ``finished:failed``, ``finished:stopped``) is the only
truth, and :func:`wait_for_run` is what reads it.

Two things ``flwr`` cannot tell apart are checked here first: :func:`check_superlink` opens a
TLS connection itself, so "nothing listens there" and "this CA does not verify that SuperLink"
become two different one-line errors instead of one raw ``flwr run`` failure. And the SuperLink
knows nothing of rounds, so the ServerApp leaves a small progress file per Flower run in the work
directory (:func:`write_progress`), which ``fedge train`` and ``fedge runs`` read back.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge.atomic import atomic_write_text
from fedge.errors import FederationError, UsageError
from fedge.flower_env import flower_environment
from fedge.tls import CertPaths

__all__ = [
    "COMPLETED",
    "CONNECTION",
    "PROGRESS_DIR",
    "RunStatus",
    "RunTimeoutError",
    "check_superlink",
    "flower_environment",
    "flwr_json",
    "follow_logs",
    "list_runs",
    "read_progress",
    "run_logs",
    "run_status",
    "stop_run",
    "submit_run",
    "superlink_command",
    "wait_for_run",
    "write_flwr_home",
    "write_progress",
]

CONNECTION = "fedge"
"""The name of the SuperLink connection fedge writes into ``$FLWR_HOME/config.toml``."""
COMPLETED = "finished:completed"
CONFIG_FILE = "config.toml"
PROGRESS_DIR = "flower-runs"
"""Folder of the work directory with one ``<flower run id>.json`` progress file per run."""

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_COMMAND_TIMEOUT = 120.0


def _toml_string(value: str) -> str:
    # A JSON string with ASCII escapes is a valid TOML basic string.
    return json.dumps(value, ensure_ascii=True)


def _toml_value(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    raise UsageError(
        f"run config: {key}: expected a string or a number, got {type(value).__name__}"
    )


def superlink_command(
    certs: CertPaths,
    *,
    host: str = "127.0.0.1",
    port: int = 9092,
    executable: str = "flower-superlink",
    supernode_auth: bool = False,
    database: str | os.PathLike[str] | None = None,
) -> list[str]:
    """``flower-superlink`` with TLS from ``fedge certs`` and no dependency installs at run time.

    ``supernode_auth``: admit only SuperNodes whose public key was registered (what
    ``fedge enroll`` automates). ``database``: keep the SuperLink's state, registered node keys
    included, in this SQLite file, so a restarted SuperLink still knows its enrolled nodes.
    """
    extra = ["--enable-supernode-auth"] if supernode_auth else []
    if database is not None:
        extra += ["--database", str(Path(database).resolve())]
    return [
        executable,
        "--ssl-ca-certfile",
        str(certs.ca_cert),
        "--ssl-certfile",
        str(certs.server_cert),
        "--ssl-keyfile",
        str(certs.server_key),
        "--host",
        host,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
        *extra,
    ]


def write_flwr_home(
    flwr_home: str | os.PathLike[str],
    *,
    address: str,
    root_certificates: str | os.PathLike[str],
) -> Path:
    """Write ``config.toml`` with the ``fedge`` connection (TLS, checked against the CA file).

    The CA path is stored absolute because ``flwr`` resolves it from wherever it runs.
    Returns the path of the file written.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"address: expected HOST:PORT of the SuperLink, got {address!r}")
    ca = Path(root_certificates).resolve()
    if not ca.is_file():
        raise UsageError(f"{ca}: the CA certificate for the SuperLink does not exist")
    text = "\n".join(
        [
            "[superlink]",
            f"default = {_toml_string(CONNECTION)}",
            "",
            f"[superlink.{CONNECTION}]",
            f"address = {_toml_string(address)}",
            f"root-certificates = {_toml_string(str(ca))}",
            "",
        ]
    )
    return atomic_write_text(Path(flwr_home) / CONFIG_FILE, text)


def _check_home(flwr_home: str | os.PathLike[str]) -> Path:
    home = Path(flwr_home)
    config = home / CONFIG_FILE
    try:
        text = config.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"{config}: no Flower connection file; write one with write_flwr_home() first"
        ) from exc
    if f"[superlink.{CONNECTION}]" not in text:
        raise UsageError(f"{config}: has no [superlink.{CONNECTION}] connection")
    return home


def _one_line(text: str) -> str:
    lines = (_ANSI.sub("", line).strip() for line in text.splitlines())
    return " | ".join(line for line in lines if line)


def _reason(message: object) -> str:
    """The error itself: ``flwr`` prefixes it with whatever it printed before failing."""
    lines = [_ANSI.sub("", line).strip() for line in str(message or "").splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else "no reason given"


def _json_payload(stdout: str) -> dict[str, Any] | None:
    """The JSON object ``flwr --format json`` printed (possibly after stray log lines)."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"^\s*\{", stdout, flags=re.MULTILINE):
        try:
            value, _ = decoder.raw_decode(stdout, match.end() - 1)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def flwr_json(
    args: Sequence[str],
    *,
    flwr_home: str | os.PathLike[str],
    flwr: str,
    timeout: float = _COMMAND_TIMEOUT,
    expect_json: bool = True,
) -> tuple[dict[str, Any], str]:
    """Run ``flwr ARGS``; return its JSON answer (empty without ``expect_json``) and stdout."""
    home = _check_home(flwr_home)
    env = flower_environment(home)
    shown = " ".join([Path(flwr).name, *args])
    executable = shutil.which(flwr, path=env["PATH"])
    if executable is None:
        raise FederationError(
            f"`{shown}`: the Flower command {flwr!r} was not found on PATH "
            "(install fedge[server], which brings flwr)"
        )
    try:
        # A session of its own: a terminal's Ctrl-C reaches fedge alone, as KeyboardInterrupt,
        # instead of also killing this child and looking like a failed `flwr` command.
        done = subprocess.run(
            [executable, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        raise FederationError(f"`{shown}` did not answer within {timeout:.0f} s") from exc
    except OSError as exc:
        raise FederationError(f"`{shown}` could not start: {exc}") from exc
    payload = _json_payload(done.stdout) if expect_json else {}
    if payload is not None and payload.get("success") is False:
        raise FederationError(f"`{shown}` failed: {_reason(payload.get('error-message'))}")
    if done.returncode != 0:
        detail = _one_line(done.stderr)[-500:] or _one_line(done.stdout)[-500:] or "no output"
        raise FederationError(f"`{shown}` exited with status {done.returncode}: {detail}")
    if payload is None:
        detail = _one_line(done.stdout)[-300:] or "nothing"
        raise FederationError(f"`{shown}` printed no JSON answer (got: {detail})")
    return payload, done.stdout


def submit_run(
    app_dir: str | os.PathLike[str],
    *,
    flwr_home: str | os.PathLike[str],
    run_config: Mapping[str, str | int | float] | None = None,
    flwr: str = "flwr",
    timeout: float = _COMMAND_TIMEOUT,
) -> int:
    """Submit the Flower app in ``app_dir`` to the SuperLink; return the run id at once.

    ``run_config`` overrides keys of the app's ``[tool.flwr.app.config]`` (Flower refuses
    unknown keys). It travels as a TOML file, not as ``key=value`` words, because a policy is
    multi-line YAML text that no command-line quoting carries intact.
    """
    folder = Path(app_dir).resolve()
    if not (folder / "pyproject.toml").is_file():
        raise UsageError(f"{folder}: not a Flower app folder (no pyproject.toml)")
    args = ["run", str(folder), CONNECTION, "--format", "json"]
    with tempfile.TemporaryDirectory(prefix="fedge-run-config-") as scratch:
        if run_config:
            lines = [f"{_toml_string(k)} = {_toml_value(k, v)}" for k, v in run_config.items()]
            config_file = Path(scratch) / "run-config.toml"
            atomic_write_text(config_file, "\n".join(lines) + "\n", mode=0o600)
            args += ["--run-config", str(config_file)]
        payload, _ = flwr_json(args, flwr_home=flwr_home, flwr=flwr, timeout=timeout)
    try:
        return int(str(payload["run-id"]))
    except (KeyError, ValueError) as exc:
        raise FederationError(f"`flwr run`: answer has no run id: {payload}") from exc


class RunTimeoutError(FederationError):
    """:func:`wait_for_run` gave up waiting; the run itself goes on until it is stopped."""


@dataclass(frozen=True)
class RunStatus:
    """A run as the SuperLink reports it: ``pending``, ``starting``, ``running``, ``finished:*``.

    ``started``: when it started running (or was submitted, if it never ran), as Flower wrote it.
    """

    run_id: int
    status: str
    details: str = ""
    started: str = ""

    @property
    def finished(self) -> bool:
        return self.status.startswith("finished")

    def __str__(self) -> str:
        return f"{self.status} ({self.details})" if self.details else self.status


def _details(value: object) -> str:
    text = str(value or "").strip()
    return "" if text in {"N/A", "None"} else text


def _runs(args: list[str], *, flwr_home: str | os.PathLike[str], flwr: str) -> list[RunStatus]:
    payload, _ = flwr_json(args, flwr_home=flwr_home, flwr=flwr)
    runs = payload.get("runs")
    if not isinstance(runs, list):
        raise FederationError(f"`flwr ls`: answer has no list of runs: {payload}")
    found = []
    for run in runs:
        if not isinstance(run, dict) or not str(run.get("run-id", "")).isdigit():
            continue
        started = _details(run.get("running-at")) or _details(run.get("pending-at"))
        found.append(
            RunStatus(
                run_id=int(str(run["run-id"])),
                status=str(run.get("status", "")),
                details=_details(run.get("status-details")),
                started=started,
            )
        )
    return found


def run_status(run_id: int, *, flwr_home: str | os.PathLike[str], flwr: str = "flwr") -> RunStatus:
    """The current status of ``run_id``; an unknown run is a FederationError."""
    args = ["ls", CONNECTION, "--run-id", str(run_id), "--format", "json"]
    for run in _runs(args, flwr_home=flwr_home, flwr=flwr):
        if run.run_id == run_id:
            return run
    raise FederationError(f"`flwr ls`: the SuperLink knows no run {run_id}")


def list_runs(*, flwr_home: str | os.PathLike[str], flwr: str = "flwr") -> list[RunStatus]:
    """Every run the SuperLink knows, oldest first (what ``flwr ls`` lists)."""
    runs = _runs(["ls", CONNECTION, "--format", "json"], flwr_home=flwr_home, flwr=flwr)
    return sorted(runs, key=lambda run: run.run_id)


def wait_for_run(
    run_id: int,
    *,
    flwr_home: str | os.PathLike[str],
    timeout: float,
    poll: float = 1.0,
    flwr: str = "flwr",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_poll: Callable[[RunStatus], None] | None = None,
) -> str:
    """Poll until ``run_id`` finished; return its status, or raise unless it completed.

    A failed or stopped run raises FederationError with Flower's status details; so does a run
    still going after ``timeout`` seconds (it is left running: :func:`stop_run` ends it).
    ``on_poll`` sees every status read (and may show progress between them).
    """
    deadline = clock() + timeout
    while True:
        status = run_status(run_id, flwr_home=flwr_home, flwr=flwr)
        if on_poll is not None:
            on_poll(status)
        if status.finished:
            if status.status != COMPLETED:
                raise FederationError(f"run {run_id} did not complete: {status}")
            return status.status
        if clock() >= deadline:
            raise RunTimeoutError(f"run {run_id} is still {status} after {timeout:.0f} s")
        sleep(poll)


def stop_run(run_id: int, *, flwr_home: str | os.PathLike[str], flwr: str = "flwr") -> None:
    """Ask the SuperLink to stop ``run_id`` (its ServerApp and the ClientApps of the run)."""
    flwr_json(["stop", str(run_id), CONNECTION, "--format", "json"], flwr_home=flwr_home, flwr=flwr)


def run_logs(run_id: int, *, flwr_home: str | os.PathLike[str], flwr: str = "flwr") -> str:
    """The ServerApp's log of ``run_id`` so far, as text (for a failure report)."""
    _, stdout = flwr_json(
        ["log", str(run_id), CONNECTION, "--show"],
        flwr_home=flwr_home,
        flwr=flwr,
        expect_json=False,
    )
    return _ANSI.sub("", stdout)


def follow_logs(
    run_id: int,
    *,
    flwr_home: str | os.PathLike[str],
    write: Callable[[str], None],
    flwr: str = "flwr",
) -> None:
    """Stream the ServerApp's log of ``run_id`` to ``write`` line by line until the run ends.

    ``flwr log --stream`` runs as a child; an interrupt stops the child with the caller.
    """
    home = _check_home(flwr_home)
    env = flower_environment(home)
    executable = shutil.which(flwr, path=env["PATH"])
    shown = f"{Path(flwr).name} log {run_id} {CONNECTION} --stream"
    if executable is None:
        raise FederationError(f"`{shown}`: the Flower command {flwr!r} was not found on PATH")
    with subprocess.Popen(
        [executable, "log", str(run_id), CONNECTION, "--stream"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as child:
        assert child.stdout is not None  # noqa: S101 - stdout=PIPE
        try:
            for line in child.stdout:
                write(_ANSI.sub("", line.rstrip("\n")))
        finally:
            if child.poll() is None:
                child.terminate()
        code = child.wait()
    if code != 0:
        raise FederationError(f"`{shown}` exited with status {code}")


def check_superlink(address: str, root_certificates: str | os.PathLike[str]) -> None:
    """Open a TLS connection to ``address`` with the CA; a UsageError names the flag at fault.

    ``--superlink`` when nothing listens there (or it does not resolve, or speak TLS), ``--ca``
    when the CA does not verify the certificate the SuperLink presents.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--superlink {address}: expected HOST:PORT")
    try:
        context = ssl.create_default_context(cafile=str(root_certificates))
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"--ca {root_certificates}: not a PEM CA certificate ({exc})") from exc
    try:
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=host.strip("[]")),
        ):
            return
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or str(exc)
        raise UsageError(
            f"--ca {root_certificates} does not verify the SuperLink's certificate at "
            f"{address} ({reason})"
        ) from exc
    except ssl.SSLError as exc:
        raise UsageError(
            f"--superlink {address}: something listens there but does not speak TLS "
            f"({exc.reason or exc})"
        ) from exc
    except ConnectionRefusedError as exc:
        message = f"--superlink {address}: nothing listens on {address} (connection refused)"
        raise UsageError(message) from exc
    except OSError as exc:
        raise UsageError(f"--superlink {address}: cannot connect ({exc})") from exc


def write_progress(
    workdir: str | os.PathLike[str], flower_run: int, progress: Mapping[str, Any]
) -> None:
    """The ServerApp's view of Flower run ``flower_run`` (state, rounds, holders), atomically."""
    body = {**progress, "flower-run": flower_run, "updated": time.time()}
    path = Path(workdir) / PROGRESS_DIR / f"{flower_run}.json"
    atomic_write_text(path, json.dumps(body, sort_keys=True) + "\n")


def read_progress(
    workdir: str | os.PathLike[str], *, flower_run: int | None = None
) -> dict[int, dict[str, Any]]:
    """The progress files of the work directory (or of one run) by Flower run id.

    A file that cannot be read or parsed is left out: it is being replaced, or is not fedge's.
    """
    found: dict[int, dict[str, Any]] = {}
    folder = Path(workdir) / PROGRESS_DIR
    pattern = "*.json" if flower_run is None else f"{flower_run}.json"
    for path in sorted(folder.glob(pattern)):
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(body, dict) and path.stem.isdigit():
            found[int(path.stem)] = body
    return found
