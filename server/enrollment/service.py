"""The coordinator's enrollment endpoint: where a data holder's key comes in to be admitted.

A data holder enrolls once, from its own machine: ``fedge-client enroll`` makes an EC key pair
there, sends the public half with its one-time token to this endpoint, and gets back what it needs
to join (the CA certificate, the SuperLink's address, the federation's public HE context when the
federation uses one). The :class:`Enroller` (server/enrollment/enroller.py) checks the token
against the registry (server/enrollment/registry.py) and registers the key with the SuperLink
(server/enrollment/control.py); ``fedge enroll revoke`` and ``fedge enroll sync``
(server/enrollment/sync.py) keep the SuperLink's node list and the registry in step afterwards.
The names those modules define are re-exported here, where the commands and the demo look.

The endpoint is HTTPS with the federation's server certificate (the SuperLink's), on the standard
library's HTTP server: three routes, JSON in and out. ``GET /v1/ca`` hands out the CA certificate
to anyone (it is public); the client trusts it only if its SHA-256 matches the pin inside the
token, and then talks to ``POST /v1/enroll`` over a connection verified against that CA. ``POST
/v1/status`` (fedge/node_status.py) tells an enrolled node, signed with its own key, whether the
coordinator still admits that key, so that ``fedge-client start`` can say it was revoked.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from fedge.bounded import InputError, load_json
from fedge.enroll_token import CA_PATH, ENROLL_PATH
from fedge.errors import FederationError, FedgeError, UsageError
from fedge.logs import get_logger
from fedge.node_status import STATUS_PATH
from server.enrollment.control import NodeControl, SuperLinkControl, revoke_holder
from server.enrollment.enroller import Enroller
from server.enrollment.errors import (
    DuplicateKeyError,
    DuplicateNameError,
    RevokedHolderError,
    TokenError,
)
from server.enrollment.sync import SyncReport, UnknownNode, reconcile, sync_nodes

__all__ = [
    "Enroller",
    "EnrollmentServer",
    "NodeControl",
    "SuperLinkControl",
    "SyncReport",
    "UnknownNode",
    "reconcile",
    "revoke_holder",
    "sync_nodes",
]

log = get_logger(__name__)

MAX_BODY = 64 * 1024

# ------------------------------------------------------------------------------- the server
#
# Bounded like every fedge endpoint: a listen backlog of BACKLOG, at most MAX_HANDLERS
# connections served at once (more wait in the backlog), a deadline of READ_TIMEOUT for each
# request (request line, headers and body together, TLS handshake included), a body cap. Every
# answer is JSON; every refusal closes the connection, and a refusal that leaves a body unread
# drains it for at most LINGER seconds first, so the client reads the answer, not a reset.

MAX_JSON_DEPTH = 8
BACKLOG = 128
MAX_HANDLERS = 32
SLOT_WAIT = 1.0  # a connection waits this long for a free handler, then is dropped
READ_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
LINGER = 1.0
_DRAIN_CAP = 4 * MAX_BODY

_STATUS: list[tuple[type[Exception], HTTPStatus]] = [
    (TokenError, HTTPStatus.FORBIDDEN),
    (RevokedHolderError, HTTPStatus.FORBIDDEN),
    (DuplicateKeyError, HTTPStatus.CONFLICT),
    (DuplicateNameError, HTTPStatus.CONFLICT),
    (UsageError, HTTPStatus.BAD_REQUEST),
    (FederationError, HTTPStatus.BAD_GATEWAY),
    (FedgeError, HTTPStatus.INTERNAL_SERVER_ERROR),
]


def _error_answer(exc: Exception) -> tuple[HTTPStatus, dict[str, str]]:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            reason = getattr(exc, "reason", None) or kind.__name__
            return status, {"error": str(reason), "message": str(exc)}
    log.exception("enrollment request failed")
    return HTTPStatus.INTERNAL_SERVER_ERROR, {
        "error": "internal",
        "message": "the enrollment service failed; see its log",
    }


class _Refused(Exception):  # noqa: N818 - an answer, not a failure
    """A request answered with an error before anything was done with it."""

    def __init__(self, status: HTTPStatus, message: str, *, unread: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.unread = unread  # the body (or some of it) is still on the connection


def _not_text(value: Any) -> str | None:
    """The first field (``name`` or ``a.b[2]``) holding a string that is not UTF-8-encodable
    (a lone surrogate from a ``\\ud800`` escape), or None."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return where or "body"
        elif isinstance(item, dict):
            for key, child in item.items():
                name = f"{where}.{key}" if where else str(key)
                if _not_text(key) is not None:
                    return where or "body"
                stack.append((name, child))
        elif isinstance(item, list):
            stack.extend((f"{where}[{index}]", child) for index, child in enumerate(item))
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = BACKLOG
    enroller: Enroller
    tls: ssl.SSLContext

    def __init__(self, address: tuple[str, int], handler: type[_Handler]) -> None:
        self._slots = threading.BoundedSemaphore(MAX_HANDLERS)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(timeout=SLOT_WAIT):
            log.warning(
                "enrollment: %d connections in progress; dropped one from %s",
                MAX_HANDLERS,
                client_address[0],
            )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gives up (a TLS handshake, a timeout, a reset) is not the server's problem.
        log.debug("connection from %s failed", client_address, exc_info=True)


