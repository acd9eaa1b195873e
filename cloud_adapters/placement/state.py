"""What the reconciler knows about placed replicas, in one SQLite file.

Three tables: ``versions`` (one row per artifact version: its manifest digest, the preferred and
actual placement, ``ok`` / ``degraded`` / ``short``, whether it is deployed), ``replicas`` (one row
per version and target: ``partial`` until every object was read back, then ``intact``) and
``objects`` (each object's size and fingerprint as read back, so the next run spots a deleted or
changed object with one listing). A row is written before the upload it describes starts, so a
crash leaves ``partial`` rows that the next run finishes or cleans up, never a replica wrongly
believed intact. The state is a cache of the clouds: every run checks it against them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from fedge.errors import UsageError

__all__ = [
    "SCHEMA_VERSION",
    "ObjectRecord",
    "PlacementState",
    "ReplicaRecord",
    "ReplicaStatus",
    "VersionHealth",
    "VersionRecord",
]

SCHEMA_VERSION = 1
ReplicaStatus = Literal["partial", "intact"]
VersionHealth = Literal["ok", "degraded", "short"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    artifact TEXT NOT NULL,
    version TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    created TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    policy TEXT NOT NULL,
    preferred TEXT NOT NULL,
    actual TEXT NOT NULL,
    health TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    deployed INTEGER NOT NULL DEFAULT 0,
    updated TEXT NOT NULL,
    PRIMARY KEY (artifact, version)
);
CREATE TABLE IF NOT EXISTS replicas (
    artifact TEXT NOT NULL,
    version TEXT NOT NULL,
    target TEXT NOT NULL,
    provider TEXT NOT NULL,
    container TEXT NOT NULL,
    status TEXT NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (artifact, version, target)
);
CREATE TABLE IF NOT EXISTS objects (
    artifact TEXT NOT NULL,
    version TEXT NOT NULL,
    target TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (artifact, version, target, name)
);
"""


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class VersionRecord:
    artifact: str
    version: str
    manifest_digest: str
    created: str
    size_bytes: int
    policy: str
    preferred: tuple[str, ...]
    actual: tuple[str, ...]
    health: VersionHealth
    detail: str = ""
    deployed: bool = False
    updated: str = ""


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    artifact: str
    version: str
    target: str
    provider: str
    container: str
    status: ReplicaStatus
    updated: str = ""


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    name: str
    size: int
    fingerprint: str


