"""Fetching an artifact from presigned replica URLs, resuming broken downloads with HTTP Range.

The device holds no cloud credentials: it gets plain http(s) URLs (``file://`` for the demo's
local stores) and nothing else. The manifest and its signature come first (each with a small cap):
the manifest must have the exact digest the ``desired`` document names and a signature by a
trusted key, so nothing a replica, a ``desired`` document or a compromised device account says
about sizes and files is believed before the signer said it. Only then are the payload files
fetched, each capped at its signed size. Each file is downloaded into ``<name>.part`` beside its
final place; a broken connection keeps the bytes already received and the next attempt (or the
next agent process, after a crash) asks for the rest with ``Range: bytes=<n>-``. A finished file
is checked against the manifest's size and SHA-256 before it is renamed to its final name; a file
that fails is deleted and fetched from the next replica. The authoritative check (signature,
every hash, no stray files) is still :func:`fedge.artifact.verify_artifact`, run by the caller
on the whole folder.

Time is bounded as well as bytes: a replica gets ``replica_deadline`` seconds to deliver its
part before the next replica is tried (a replica that sends a byte every two seconds never trips
a socket timeout), and the whole deployment gets ``deployment_deadline``. A newer deployment
cancels the download between two reads.

URLs are logged without their query string: a presigned URL's signature is a bearer credential
until it expires.
"""

from __future__ import annotations

import http.client
import io
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from edge_agent.protocol import DesiredState, Replica, sha256_hex
from fedge.artifact import hash_file, verify_manifest
from fedge.atomic import atomic_write_bytes
from fedge.bounded import InputError, read_capped
from fedge.errors import ArtifactError, EdgeError, FedgeError
from fedge.logs import get_logger
from fedge.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_NAME,
    FileEntry,
    Manifest,
)
from fedge.signing import PublicKey

__all__ = [
    "Cancelled",
    "DownloadError",
    "DownloadLimits",
    "Downloader",
    "ReplicaTooSlowError",
    "fetch_bytes",
    "fetch_file",
    "redact_url",
]

log = get_logger(__name__)

_CHUNK = 64 * 1024
_SMALL_LIMIT = MAX_MANIFEST_BYTES
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class DownloadError(EdgeError):
    """A replica could not deliver a file; ``transient`` failures may succeed on a retry."""

    def __init__(self, message: str, *, transient: bool) -> None:
        self.transient = transient
        super().__init__(message)


class ReplicaTooSlowError(DownloadError):
    """A replica did not deliver within its deadline: move on to the next replica."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=True)


@dataclass(frozen=True)
class DownloadLimits:
    """How long and how much one deployment may take; every figure has a finite default.

    ``timeout`` bounds one socket read, ``replica_deadline`` one replica's delivery of the
    manifest or of one file, ``deployment_deadline`` the whole download with its retries, and
    ``max_artifact_bytes`` what the signed manifest may list in all.
    """

    timeout: float = 30.0
    replica_deadline: float = 600.0
    deployment_deadline: float = 3600.0
    max_artifact_bytes: int = 4 << 30


class Cancelled(EdgeError):  # noqa: N818 - a state, not a fault
    """The download was abandoned because a newer deployment arrived or the agent stops."""


def redact_url(url: str) -> str:
    """``scheme://host/path`` without the query string, which carries the presigned signature."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("download cancelled")


def _is_transient_status(status: int) -> bool:
    return status in (408, 425, 429) or status >= 500


def _file_path(url: str) -> Path:
    return Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))


