"""Fetching an artifact from presigned replica URLs, resuming broken downloads with HTTP Range.

The device holds no cloud credentials: it gets plain http(s) URLs (``file://`` for the demo's
local stores) and nothing else. The manifest comes first and must have the exact digest the
``desired`` document names, so a replica serving other bytes is skipped before a model file is
fetched. Each file is then downloaded into ``<name>.part`` beside its final place; a broken
connection keeps the bytes already received and the next attempt (or the next agent process, after
a crash) asks for the rest with ``Range: bytes=<n>-``. A finished file is checked against the
manifest's size and SHA-256 before it is renamed to its final name; a file that fails is deleted
and fetched from the next replica. The authoritative check (signature, every hash, no stray
files) is still :func:`fedge.artifact.verify_artifact`, run by the caller on the whole folder.

URLs are logged without their query string: a presigned URL's signature is a bearer credential
until it expires.
"""

from __future__ import annotations

import http.client
import os
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from edge_agent.protocol import DesiredState, Replica, sha256_hex
from fedge.artifact import hash_file
from fedge.atomic import atomic_write_bytes
from fedge.errors import ArtifactError, EdgeError, FedgeError
from fedge.logs import get_logger
from fedge.manifest import MANIFEST_NAME, SIGNATURE_NAME, FileEntry, Manifest

__all__ = [
    "Cancelled",
    "DownloadError",
    "Downloader",
    "fetch_bytes",
    "fetch_file",
    "redact_url",
]

log = get_logger(__name__)

_CHUNK = 64 * 1024
_SMALL_LIMIT = 4 << 20  # manifest.json and manifest.sig
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class DownloadError(EdgeError):
    """A replica could not deliver a file; ``transient`` failures may succeed on a retry."""

    def __init__(self, message: str, *, transient: bool) -> None:
        self.transient = transient
        super().__init__(message)


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


def fetch_bytes(url: str, *, timeout: float, limit: int = _SMALL_LIMIT) -> bytes:
    """A small object in one piece (the manifest and its signature)."""
    where = redact_url(url)
    if url.startswith("file://"):
        try:
            with _file_path(url).open("rb") as handle:
                data = handle.read(limit + 1)
        except OSError as exc:
            raise DownloadError(f"{where}: {exc.strerror}", transient=False) from exc
    else:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) checked by the protocol
                data = response.read(limit + 1)
        except urllib.error.HTTPError as exc:
            raise DownloadError(
                f"{where}: HTTP {exc.code}", transient=_is_transient_status(exc.code)
            ) from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            raise DownloadError(f"{where}: {_reason(exc)}", transient=True) from exc
    if len(data) > limit:
        raise DownloadError(f"{where}: larger than {limit} bytes", transient=False)
    return data


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
) -> int:
    written = 0
    # read1 returns what has arrived (one socket read), so progress and cancellation stay prompt.
    read: Callable[[int], bytes] = getattr(source, "read1", source.read)
    while chunk := read(_CHUNK):
        _check_cancel(cancel)
        sink.write(chunk)
        written += len(chunk)
        if written > limit:
            raise DownloadError("more bytes than the manifest lists", transient=False)
        if on_bytes is not None:
            on_bytes(len(chunk))
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
                _copy(source, sink, cancel=cancel, on_bytes=on_bytes, limit=size - have)
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
                _copy(response, sink, cancel=cancel, on_bytes=on_bytes, limit=size - have)
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
        *,
        timeout: float = 30.0,
        attempts_per_replica: int = 3,
        retry_pause: float = 0.5,
        cancel: threading.Event | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.timeout = timeout
        self.attempts = attempts_per_replica
        self.retry_pause = retry_pause
        self.cancel = cancel
        self.on_progress = on_progress
        self._done = 0
        self._total = 0

    def _progress(self, count: int) -> None:
        self._done += count
        if self.on_progress is not None:
            self.on_progress(self._done, self._total)

    def manifest(self, desired: DesiredState) -> tuple[Manifest, bytes, bytes, int]:
        """The manifest whose bytes hash to ``desired.manifest_sha256``, its signature, replica."""
        outcome = _Outcome()
        for index, replica in enumerate(desired.replicas):
            _check_cancel(self.cancel)
            try:
                body = fetch_bytes(replica.manifest, timeout=self.timeout)
                if sha256_hex(body) != desired.manifest_sha256:
                    raise ArtifactError(
                        f"sha256 {sha256_hex(body)[:12]}… differs from the deployment's "
                        f"{desired.manifest_sha256[:12]}… (replica {_name(replica, index)})",
                        file=MANIFEST_NAME,
                    )
                manifest = Manifest.from_bytes(body)
                if (manifest.name, manifest.version) != (desired.artifact, desired.version):
                    raise ArtifactError(
                        f"is {manifest.name} {manifest.version}, the deployment names "
                        f"{desired.artifact} {desired.version}",
                        file=MANIFEST_NAME,
                    )
                signature = fetch_bytes(replica.signature, timeout=self.timeout)
            except (DownloadError, ArtifactError) as exc:
                log.warning("replica %s: %s", _name(replica, index), exc)
                outcome.add(exc)
                continue
            return manifest, body, signature, index
        raise outcome.fail("no replica served the manifest")

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
            for attempt in range(1, self.attempts + 1):
                _check_cancel(self.cancel)
                try:
                    fetch_file(
                        url,
                        part,
                        size=entry.size,
                        timeout=self.timeout,
                        cancel=self.cancel,
                        on_bytes=self._progress,
                    )
                except DownloadError as exc:
                    log.warning("%s (attempt %d of %d)", exc, attempt, self.attempts)
                    outcome.add(exc)
                    if not exc.transient:
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
