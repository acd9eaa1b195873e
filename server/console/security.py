"""Who may use the console: one operator token, sessions, CSRF, Host and Origin checks, headers.

The console can stop runs and revoke holders, so every request must come from the operator:

* The operator token is made on first start (32 random bytes, ``<workdir>/.console/token``,
  mode 0600) and compared in constant time. A browser trades it once for a session cookie
  (``HttpOnly``, ``SameSite=Strict``, ``Secure`` under TLS); scripts send it as
  ``Authorization: Bearer``.
* Every state-changing request with a session cookie must carry that session's CSRF token in
  ``X-CSRF-Token`` (a page on another origin can make the browser send the cookie, never read
  the token). Bearer requests need none: a browser never adds that header by itself.
* ``Host`` must name this console (DNS rebinding), and an ``Origin``, when sent, must be this
  console's own.
* Responses carry a Content-Security-Policy without inline script, and refuse framing.

Everything here is pure ASGI middleware and small classes, so the same rules hold for the API,
the event stream and the static files.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from fedge.atomic import atomic_write_text
from fedge.bounded import InputError, read_capped_text
from fedge.errors import UsageError

__all__ = [
    "COOKIE",
    "CSP",
    "CSRF_HEADER",
    "Guard",
    "Sessions",
    "allowed_hosts",
    "load_or_make_token",
]

COOKIE = "fedge_console"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Paths anyone may load: the login page and what it needs, and the health probe.
PUBLIC_PATHS = frozenset(
    {"/login", "/api/login", "/static/login.js", "/static/console.css", "/healthz"}
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def load_or_make_token(folder: Path) -> tuple[str, bool]:
    """The operator token (and whether it was just made); stored 0600, never logged."""
    path = folder / "token"
    if path.exists():
        try:
            token = read_capped_text(path, limit=4096, what="the console token").strip()
        except InputError as exc:
            raise UsageError(f"console token {exc}") from exc
        if len(token) < 32:
            raise UsageError(f"{path}: not a console token (delete it to make a new one)")
        if path.stat().st_mode & 0o077:
            raise UsageError(f"{path}: readable by others; chmod 600 it (or delete it)")
        return token, False
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    atomic_write_text(path, token + "\n", mode=0o600)
    return token, True


@dataclass
class Session:
    csrf: str
    expires: float


class Sessions:
    """Server-side sessions: the cookie holds only a random id; forgetting it logs out."""

    def __init__(self, token: str, *, lifetime: float = SESSION_SECONDS) -> None:
        self._token = token
        self._lifetime = lifetime
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def token_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token.encode())

    def open(self) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), expires=time.time() + self._lifetime)
        with self._lock:
            now = time.time()
            self._sessions = {k: v for k, v in self._sessions.items() if v.expires > now}
            self._sessions[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            session = self._sessions.get(sid)
            if session is None or session.expires <= time.time():
                self._sessions.pop(sid, None)
                return None
            return session

    def close(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)


def _headers(scope: Scope) -> dict[str, str]:
    return {
        key.decode("latin-1").lower(): value.decode("latin-1")
        for key, value in scope.get("headers", [])
    }


def _cookie(headers: dict[str, str]) -> str | None:
    raw = headers.get("cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # noqa: BLE001 - http.cookies raises CookieError and others on junk
        return None
    morsel = jar.get(COOKIE)
    return None if morsel is None else morsel.value


@dataclass(frozen=True)
class Caller:
    """Who made a request: ``via`` is "session" or "token"; ``csrf`` for a session."""

    via: str
    sid: str | None = None
    csrf: str | None = None


class Guard:
    """ASGI middleware: Host/Origin checks, authentication, CSRF, security headers."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        sessions: Sessions,
        hosts: Iterable[str],
        origins: Iterable[str],
        tls: bool,
    ) -> None:
        self.app = app
        self.sessions = sessions
        self.hosts = frozenset(h.lower() for h in hosts)
        self.origins = frozenset(o.lower() for o in origins)
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        host = headers.get("host", "").lower()
        if host not in self.hosts:
            await _refuse(send, 421, "this console is not served under that Host name")
            return
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in self.origins:
            await _refuse(send, 403, "cross-origin requests are refused")
            return
        caller = self._caller(headers)
        if path not in PUBLIC_PATHS:
            if caller is None:
                if path.startswith("/api/") or method not in _SAFE_METHODS:
                    await _refuse(send, 401, "log in with the operator token first")
                else:
                    await _redirect(send, "/login")
                return
            if method not in _SAFE_METHODS and caller.via == "session":
                sent = headers.get(CSRF_HEADER, "")
                if caller.csrf is None or not hmac.compare_digest(sent, caller.csrf):
                    await _refuse(send, 403, "missing or wrong CSRF token")
                    return
        scope.setdefault("state", {})["caller"] = caller

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"),
                ]
                if self.tls:
                    extra.append((b"strict-transport-security", b"max-age=31536000"))
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _caller(self, headers: dict[str, str]) -> Caller | None:
        bearer = headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            if self.sessions.token_matches(bearer[7:].strip()):
                return Caller(via="token")
            return None
        sid = _cookie(headers)
        session = self.sessions.get(sid)
        if session is None:
            return None
        return Caller(via="session", sid=sid, csrf=session.csrf)

    def cookie(self, sid: str, *, clear: bool = False) -> str:
        """The ``Set-Cookie`` value for a session id (or one that clears it)."""
        parts = [f"{COOKIE}={'' if clear else sid}", "Path=/", "HttpOnly", "SameSite=Strict"]
        parts.append("Max-Age=0" if clear else f"Max-Age={SESSION_SECONDS}")
        if self.tls:
            parts.append("Secure")
        return "; ".join(parts)


async def _refuse(send: Send, status: int, message: str) -> None:
    body = ('{"error": "' + message.replace('"', "'") + '"}').encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"content-security-policy", CSP.encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Send, location: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [(b"location", location.encode()), (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b""})


def allowed_hosts(
    host: str, port: int, *, tls: bool, names: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """The ``Host`` values this console answers to, and the ``Origin`` values it accepts.

    A console on loopback answers to both 127.0.0.1 and localhost; ``names`` adds the names a
    console on another address is reached by (its certificate's names).
    """
    known = {host, *names}
    if host in ("127.0.0.1", "localhost"):
        known |= {"127.0.0.1", "localhost"}
    scheme = "https" if tls else "http"
    hosts = sorted(f"{name}:{port}" for name in known)
    origins = sorted(f"{scheme}://{name}:{port}" for name in known)
    return hosts, origins