def fetch_bytes(
    url: str,
    *,
    timeout: float,
    limit: int = _SMALL_LIMIT,
    until: float | None = None,
    cancel: threading.Event | None = None,
) -> bytes:
    """A small object in one piece (the manifest and its signature), capped in bytes and time."""
    where = redact_url(url)
    if url.startswith("file://"):
        try:
            data = read_capped(_file_path(url), limit=limit, what="a manifest or signature")
        except InputError as exc:
            raise DownloadError(f"{where}: {exc.reason}", transient=False) from exc
        return data
    sink = io.BytesIO()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) checked by the protocol
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise DownloadError(f"{where}: larger than {limit} bytes", transient=False)
            _copy(response, sink, cancel=cancel, on_bytes=None, limit=limit, until=until)
    except urllib.error.HTTPError as exc:
        raise DownloadError(
            f"{where}: HTTP {exc.code}", transient=_is_transient_status(exc.code)
        ) from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise DownloadError(f"{where}: {_reason(exc)}", transient=True) from exc
    except DownloadError as exc:
        if exc.transient:
            raise
        raise DownloadError(f"{where}: larger than {limit} bytes", transient=False) from exc
    return sink.getvalue()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _copy(
    source: IO[bytes],
    sink: IO[bytes],
    *,
    cancel: threading.Event | None,
    on_bytes: Callable[[int], None] | None,
    limit: int,
    until: float | None = None,
) -> int:
    written = 0
    # read1 returns what has arrived (one socket read), so progress, cancellation and the
    # deadline are checked between reads however slowly the bytes come.
    read: Callable[[int], bytes] = getattr(source, "read1", source.read)
    while chunk := read(min(_CHUNK, limit - written + 1)):
        _check_cancel(cancel)
        if len(chunk) > limit - written:
            raise DownloadError("more bytes than the manifest lists", transient=False)
        sink.write(chunk)
        written += len(chunk)
        if on_bytes is not None:
            on_bytes(len(chunk))
        if until is not None and time.monotonic() > until:
            sink.flush()
            raise ReplicaTooSlowError(
                f"still {limit - written} bytes short when the deadline passed"
            )
    sink.flush()
    return written


def fetch_file(
    url: str,
    part: Path,
    *,
    size: int,
    timeout: float,
    cancel: threading.Event | None = None,
    on_bytes: Callable[[int], None] | None = None,
    until: float | None = None,
) -> None:
    """Bring ``part`` up to ``size`` bytes from ``url``, keeping and extending what it holds.

    Raises :class:`DownloadError` when the connection breaks (the bytes so far stay on disk for
    the next call) or the server refuses; the caller decides whether to retry or move on.
    """
    where = redact_url(url)
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    if have == size:
        return
    part.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("file://"):
        try:
            with _file_path(url).open("rb") as source, part.open("ab") as sink:
                source.seek(have)
                _copy(
                    source, sink, cancel=cancel, on_bytes=on_bytes, limit=size - have, until=until
                )
        except OSError as exc:
            raise DownloadError(f"{where}: {exc.strerror}", transient=False) from exc
        return
    headers = {"Range": f"bytes={have}-"} if have else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) only here
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status = response.status
            if status == 206:
                match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
                if match is None or int(match.group(1)) != have:
                    part.unlink(missing_ok=True)  # a range we did not ask for: start over
                    raise DownloadError(f"{where}: unexpected Content-Range", transient=True)
                mode = "ab"
                log.info("resuming %s at byte %d of %d", where, have, size)
            else:
                have = 0  # the server ignored Range: the body is the whole file
                mode = "wb"
            with part.open(mode) as sink:
                _copy(
                    response,
                    sink,
                    cancel=cancel,
                    on_bytes=on_bytes,
                    limit=size - have,
                    until=until,
                )
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # our partial file is not a prefix of theirs
            part.unlink(missing_ok=True)
        raise DownloadError(
            f"{where}: HTTP {exc.code}", transient=exc.code == 416 or _is_transient_status(exc.code)
        ) from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise DownloadError(f"{where}: {_reason(exc)}", transient=True) from exc
    got = part.stat().st_size
    if got < size:
        # http.client returns a short body without complaint when the connection drops early.
        raise DownloadError(
            f"{where}: connection closed after {got} of {size} bytes", transient=True
        )


