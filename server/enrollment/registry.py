"""The coordinator's registry of data holders: who may join, with which key, and who said so.

Flower's SuperNode authentication (``flower-superlink --enable-supernode-auth``) admits a
SuperNode only when its EC public key was registered through the SuperLink's Control API. This
registry is fedge's side of that: one SQLite file in the coordinator's work directory holding

* **holders**: a name, a state (``pending`` until its key is registered, ``active``, ``revoked``
  for good), the OpenSSH public key and its ``SHA256:`` fingerprint (what ``ssh-keygen -lf``
  prints), and the node id the SuperLink gave that key;
* **tokens**: one-time, expiring enrollment tokens (their format is fedge/enroll_token.py). Only
  the SHA-256 of each token's 256-bit secret is stored, so a copy of the file lets nobody enroll;
* **audit**: an append-only log (SQLite triggers refuse to change or delete a row) of every
  change, with who made it.

The decisions (may this token be redeemed, may this name get a token) are the pure functions of
server/enrollment/rules.py; :class:`Registry` is the thin I/O around them. Writes run in ``BEGIN
IMMEDIATE`` transactions, so two requests racing with one token cannot both win, and the ``fedge
enroll`` commands may change the file while the enrollment service runs (WAL mode).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fedge.enroll_token import format_token, is_ca_sha256, new_secret
from fedge.errors import UsageError
from fedge.logs import get_logger
from server.enrollment.errors import (
    DuplicateKeyError,
    EnrollmentError,
    RevokedHolderError,
    UnknownHolderError,
    UnknownTokenError,
)
from server.enrollment.rules import (
    MAX_TTL,
    AuditEntry,
    Claim,
    Holder,
    IssuedToken,
    NodePublicKey,
    Purpose,
    TokenRecord,
    check_claimable,
    check_issuable,
    format_time,
    hash_secret,
    validate_name,
)

__all__ = ["DB_FILE", "SCHEMA_VERSION", "Registry"]

log = get_logger(__name__)

DB_FILE = "enrollment.sqlite"
SCHEMA_VERSION = 1


# ----------------------------------------------------------------------------------- storage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS holders (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('pending', 'active', 'revoked')),
    public_key TEXT,
    fingerprint TEXT UNIQUE,
    node_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL REFERENCES holders(name),
    purpose TEXT NOT NULL CHECK (purpose IN ('enroll', 'rotate')),
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL,
    superseded_at REAL
);
CREATE INDEX IF NOT EXISTS tokens_by_name ON tokens(name);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


def _holder(row: sqlite3.Row | None) -> Holder | None:
    if row is None:
        return None
    return Holder(
        name=row["name"],
        state=row["state"],
        public_key=row["public_key"],
        fingerprint=row["fingerprint"],
        node_id=int(row["node_id"]) if row["node_id"] is not None else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _token(row: sqlite3.Row | None) -> TokenRecord | None:
    if row is None:
        return None
    return TokenRecord(
        token_hash=row["token_hash"],
        name=row["name"],
        purpose=row["purpose"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        used_at=row["used_at"],
        superseded_at=row["superseded_at"],
    )


class Registry:
    """The SQLite registry in ``path``; every method is one short transaction of its own.

    SQLite stores integers as signed 64-bit, and Flower's node ids are unsigned 64-bit, so node
    ids are stored as text.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)
        self.clock = clock
        self._init()

    @classmethod
    def in_workdir(
        cls, workdir: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
    ) -> Registry:
        return cls(Path(workdir) / DB_FILE, clock=clock)

    # -- plumbing

    def _init(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # Created 0600 before SQLite writes a byte: it lists who may join the federation.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        with self._connect() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise UsageError(
                    f"{self.path}: enrollment registry schema {version} is newer than this "
                    f"fedge understands ({SCHEMA_VERSION})"
                )
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise UsageError(f"{self.path}: cannot open the enrollment registry: {exc}") from exc
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            yield db
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"{self.path}: enrollment registry error: {exc}") from exc
        finally:
            db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: readers go on, other writers wait."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _audit(
        self, db: sqlite3.Connection, *, actor: str, action: str, subject: str, detail: str = ""
    ) -> None:
        db.execute(
            "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
            (self.clock(), actor, action, subject, detail),
        )

    @staticmethod
    def _get_holder(db: sqlite3.Connection, name: str) -> Holder | None:
        return _holder(db.execute("SELECT * FROM holders WHERE name = ?", (name,)).fetchone())

    # -- reads

    def holder(self, name: str) -> Holder:
        with self._connect() as db:
            holder = self._get_holder(db, name)
        if holder is None:
            raise UnknownHolderError(f"no data holder named {name!r} in {self.path}")
        return holder

    def holder_by_fingerprint(self, fingerprint: str) -> Holder | None:
        """The holder whose current (or last, if revoked) key has ``fingerprint``, if any.

        For the node-status endpoint, which answers a key's own holder only: a key rotated
        away belongs to nobody any more.
        """
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM holders WHERE fingerprint = ?", (fingerprint,)
            ).fetchone()
        return _holder(row)

    def holders(self) -> list[Holder]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM holders ORDER BY name").fetchall()
        return [h for h in (_holder(r) for r in rows) if h is not None]

    def tokens(self, name: str | None = None) -> list[TokenRecord]:
        with self._connect() as db:
            if name is None:
                rows = db.execute("SELECT * FROM tokens ORDER BY rowid").fetchall()
            else:
                rows = db.execute(
                    "SELECT * FROM tokens WHERE name = ? ORDER BY rowid", (name,)
                ).fetchall()
        return [t for t in (_token(r) for r in rows) if t is not None]

    def audit(self, *, subject: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        """The audit log, oldest first; ``limit``: only the newest ``limit`` rows."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM audit WHERE (?1 IS NULL OR subject = ?1) ORDER BY seq DESC LIMIT ?2",
                (subject, -1 if limit is None else int(limit)),
            ).fetchall()
        return [
            AuditEntry(r["seq"], r["at"], r["actor"], r["action"], r["subject"], r["detail"])
            for r in reversed(rows)
        ]

    # -- the lifecycle

    def issue_token(
        self,
        name: str,
        *,
        ttl: float,
        ca_sha256: str,
        actor: str,
        purpose: Purpose = "enroll",
    ) -> IssuedToken:
        """A new one-time token for ``name`` (``pending`` is created on the first one).

        Earlier unused tokens of the same name stop working: only the newest one is valid.
        """
        validate_name(name)
        if not is_ca_sha256(ca_sha256):
            raise UsageError("ca_sha256: expected the 64 hex digits of the CA's SHA-256")
        if not 0 < ttl <= MAX_TTL:
            raise UsageError("--expires: a token lives between 1 second and 30 days")
        secret = new_secret()
        now = self.clock()
        with self._write() as db:
            holder = self._get_holder(db, name)
            check_issuable(holder, purpose)
            if holder is None:
                db.execute(
                    "INSERT INTO holders (name, state, created_at, updated_at) "
                    "VALUES (?, 'pending', ?, ?)",
                    (name, now, now),
                )
                self._audit(db, actor=actor, action="holder.created", subject=name)
            superseded = db.execute(
                "UPDATE tokens SET superseded_at = ? "
                "WHERE name = ? AND used_at IS NULL AND superseded_at IS NULL",
                (now, name),
            ).rowcount
            db.execute(
                "INSERT INTO tokens (token_hash, name, purpose, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (hash_secret(secret), name, purpose, now, now + ttl),
            )
            detail = f"{purpose} token, expires {format_time(now + ttl)}"
            if superseded:
                detail += f"; {superseded} earlier token(s) superseded"
            self._audit(db, actor=actor, action="token.issued", subject=name, detail=detail)
        return IssuedToken(format_token(secret, ca_sha256), name, purpose, now + ttl)

    def claim(self, secret: str, *, actor: str) -> Claim:
        """Redeem a token's secret: check it and mark it used, in one transaction.

        A refusal for a known token is audited (reuse and expiry say something about who holds
        the token); an unknown token is not, so that guessing cannot fill the log.
        """
        token_hash = hash_secret(secret)
        now = self.clock()
        refusal: EnrollmentError | None = None
        claim: Claim | None = None
        with self._write() as db:
            token = _token(
                db.execute("SELECT * FROM tokens WHERE token_hash = ?", (token_hash,)).fetchone()
            )
            holder = self._get_holder(db, token.name) if token is not None else None
            try:
                check_claimable(token, holder, now=now)
            except EnrollmentError as exc:
                refusal = exc
                if token is not None:
                    self._audit(
                        db,
                        actor=actor,
                        action="token.refused",
                        subject=token.name,
                        detail=exc.reason,
                    )
            if refusal is None and token is not None and holder is not None:
                db.execute("UPDATE tokens SET used_at = ? WHERE token_hash = ?", (now, token_hash))
                self._audit(db, actor=actor, action="token.used", subject=holder.name)
                claim = Claim(
                    token_hash=token_hash,
                    name=holder.name,
                    purpose=token.purpose,
                    previous_node_id=holder.node_id,
                    previous_fingerprint=holder.fingerprint,
                )
        if claim is None:
            raise refusal or UnknownTokenError("the coordinator does not know this token")
        return claim

    def release(self, claim: Claim, *, actor: str, reason: str) -> None:
        """Give a claimed token back: the SuperLink refused the key, not the data holder."""
        with self._write() as db:
            db.execute("UPDATE tokens SET used_at = NULL WHERE token_hash = ?", (claim.token_hash,))
            self._audit(db, actor=actor, action="token.released", subject=claim.name, detail=reason)

    def check_key_free(self, claim: Claim, fingerprint: str) -> None:
        """DuplicateKeyError if another holder (or a revoked one) already used this key."""
        with self._connect() as db:
            row = db.execute(
                "SELECT name FROM holders WHERE fingerprint = ?", (fingerprint,)
            ).fetchone()
        if row is not None and (row["name"] != claim.name or claim.purpose == "rotate"):
            raise DuplicateKeyError(
                f"public key {fingerprint} is already registered"
                + ("" if row["name"] == claim.name else " for another data holder")
                + "; make a new key pair"
            )

    def activate(self, claim: Claim, *, key: NodePublicKey, node_id: int, actor: str) -> Holder:
        """Record the key the SuperLink registered under ``node_id``; the holder is active.

        RevokedHolderError if the holder was revoked while its key was being registered (the
        caller then unregisters ``node_id``).
        """
        now = self.clock()
        with self._write() as db:
            holder = self._get_holder(db, claim.name)
            if holder is None or holder.state == "revoked":
                raise RevokedHolderError(f"data holder {claim.name} was revoked while it enrolled")
            db.execute(
                "UPDATE holders SET state = 'active', public_key = ?, fingerprint = ?, "
                "node_id = ?, updated_at = ? WHERE name = ?",
                (key.openssh, key.fingerprint, str(node_id), now, claim.name),
            )
            if claim.purpose == "rotate":
                action = "holder.rotated"
                detail = (
                    f"key {claim.previous_fingerprint} (node {claim.previous_node_id}) -> "
                    f"{key.fingerprint} (node {node_id})"
                )
            else:
                action, detail = "holder.enrolled", f"key {key.fingerprint}, node {node_id}"
            self._audit(db, actor=actor, action=action, subject=claim.name, detail=detail)
            updated = self._get_holder(db, claim.name)
        assert updated is not None  # noqa: S101 - written above
        return updated

    def revoke(self, name: str, *, actor: str, reason: str = "") -> Holder:
        """Mark ``name`` revoked for good and void its unused tokens; returns it as it was.

        The caller unregisters the returned holder's node from the SuperLink first, so the
        registry never says ``revoked`` while the SuperLink still admits the key.
        """
        now = self.clock()
        with self._write() as db:
            holder = self._get_holder(db, name)
            if holder is None:
                raise UnknownHolderError(f"no data holder named {name!r} in {self.path}")
            if holder.state == "revoked":
                raise RevokedHolderError(
                    f"data holder {name} was already revoked at {format_time(holder.updated_at)}"
                )
            db.execute(
                "UPDATE holders SET state = 'revoked', updated_at = ? WHERE name = ?", (now, name)
            )
            voided = db.execute(
                "UPDATE tokens SET superseded_at = ? "
                "WHERE name = ? AND used_at IS NULL AND superseded_at IS NULL",
                (now, name),
            ).rowcount
            detail = f"was {holder.state}" + (
                f", key {holder.fingerprint}, node {holder.node_id}" if holder.fingerprint else ""
            )
            if voided:
                detail += f"; {voided} unused token(s) voided"
            if reason:
                detail += f"; {reason}"
            self._audit(db, actor=actor, action="holder.revoked", subject=name, detail=detail)
        return holder

    def claims_in_flight(self, *, within: float) -> list[str]:
        """Holders whose token was claimed in the last ``within`` seconds and not yet recorded.

        Between a claim and :meth:`activate` (or :meth:`release`) the enrollment service has
        registered, or is registering, a key the registry does not name yet: ``fedge enroll
        sync`` must not take that node for an unknown one.
        """
        since = self.clock() - within
        with self._connect() as db:
            rows = db.execute(
                "SELECT DISTINCT holders.name FROM tokens JOIN holders USING (name) "
                "WHERE tokens.used_at IS NOT NULL AND tokens.used_at >= ? "
                "AND holders.updated_at < tokens.used_at AND holders.state != 'revoked' "
                "ORDER BY holders.name",
                (since,),
            ).fetchall()
        return [row["name"] for row in rows]

    def record(self, action: str, subject: str, *, actor: str, detail: str = "") -> None:
        """Append one audit row that changes no holder (what ``fedge enroll sync`` found or did
        on the SuperLink: an unknown node, a key it would not take back)."""
        with self._write() as db:
            self._audit(db, actor=actor, action=action, subject=subject, detail=detail)

    def set_node_id(self, name: str, node_id: int, *, actor: str, detail: str) -> None:
        """Record a new node id for an active holder's unchanged key (``fedge enroll sync``)."""
        with self._write() as db:
            db.execute(
                "UPDATE holders SET node_id = ?, updated_at = ? "
                "WHERE name = ? AND state = 'active'",
                (str(node_id), self.clock(), name),
            )
            self._audit(db, actor=actor, action="holder.reregistered", subject=name, detail=detail)
