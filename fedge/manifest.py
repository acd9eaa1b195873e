"""The artifact manifest: what an artifact holds, where it came from, and one digest for it all.

The manifest is plain data with a canonical JSON form (sorted keys, no spaces, UTF-8): the
signature covers those exact bytes, and the same files listed in any order give the same bytes,
so a digest means the same thing on every machine.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import PurePosixPath
from typing import Any

from fedge.bounded import InputError, load_json
from fedge.errors import ArtifactError

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA",
    "MAX_MANIFEST_BYTES",
    "MAX_SIGNATURE_BYTES",
    "SIGNATURE_NAME",
    "FileEntry",
    "Manifest",
    "Provenance",
    "check_relative_path",
]

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
MANIFEST_SCHEMA = "fedge.artifact/v1"
# A manifest lists files and a few labels: 4 MiB is thousands of entries. Every reader (the
# agent's download, verification, placement) applies this cap before parsing.
MAX_MANIFEST_BYTES = 4 << 20
MAX_SIGNATURE_BYTES = 64 << 10

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_relative_path(path: str) -> str:
    """Refuse paths that could escape the artifact folder or differ between operating systems."""
    pure = PurePosixPath(path)
    if (
        not path
        or "\\" in path
        or "\x00" in path
        or pure.is_absolute()
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise ArtifactError("not a safe relative path inside the artifact", file=path or "<empty>")
    return path


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        check_relative_path(self.path)
        if not _SHA256.match(self.sha256):
            raise ArtifactError("sha256 must be 64 lowercase hex digits", file=self.path)
        if self.size < 0:
            raise ArtifactError("size must not be negative", file=self.path)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where the model came from: the run, its rounds, and the privacy each client spent."""

    run_id: str | None = None
    rounds: int | None = None
    epsilon_per_client: Mapping[str, float] = field(default_factory=dict)
    delta: float | None = None
    base_model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "runId": self.run_id,
            "rounds": self.rounds,
            "epsilonPerClient": dict(sorted(self.epsilon_per_client.items())),
            "delta": self.delta,
            "baseModel": self.base_model,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provenance:
        eps = data.get("epsilonPerClient") or {}
        return cls(
            run_id=data.get("runId"),
            rounds=data.get("rounds"),
            epsilon_per_client={str(k): float(v) for k, v in dict(eps).items()},
            delta=data.get("delta"),
            base_model=data.get("baseModel"),
        )


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Manifest:
    """Name, version, format, files (kept sorted by path), provenance, labels and metrics."""

    name: str
    version: str
    format: str
    files: tuple[FileEntry, ...]
    created: str = field(default_factory=_now)
    provenance: Provenance = field(default_factory=Provenance)
    labels: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ArtifactError(
                f"name {self.name!r} must be lowercase letters, digits, '.', '_' or '-'",
                file=MANIFEST_NAME,
            )
        if not _VERSION.match(self.version):
            raise ArtifactError(
                f"version {self.version!r} is not a valid version", file=MANIFEST_NAME
            )
        ordered = tuple(sorted(self.files, key=lambda entry: entry.path))
        for first, second in pairwise(ordered):
            if first.path == second.path:
                raise ArtifactError("listed twice in the manifest", file=first.path)
        object.__setattr__(self, "files", ordered)

    @classmethod
    def create(
        cls,
        *,
        name: str,
        version: str,
        format: str,
        files: Iterable[FileEntry],
        created: str | None = None,
        provenance: Provenance | None = None,
        labels: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> Manifest:
        return cls(
            name=name,
            version=version,
            format=format,
            files=tuple(files),
            created=created or _now(),
            provenance=provenance or Provenance(),
            labels=dict(labels or {}),
            metrics=dict(metrics or {}),
        )

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files)

    @property
    def content_digest(self) -> str:
        """SHA-256 over the sorted (path, sha256, size) list: same files, same digest."""
        hasher = hashlib.sha256()
        for entry in self.files:
            hasher.update(f"{entry.path}\0{entry.sha256}\0{entry.size}\n".encode())
        return hasher.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": MANIFEST_SCHEMA,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "format": self.format,
            "files": [entry.to_dict() for entry in self.files],
            "contentDigest": self.content_digest,
            "provenance": self.provenance.to_dict(),
            "labels": dict(sorted(self.labels.items())),
            "metrics": dict(sorted(self.metrics.items())),
        }

    def canonical_bytes(self) -> bytes:
        """The exact bytes that are signed and written to ``manifest.json``."""
        return json.dumps(
            self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse ``manifest.json``; anything malformed raises :class:`ArtifactError`."""
        try:
            doc = load_json(data, source=MANIFEST_NAME, limit=MAX_MANIFEST_BYTES, max_depth=8)
            if not isinstance(doc, dict):
                raise TypeError("the manifest is not a JSON object")
            if doc.get("schema") != MANIFEST_SCHEMA:
                raise ValueError(f"schema is {doc.get('schema')!r}, expected {MANIFEST_SCHEMA!r}")
            manifest = cls(
                name=str(doc["name"]),
                version=str(doc["version"]),
                format=str(doc["format"]),
                created=str(doc["created"]),
                files=tuple(
                    FileEntry(path=str(f["path"]), sha256=str(f["sha256"]), size=int(f["size"]))
                    for f in doc["files"]
                ),
                provenance=Provenance.from_dict(doc.get("provenance") or {}),
                labels={str(k): str(v) for k, v in dict(doc.get("labels") or {}).items()},
                metrics={str(k): float(v) for k, v in dict(doc.get("metrics") or {}).items()},
            )
        except ArtifactError:
            raise
        except InputError as exc:
            raise ArtifactError(f"malformed manifest ({exc.reason})", file=MANIFEST_NAME) from exc
        except (UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
            # AttributeError: a field of the wrong JSON type (provenance: true), found by fuzzing
            raise ArtifactError(f"malformed manifest ({exc})", file=MANIFEST_NAME) from exc
        if doc.get("contentDigest") not in (None, manifest.content_digest):
            raise ArtifactError("contentDigest does not match the listed files", file=MANIFEST_NAME)
        return manifest