@dataclass
class _Outcome:
    """What went wrong on each replica, to decide between retrying later and giving up."""

    errors: list[str] = field(default_factory=list)
    transient: bool = False
    integrity: ArtifactError | None = None

    def add(self, exc: FedgeError) -> None:
        self.errors.append(str(exc))
        if isinstance(exc, DownloadError) and exc.transient:
            self.transient = True
        if isinstance(exc, ArtifactError):
            self.integrity = exc

    def fail(self, head: str) -> FedgeError:
        """Bad bytes everywhere is an integrity failure; otherwise a (maybe transient) fetch one."""
        if self.integrity is not None and not self.transient:
            return self.integrity
        last = self.errors[-1] if self.errors else "no replica listed"
        more = len(self.errors) - 1
        message = f"{head}: {last}" + (f" (and {more} more error(s))" if more > 0 else "")
        return DownloadError(message, transient=self.transient)


class Downloader:
    """Downloads one artifact into a staging folder from the first replica that serves it well."""

    def __init__(
        self,
        trusted: Sequence[PublicKey],
        *,
        limits: DownloadLimits | None = None,
        deadline: float | None = None,
        attempts_per_replica: int = 3,
        retry_pause: float = 0.5,
        cancel: threading.Event | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.trusted = tuple(trusted)
        self.limits = limits or DownloadLimits()
        # One clock for the whole deployment, across the installer's retries.
        self.deadline = (
            deadline if deadline is not None else time.monotonic() + self.limits.deployment_deadline
        )
        self.attempts = attempts_per_replica
        self.retry_pause = retry_pause
        self.cancel = cancel
        self.on_progress = on_progress
        self._done = 0
        self._total = 0

    @property
    def timeout(self) -> float:
        return self.limits.timeout

    def _progress(self, count: int) -> None:
        self._done += count
        if self.on_progress is not None:
            self.on_progress(self._done, self._total)

    def _until(self) -> float:
        """When the replica being asked now must have delivered; past the deployment's, give up."""
        now = time.monotonic()
        if now >= self.deadline:
            raise DownloadError(
                f"the deployment deadline of {self.limits.deployment_deadline:.0f} s passed",
                transient=False,
            )
        return min(self.deadline, now + self.limits.replica_deadline)

    def _socket_timeout(self) -> float:
        return max(0.1, min(self.limits.timeout, self.deadline - time.monotonic()))

    def manifest(self, desired: DesiredState) -> tuple[Manifest, bytes, bytes, int]:
        """The signed manifest whose bytes hash to ``desired.manifest_sha256``, and its replica.

        The signature is checked here, over the manifest's bytes, before a payload byte is asked
        for: sizes and file names are believed only once a trusted key has signed them.
        """
        outcome = _Outcome()
        for index, replica in enumerate(desired.replicas):
            _check_cancel(self.cancel)
            until = self._until()
            try:
                body = fetch_bytes(
                    replica.manifest,
                    timeout=self._socket_timeout(),
                    limit=MAX_MANIFEST_BYTES,
                    until=until,
                    cancel=self.cancel,
                )
                if sha256_hex(body) != desired.manifest_sha256:
                    raise ArtifactError(
                        f"sha256 {sha256_hex(body)[:12]}… differs from the deployment's "
                        f"{desired.manifest_sha256[:12]}… (replica {_name(replica, index)})",
                        file=MANIFEST_NAME,
                    )
                signature = fetch_bytes(
                    replica.signature,
                    timeout=self._socket_timeout(),
                    limit=MAX_SIGNATURE_BYTES,
                    until=until,
                    cancel=self.cancel,
                )
                manifest = verify_manifest(body, signature, self.trusted)
                if (manifest.name, manifest.version) != (desired.artifact, desired.version):
                    raise ArtifactError(
                        f"is {manifest.name} {manifest.version}, the deployment names "
                        f"{desired.artifact} {desired.version}",
                        file=MANIFEST_NAME,
                    )
                self._check_size(manifest)
            except (DownloadError, ArtifactError) as exc:
                log.warning("replica %s: %s", _name(replica, index), exc)
                outcome.add(exc)
                continue
            return manifest, body, signature, index
        raise outcome.fail("no replica served the manifest")

    def _check_size(self, manifest: Manifest) -> None:
        limit = self.limits.max_artifact_bytes
        if manifest.total_size > limit:
            raise ArtifactError(
                f"lists {manifest.total_size} bytes, over this device's limit of {limit}",
                file=MANIFEST_NAME,
            )

    def download(self, desired: DesiredState, staging: Path) -> Manifest:
        """Fill ``staging`` with the manifest, signature and every listed file; return the manifest.

        Files already complete in ``staging`` (from an earlier, interrupted run) are kept after
        their hash is checked, and partial ones are resumed.
        """
        manifest, body, signature, first = self.manifest(desired)
        staging.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(staging / MANIFEST_NAME, body)
        atomic_write_bytes(staging / SIGNATURE_NAME, signature)
        self._total = manifest.total_size
        self._done = 0
        order = [first] + [i for i in range(len(desired.replicas)) if i != first]
        pending = []
        for entry in manifest.files:
            final = staging / entry.path
            if final.is_file() and hash_file(final) == (entry.sha256, entry.size):
                self._progress(entry.size)
                continue
            final.unlink(missing_ok=True)
            part = _part_path(final)
            if part.exists():
                self._progress(min(part.stat().st_size, entry.size))
            pending.append(entry)
        _check_space(staging, self._total - self._done)
        for entry in pending:
            first = self._file(desired.replicas, order, entry, staging)
            order = [first] + [i for i in order if i != first]
        _remove_strays(staging, manifest)
        return manifest

    def _file(
        self, replicas: Sequence[Replica], order: list[int], entry: FileEntry, staging: Path
    ) -> int:
        final = staging / entry.path
        part = _part_path(final)
        outcome = _Outcome()
        for index in order:
            url = replicas[index].files.get(entry.path)
            if url is None:
                outcome.errors.append(f"replica {_name(replicas[index], index)} lacks {entry.path}")
                continue
            until = self._until()
            for attempt in range(1, self.attempts + 1):
                _check_cancel(self.cancel)
                try:
                    fetch_file(
                        url,
                        part,
                        size=entry.size,
                        timeout=self._socket_timeout(),
                        cancel=self.cancel,
                        on_bytes=self._progress,
                        until=until,
                    )
                except ReplicaTooSlowError as exc:
                    slow = ReplicaTooSlowError(
                        f"replica {_name(replicas[index], index)} too slow for {entry.path}: "
                        f"{exc}; trying the next replica"
                    )
                    log.warning("%s", slow)
                    outcome.add(slow)
                    break
                except DownloadError as exc:
                    log.warning("%s (attempt %d of %d)", exc, attempt, self.attempts)
                    outcome.add(exc)
                    if not exc.transient or time.monotonic() >= until:
                        break
                    if self.cancel is not None and self.cancel.wait(self.retry_pause * attempt):
                        raise Cancelled("download cancelled") from exc
                    continue
                digest, size = hash_file(part)
                if (digest, size) != (entry.sha256, entry.size):
                    part.unlink(missing_ok=True)
                    self._done -= size
                    problem = ArtifactError(
                        f"sha256 {digest[:12]}… does not match the manifest's "
                        f"{entry.sha256[:12]}… (replica {_name(replicas[index], index)})",
                        file=entry.path,
                    )
                    log.warning("%s", problem)
                    outcome.add(problem)
                    break
                os.replace(part, final)
                return index
        raise outcome.fail(f"no replica delivered {entry.path}")


def _check_space(staging: Path, needed: int) -> None:
    """Refuse up front what the disk cannot hold, instead of filling it and failing late."""
    try:
        free = shutil.disk_usage(staging).free
    except OSError:
        return
    if needed > free:
        raise DownloadError(
            f"the artifact needs {needed} more bytes, the disk has {free} free", transient=True
        )


def _part_path(final: Path) -> Path:
    return final.with_name(final.name + ".part")


def _remove_strays(staging: Path, manifest: Manifest) -> None:
    """Drop leftovers (``.part`` files of an older attempt) that verification would refuse."""
    wanted = {entry.path for entry in manifest.files} | {MANIFEST_NAME, SIGNATURE_NAME}
    for root, _dirs, files in os.walk(staging):
        for name in files:
            path = Path(root, name)
            if path.relative_to(staging).as_posix() not in wanted:
                path.unlink(missing_ok=True)


def _name(replica: Replica, index: int) -> str:
    return replica.target or f"#{index + 1}"