class _DeadlineReader(io.RawIOBase):
    """Reads from the connection, each read bounded by what is left of the handler's deadline
    (so a client sending a byte every few seconds cannot hold a handler past it)."""

    def __init__(self, sock: socket.socket, handler: _Handler) -> None:
        super().__init__()
        self._sock = sock
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = READ_TIMEOUT
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # answer a malformed request line with headers too
    deadline = 0.0
    _unread = False
    _expects_continue = False

    def setup(self) -> None:
        # TLS in the worker thread, so that a slow handshake never stalls the accept loop.
        self.deadline = time.monotonic() + READ_TIMEOUT
        self.request.settimeout(READ_TIMEOUT)
        self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self))

    def handle_one_request(self) -> None:
        self.deadline = time.monotonic() + READ_TIMEOUT  # an idle keep-alive counts too
        self._expects_continue = False
        super().handle_one_request()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._close()

    def _close(self) -> None:
        """Half-close (the client reads the answer, then end of stream), drop what it still
        sends if a body was left unread, and close."""
        sock = self.connection
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)  # an SSLSocket drops its TLS state here
        if self._unread:
            end, drained = time.monotonic() + LINGER, 0
            while drained < _DRAIN_CAP and (left := end - time.monotonic()) > 0:
                try:
                    sock.settimeout(left)
                    chunk = sock.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                drained += len(chunk)
        sock.close()

    def handle_expect_100(self) -> bool:
        self._expects_continue = True  # sent once the body is known to be acceptable
        return True

    def log_message(self, format: str, *args: Any) -> None:
        # ascii(): a request line is the client's text, control characters included
        log.info("%s %s", self.address_string(), ascii(format % args)[1:-1])

    def log_error(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), ascii(format % args)[1:-1])

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (bad request line, headers too long or too
        many, unknown method), in JSON like the rest."""
        status = HTTPStatus(code)
        self._unread = True  # whatever the request carried is still on the connection
        self._answer(
            status,
            {"error": status.phrase.lower().replace(" ", "-"), "message": message or status.phrase},
        )

    def _answer(self, status: HTTPStatus, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.connection.settimeout(WRITE_TIMEOUT)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if status >= HTTPStatus.BAD_REQUEST or self.close_connection:
            self.send_header("Connection", "close")  # also sets close_connection
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, refused: _Refused) -> None:
        self._unread = self._unread or refused.unread
        error = "too-large" if refused.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE else None
        error = error or refused.status.phrase.lower().replace(" ", "-")
        self._answer(refused.status, {"error": error, "message": refused.message})

    def do_GET(self) -> None:
        if self.headers.get("Content-Length", "0").strip() != "0" or self.headers.get(
            "Transfer-Encoding"
        ):
            self._unread = True
            self.close_connection = True
        if self.path != CA_PATH:
            self._answer(HTTPStatus.NOT_FOUND, {"error": "not-found", "message": self.path})
            return
        self._answer(HTTPStatus.OK, {"ca_cert": self.server.enroller.ca_cert})

    def do_POST(self) -> None:
        try:
            if self.path not in (ENROLL_PATH, STATUS_PATH):
                raise _Refused(HTTPStatus.NOT_FOUND, self.path, unread=True)
            body = self._body()
        except _Refused as refused:
            self._refuse(refused)
            return
        try:
            enroller = self.server.enroller
            if self.path == STATUS_PATH:
                answer = enroller.status(body)
            else:
                answer = enroller.enroll(body, peer=self.client_address[0])
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON answer
            status, payload = _error_answer(exc)
            self._answer(status, payload)
            return
        self._answer(HTTPStatus.OK, answer)

    def _body(self) -> dict[str, Any]:
        """The request's JSON object, read only once its length is known to be acceptable."""
        if self.headers.get("Transfer-Encoding") is not None:
            raise _Refused(
                HTTPStatus.LENGTH_REQUIRED,
                "send the body with a Content-Length (Transfer-Encoding is not accepted)",
                unread=True,
            )
        raw = (self.headers.get("Content-Length") or "").strip()
        if not raw:
            raise _Refused(HTTPStatus.LENGTH_REQUIRED, "a POST needs a Content-Length", unread=True)
        if not (raw.isascii() and raw.isdigit()):
            raise _Refused(HTTPStatus.BAD_REQUEST, "Content-Length is not a number", unread=True)
        length = int(raw) if len(raw) <= 15 else MAX_BODY + 1
        if length > MAX_BODY:
            raise _Refused(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the body is {length} bytes, over the {MAX_BODY}-byte limit",
                unread=True,
            )
        if self._expects_continue:
            self.send_response_only(HTTPStatus.CONTINUE)
            self.end_headers()
        data = self.rfile.read(length)  # TimeoutError past the deadline: handled by the stdlib
        if len(data) < length:
            raise _Refused(HTTPStatus.BAD_REQUEST, "the body ended before its Content-Length")
        try:
            body = load_json(
                data, source="request body", max_depth=MAX_JSON_DEPTH, allow_constants=False
            )
        except InputError as exc:
            raise _Refused(HTTPStatus.BAD_REQUEST, str(exc)) from None
        if not isinstance(body, dict):
            raise _Refused(HTTPStatus.BAD_REQUEST, f"expected a JSON object of <= {MAX_BODY} B")
        field_name = _not_text(body)
        if field_name is not None:
            raise _Refused(
                HTTPStatus.BAD_REQUEST, f"{field_name}: not Unicode text (a lone surrogate)"
            )
        return body


class EnrollmentServer:
    """The HTTPS endpoint on ``host:port`` (port 0: a free one), served from a thread.

    ``certfile``/``keyfile``: the federation's server certificate (``fedge certs``), which the
    client checks against the CA that its token pins.
    """

    def __init__(
        self,
        enroller: Enroller,
        *,
        certfile: str | os.PathLike[str],
        keyfile: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(
                f"{certfile}: cannot load the server certificate and key: {exc}"
            ) from exc
        try:
            self._httpd = _Server((host, port), _Handler)
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        self._httpd.enroller = enroller
        self._httpd.tls = context
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        host, port = self._httpd.server_address[:2]
        shown = host.decode() if isinstance(host, bytes) else str(host)
        return f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"

    def start(self) -> EnrollmentServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.2},
                name="fedge-enroll",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        with contextlib.suppress(OSError):
            self._httpd.server_close()

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C in ``fedge enroll serve``)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def __enter__(self) -> EnrollmentServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