class PlacementState:
    """The SQLite state file; use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Upload threads record their replicas as they go; one lock serialises them.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version not in (0, SCHEMA_VERSION):
                raise UsageError(
                    f"{self.path}: placement state schema {version} is newer than this fedge "
                    f"understands ({SCHEMA_VERSION})"
                )
            if version == 0:
                self._db.executescript(f"{_SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};")
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"{self.path}: not a placement state file ({exc})") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> PlacementState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, query: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return list(self._db.execute(query, args).fetchall())

    # -- versions -------------------------------------------------------------------------------

    def put_version(self, record: VersionRecord) -> None:
        with self._transaction():
            self._db.execute(
                """
                INSERT INTO versions (artifact, version, manifest_digest, created, size_bytes,
                    policy, preferred, actual, health, detail, deployed, updated)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
                    COALESCE((SELECT deployed FROM versions WHERE artifact = ? AND version = ?),
                             ?), ?)
                ON CONFLICT (artifact, version) DO UPDATE SET
                    manifest_digest = excluded.manifest_digest, created = excluded.created,
                    size_bytes = excluded.size_bytes, policy = excluded.policy,
                    preferred = excluded.preferred, actual = excluded.actual,
                    health = excluded.health, detail = excluded.detail,
                    updated = excluded.updated
                """,
                (
                    record.artifact,
                    record.version,
                    record.manifest_digest,
                    record.created,
                    record.size_bytes,
                    record.policy,
                    json.dumps(list(record.preferred)),
                    json.dumps(list(record.actual)),
                    record.health,
                    record.detail,
                    record.artifact,
                    record.version,
                    int(record.deployed),
                    _now(),
                ),
            )

    def version(self, artifact: str, version: str) -> VersionRecord | None:
        rows = self._rows(
            "SELECT * FROM versions WHERE artifact = ? AND version = ?", (artifact, version)
        )
        return self._version(rows[0]) if rows else None

    def versions(self, artifact: str | None = None) -> list[VersionRecord]:
        """Newest first (by the manifest's ``created``, then version) per artifact."""
        query = "SELECT * FROM versions"
        args: tuple[str, ...] = ()
        if artifact is not None:
            query += " WHERE artifact = ?"
            args = (artifact,)
        rows = self._rows(query + " ORDER BY artifact, created DESC, version DESC", args)
        return [self._version(row) for row in rows]

    def set_deployed(self, artifact: str, version: str, deployed: bool = True) -> None:
        """Mark a version as running on devices: its last intact replica is never removed."""
        with self._transaction():
            cursor = self._db.execute(
                "UPDATE versions SET deployed = ?, updated = ? WHERE artifact = ? AND version = ?",
                (int(deployed), _now(), artifact, version),
            )
        if cursor.rowcount == 0:
            raise UsageError(f"{artifact} {version} has not been placed; nothing to mark")

    def forget_version(self, artifact: str, version: str) -> None:
        with self._transaction():
            for table in ("objects", "replicas", "versions"):
                self._db.execute(
                    f"DELETE FROM {table} WHERE artifact = ? AND version = ?",  # noqa: S608
                    (artifact, version),
                )

    @staticmethod
    def _version(row: tuple[object, ...]) -> VersionRecord:
        (artifact, version, digest, created, size, policy, preferred, actual, health, detail,
         deployed, updated) = row  # fmt: skip
        return VersionRecord(
            artifact=str(artifact),
            version=str(version),
            manifest_digest=str(digest),
            created=str(created),
            size_bytes=int(str(size)),
            policy=str(policy),
            preferred=tuple(json.loads(str(preferred))),
            actual=tuple(json.loads(str(actual))),
            health=str(health),  # type: ignore[arg-type]
            detail=str(detail),
            deployed=bool(deployed),
            updated=str(updated),
        )

    # -- replicas and their objects -------------------------------------------------------------

    def put_replica(self, record: ReplicaRecord) -> None:
        with self._transaction():
            self._db.execute(
                """
                INSERT INTO replicas (artifact, version, target, provider, container, status,
                    updated)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (artifact, version, target) DO UPDATE SET
                    provider = excluded.provider, container = excluded.container,
                    status = excluded.status, updated = excluded.updated
                """,
                (
                    record.artifact,
                    record.version,
                    record.target,
                    record.provider,
                    record.container,
                    record.status,
                    _now(),
                ),
            )

    def replicas(self, artifact: str, version: str) -> list[ReplicaRecord]:
        rows = self._rows(
            "SELECT artifact, version, target, provider, container, status, updated "
            "FROM replicas WHERE artifact = ? AND version = ? ORDER BY target",
            (artifact, version),
        )
        return [
            ReplicaRecord(
                artifact=str(a), version=str(v), target=str(t), provider=str(p),
                container=str(c), status=str(s), updated=str(u),  # type: ignore[arg-type]
            )
            for a, v, t, p, c, s, u in rows
        ]  # fmt: skip

    def replica(self, artifact: str, version: str, target: str) -> ReplicaRecord | None:
        for record in self.replicas(artifact, version):
            if record.target == target:
                return record
        return None

    def forget_replica(self, artifact: str, version: str, target: str) -> None:
        with self._transaction():
            for table in ("objects", "replicas"):
                self._db.execute(
                    f"DELETE FROM {table} WHERE artifact = ? AND version = ? AND target = ?",  # noqa: S608
                    (artifact, version, target),
                )

    def put_objects(
        self, artifact: str, version: str, target: str, objects: Iterable[ObjectRecord]
    ) -> None:
        """Replace the recorded objects of one replica."""
        with self._transaction():
            self._db.execute(
                "DELETE FROM objects WHERE artifact = ? AND version = ? AND target = ?",
                (artifact, version, target),
            )
            self._db.executemany(
                "INSERT INTO objects (artifact, version, target, name, size, fingerprint) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(artifact, version, target, o.name, o.size, o.fingerprint) for o in objects],
            )

    def objects(self, artifact: str, version: str, target: str) -> dict[str, ObjectRecord]:
        rows = self._rows(
            "SELECT name, size, fingerprint FROM objects "
            "WHERE artifact = ? AND version = ? AND target = ?",
            (artifact, version, target),
        )
        return {
            str(n): ObjectRecord(name=str(n), size=int(str(s)), fingerprint=str(f))
            for n, s, f in rows
        }
