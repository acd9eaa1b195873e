"""The local HTTP endpoint: classify text sent by programs on the same device.

It binds to 127.0.0.1 only (never a routable address: the device's data stays on the device) and
speaks small JSON::

    POST /v1/classify   {"text": "..."} or {"texts": ["...", ...]} ->
                        {"artifact", "version", "latencyMs", "predictions": [...]}
    GET  /v1/health     200 {"status": "ok", ...} once a model is served, else 503
    GET  /v1/status     the device's ``reported`` document

``POST`` needs ``Content-Type: application/json`` (415 otherwise: a web page cannot send that
without the browser asking first) and a ``Content-Length`` (411; chunked bodies are refused). Every
refusal is a 4xx with a one-line ``{"error": ...}``: 400 for a body that is not a JSON object of
UTF-8 text, nested more than :data:`MAX_JSON_DEPTH` deep, or whose text cannot be encoded as
UTF-8 (a lone surrogate such as ``"\\ud800"``), naming the field; 413 over :data:`MAX_BODY`;
421 for a ``Host`` other than 127.0.0.1 or localhost (DNS rebinding); 503 while no model is
installed yet, or when more requests wait than :class:`Limits` allows (with ``Retry-After``).

How it stays bounded, whatever the clients do (:class:`Limits` has the numbers):

* One event-loop thread accepts connections (listen backlog 256) and reads requests without
  blocking, until the headers and the whole ``Content-Length`` body are in; a request has
  ``request_timeout`` to arrive whole, or the connection gets 408 and is closed. A client that
  sends half a header line and waits costs a buffer, not a thread.
* A fixed pool of ``workers`` threads answers complete requests from a bounded queue; beyond it
  (and beyond ``max_buffered`` bytes of bodies held at once) new requests get 503. At most
  ``max_connections`` are open; past that, new ones wait in the kernel's backlog.
* Refusals are answered before any more of the body is read, then the connection is closed
  gracefully (the unread rest is drained for at most ``linger`` seconds), so the client reads the
  answer instead of a reset. Nothing a client sends reaches the log as a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import io
import json
import queue
import re
import selectors
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

from edge_agent.serving import Classifier, NoModelError
from fedge.bounded import InputError, load_json
from fedge.errors import EdgeError
from fedge.logs import get_logger

__all__ = ["LOOPBACK", "MAX_BODY", "MAX_JSON_DEPTH", "MAX_TEXTS", "HttpInput", "Limits"]

log = get_logger(__name__)

LOOPBACK: Final = "127.0.0.1"
MAX_BODY: Final = 1 << 20
MAX_TEXTS: Final = 64
MAX_JSON_DEPTH: Final = 8  # {"texts": [...]} is 2 deep
MAX_REQUEST_ID: Final = 128
ALLOWED_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "[::1]"})

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Limits:
    """The endpoint's bounds; the defaults suit a device, tests shorten the timeouts."""

    workers: int = 4  # threads answering complete requests (inference runs on these)
    backlog: int = 256  # the listening socket's accept queue (kernel side)
    max_connections: int = 512  # open at once; more wait in the backlog
    queue: int = 512  # complete requests waiting for a worker (one per connection); more: 503
    request_timeout: float = 10.0  # headers and body must arrive within this, or 408
    write_timeout: float = 10.0  # sending one answer
    linger: float = 1.0  # after a refusal, how long the unread rest is drained before closing
    max_header: int = 16 * 1024  # request line and headers; more gets 431
    max_body: int = MAX_BODY  # more gets 413
    max_buffered: int = 32 * MAX_BODY  # request bodies held at once; more gets 503

    def __post_init__(self) -> None:
        if self.workers < 1 or self.queue < self.workers or self.backlog < 1:
            raise ValueError(f"unusable HTTP input limits: {self}")


class _RequestError(Exception):
    """A request answered with a 4xx/5xx before (or instead of) classifying anything."""

    def __init__(self, status: HTTPStatus, message: str, *, headers: Headers = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


# ------------------------------------------------------------------------- the wire format

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DIGITS = re.compile(r"[0-9]+")
_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID}}}")


def _shown(text: str, limit: int = 120) -> str:
    """``text`` for a message or a log line: printable ASCII, shortened."""
    shown = ascii(text)[1:-1]
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode("ascii")  # ensure_ascii: any str encodes


def _response(status: int, payload: bytes, *, close: bool, headers: Headers = ()) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        *(f"{name}: {value}" for name, value in headers),
    ]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


@dataclass(frozen=True)
class _Head:
    method: str
    target: str
    headers: http.client.HTTPMessage
    size: int  # bytes of the request line, headers and the blank line
    length: int  # of the body
    keep_alive: bool
    expects_continue: bool

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


@dataclass(frozen=True)
class _Request:
    head: _Head
    body: bytes


def _parse_head(head: bytes, size: int) -> _Head:
    """The request line and headers (without the blank line); _RequestError if unusable."""
    line, _, rest = head.partition(b"\n")
    try:
        parts = line.rstrip(b"\r").decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise _RequestError(HTTPStatus.BAD_REQUEST, "the request line is not ASCII") from None
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1].isprintable():
        raise _RequestError(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version = parts
    if not target or " " in target:
        raise _RequestError(HTTPStatus.BAD_REQUEST, "malformed request line")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _RequestError(
            HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"HTTP/1.0 or HTTP/1.1, not {_shown(version)}"
        )
    try:
        headers = http.client.parse_headers(io.BytesIO(rest + b"\r\n"))
    except http.client.HTTPException as exc:
        raise _RequestError(
            HTTPStatus.BAD_REQUEST, f"malformed headers ({_shown(str(exc))})"
        ) from None
    _check_host(headers)
    tokens = {
        token.strip().lower()
        for value in headers.get_all("Connection") or []
        for token in value.split(",")
    }
    expect = (headers.get("Expect") or "").strip().lower()
    if expect and expect != "100-continue":
        raise _RequestError(HTTPStatus.EXPECTATION_FAILED, f"cannot meet Expect: {_shown(expect)}")
    return _Head(
        method=method,
        target=target,
        headers=headers,
        size=size,
        length=_body_length(method, headers),
        keep_alive=version == "HTTP/1.1" and "close" not in tokens,
        expects_continue=expect == "100-continue",
    )


def _check_host(headers: http.client.HTTPMessage) -> None:
    hosts = headers.get_all("Host") or []
    if len(hosts) > 1:
        raise _RequestError(HTTPStatus.BAD_REQUEST, "more than one Host header")
    if not hosts:
        return  # HTTP/1.0 clients may leave it out
    host = hosts[0].strip().lower()
    name = host[: host.find("]") + 1] if host.startswith("[") else host.partition(":")[0]
    if name not in ALLOWED_HOSTS:
        raise _RequestError(
            HTTPStatus.MISDIRECTED_REQUEST,
            f"this endpoint answers requests for {LOOPBACK} or localhost, not {_shown(host)}",
        )


def _body_length(method: str, headers: http.client.HTTPMessage) -> int:
    if headers.get("Transfer-Encoding") is not None:
        raise _RequestError(
            HTTPStatus.LENGTH_REQUIRED,
            "send the body with a Content-Length (Transfer-Encoding is not accepted)",
        )
    values = {value.strip() for value in headers.get_all("Content-Length") or []}
    if not values:
        if method == "POST":
            raise _RequestError(HTTPStatus.LENGTH_REQUIRED, "a POST needs a Content-Length")
        return 0
    if len(values) > 1 or not _DIGITS.fullmatch(value := values.pop()):
        raise _RequestError(HTTPStatus.BAD_REQUEST, "Content-Length must be one decimal number")
    return int(value) if len(value) <= 15 else 1 << 60


# ------------------------------------------------------------------------------ the answers


def _texts(body: bytes) -> list[str]:
    try:
        doc: Any = load_json(
            body, source="request body", max_depth=MAX_JSON_DEPTH, allow_constants=False
        )
    except InputError as exc:
        raise _RequestError(HTTPStatus.BAD_REQUEST, str(exc)) from None
    if not isinstance(doc, dict):
        raise _RequestError(HTTPStatus.BAD_REQUEST, 'expected {"text": "..."} or {"texts": [...]}')
    if "text" in doc and isinstance(doc["text"], str):
        _check_unicode(doc["text"], "text")
        return [doc["text"]]
    texts = doc.get("texts")
    if isinstance(texts, list) and texts and all(isinstance(text, str) for text in texts):
        if len(texts) > MAX_TEXTS:
            raise _RequestError(HTTPStatus.BAD_REQUEST, f"at most {MAX_TEXTS} texts per request")
        for index, text in enumerate(texts):
            _check_unicode(text, f"texts[{index}]")
        return texts
    raise _RequestError(
        HTTPStatus.BAD_REQUEST, 'expected {"text": "..."} or {"texts": [...]} with strings'
    )


def _check_unicode(text: str, field: str) -> None:
    """Refuse a string the tokenizer, the log and the results could not encode as UTF-8.

    JSON's ``\\ud800`` escapes parse into lone surrogates, which are not Unicode text.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _RequestError(
            HTTPStatus.BAD_REQUEST,
            f"{field}: not Unicode text (lone surrogate {ascii(text[exc.start])[1:-1]} at "
            f"character {exc.start})",
        ) from None


class _Answers:
    """The routes; run on the worker threads, each call returns an answer and never raises."""

    def __init__(self, classifier: Classifier) -> None:
        self.classifier = classifier

    def answer(self, request: _Request) -> tuple[int, bytes, Headers]:
        head = request.head
        try:
            return self._route(request)
        except _RequestError as refusal:
            log.debug("http %s %s: %d %s", head.method, _shown(head.target), *_said(refusal))
            return refusal.status, _error_body(refusal.message), refusal.headers
        except NoModelError as exc:
            return HTTPStatus.SERVICE_UNAVAILABLE, _error_body(str(exc)), ()
        except EdgeError as exc:
            return HTTPStatus.INTERNAL_SERVER_ERROR, _error_body(str(exc)), ()
        except Exception as exc:
            log.warning(
                "http %s %s failed: %s", head.method, _shown(head.target), _shown(repr(exc))
            )
            log.debug("http request failed", exc_info=True)
            return HTTPStatus.INTERNAL_SERVER_ERROR, _error_body("internal error (see the log)"), ()

    def _route(self, request: _Request) -> tuple[int, bytes, Headers]:
        head = request.head
        if head.path == "/v1/classify":
            self._allow(head, "POST")
            return HTTPStatus.OK, self._classify(request), ()
        if head.path == "/v1/status":
            self._allow(head, "GET")
            return HTTPStatus.OK, self.classifier.status_document(), ()
        if head.path == "/v1/health":
            self._allow(head, "GET")
            return self._health()
        raise _RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint {_shown(head.path)}")

    @staticmethod
    def _allow(head: _Head, method: str) -> None:
        if head.method != method:
            raise _RequestError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{head.path} answers {method}, not {_shown(head.method)}",
                headers=(("Allow", method),),
            )

    def _health(self) -> tuple[int, bytes, Headers]:
        status = json.loads(self.classifier.status_document())
        current = status.get("current")
        code = HTTPStatus.OK if current else HTTPStatus.SERVICE_UNAVAILABLE
        doc = {"status": "ok" if current else "no-model", "current": current}
        return code, json.dumps(doc).encode("utf-8"), ()

    def _classify(self, request: _Request) -> bytes:
        headers = request.head.headers
        content_type = (headers.get("Content-Type") or "").partition(";")[0].strip().lower()
        if content_type != "application/json":
            raise _RequestError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Type must be application/json, not {_shown(content_type or 'none')}",
            )
        charset = headers.get_param("charset", header="Content-Type")
        if isinstance(charset, str) and charset.lower() not in ("utf-8", "utf8"):
            raise _RequestError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"the body must be UTF-8, not {_shown(charset)}"
            )
        request_id = headers.get("X-Request-Id")
        if request_id is None:
            request_id = uuid.uuid4().hex[:12]
        elif not _REQUEST_ID.fullmatch(request_id):
            raise _RequestError(
                HTTPStatus.BAD_REQUEST,
                f"X-Request-Id: 1 to {MAX_REQUEST_ID} printable ASCII characters without spaces",
            )
        texts = _texts(request.body)
        ids = [request_id] if len(texts) == 1 else [f"{request_id}/{i}" for i in range(len(texts))]
        result = self.classifier.classify(texts, source="http", input_ids=ids)
        return json.dumps(
            {
                "artifact": result.artifact,
                "version": result.version,
                "latencyMs": round(result.latency_ms, 3),
                "predictions": [
                    {"label": p.label, "score": p.score, "scores": p.scores}
                    for p in result.predictions
                ],
            }
        ).encode("utf-8")


def _said(refusal: _RequestError) -> tuple[int, str]:
    return int(refusal.status), refusal.message


# ------------------------------------------------------------------------------- the server

_READING, _BUSY, _DRAINING = "reading", "busy", "draining"
_LISTENER, _WAKE = object(), object()
_METHODS = ("GET", "POST")  # any other is refused, and its connection closed


class _Conn:
    """One client connection, owned by the event loop (a worker holds it only while ``busy``)."""

    __slots__ = (
        "buf",
        "deadline",
        "drained",
        "head",
        "peer",
        "registered",
        "reserved",
        "sock",
        "state",
    )

    def __init__(self, sock: socket.socket, peer: str, deadline: float) -> None:
        self.sock = sock
        self.peer = peer
        self.deadline = deadline
        self.buf = bytearray()
        self.head: _Head | None = None
        self.reserved = 0  # bytes of body counted against Limits.max_buffered
        self.drained = 0
        self.registered = False
        self.state = _READING


class _Server:
    """The event loop (accept, read, frame, refuse) and the worker pool (answer)."""

    def __init__(self, classifier: Classifier, port: int, limits: Limits) -> None:
        self.limits = limits
        self.answers = _Answers(classifier)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((LOOPBACK, port))
            listener.listen(limits.backlog)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self.listener = listener
        self.port = int(listener.getsockname()[1])
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._conns: set[_Conn] = set()
        self._returned: deque[tuple[_Conn, bool]] = deque()
        self._lock = threading.Lock()
        self._jobs: queue.Queue[tuple[_Conn, _Request] | None] = queue.Queue(limits.queue)
        self._stopping = threading.Event()
        self._buffered = 0
        self._accepting = False
        self._accept_paused_until = 0.0
        self._next_expiry = float("inf")
        self._loop = threading.Thread(target=self._run, name=f"fedge-http-{self.port}", daemon=True)
        self._workers = [
            threading.Thread(target=self._work, name=f"fedge-http-{self.port}-w{i}", daemon=True)
            for i in range(limits.workers)
        ]

    # -- life cycle (the agent's thread) ----------------------------------------------------------

    @property
    def threads(self) -> list[threading.Thread]:
        return [self._loop, *self._workers]

    def start(self) -> None:
        for worker in self._workers:
            worker.start()
        self._loop.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        if self._loop.is_alive():
            self._loop.join(timeout=5)
        with contextlib.suppress(queue.Empty):
            while True:
                self._jobs.get_nowait()
        for worker in self._workers:
            if worker.is_alive():
                with contextlib.suppress(queue.Full):
                    self._jobs.put_nowait(None)
        for worker in self._workers:
            if worker.is_alive():
                worker.join(timeout=5)
        if not self._loop.is_alive():
            self._close_all()
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()
        with contextlib.suppress(OSError, ValueError):
            self._selector.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway; closed: stopped
            self._wake_w.send(b"\0")

    # -- the event loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._resume_accepting()
        try:
            while not self._stopping.is_set():
                until = self._next_expiry
                if not self._accepting and self._accept_paused_until:
                    until = min(until, self._accept_paused_until)
                wait = min(1.0, max(0.0, until - time.monotonic()))
                for key, _ in self._selector.select(wait):
                    if key.data is _LISTENER:
                        self._accept()
                    elif key.data is _WAKE:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    else:
                        self._readable(key.data)
                self._take_returned()
                self._expire()
                if not self._accepting:
                    self._resume_accepting()
        except Exception as exc:
            log.error("http input on %s:%d stopped: %s", LOOPBACK, self.port, exc)
            log.debug("http event loop failed", exc_info=True)
        finally:
            self._close_all()

    def _accept(self) -> None:
        for _ in range(64):
            if len(self._conns) >= self.limits.max_connections:
                self._pause_accepting(0.0)
                return
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("http input: cannot accept a connection (%s)", exc.strerror)
                    self._pause_accepting(0.1)
                    return
                continue  # ECONNABORTED and the like: that client is gone
            sock.setblocking(False)
            conn = _Conn(sock, str(address[0]), time.monotonic() + self.limits.request_timeout)
            self._conns.add(conn)
            self._register(conn)

    def _pause_accepting(self, seconds: float) -> None:
        """Leave new connections in the backlog: at the connection cap (``seconds`` 0: until one
        closes), or for ``seconds`` when out of file descriptors."""
        if self._accepting:
            self._selector.unregister(self.listener)
            self._accepting = False
        self._accept_paused_until = time.monotonic() + seconds if seconds > 0 else 0.0

    def _resume_accepting(self) -> None:
        if len(self._conns) < self.limits.max_connections and (
            time.monotonic() >= self._accept_paused_until
        ):
            self._selector.register(self.listener, selectors.EVENT_READ, _LISTENER)
            self._accepting = True
            self._accept_paused_until = 0.0

    def _register(self, conn: _Conn) -> None:
        if not conn.registered:
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)
            conn.registered = True
        self._next_expiry = min(self._next_expiry, conn.deadline)

    def _unregister(self, conn: _Conn) -> None:
        if conn.registered:
            self._selector.unregister(conn.sock)
            conn.registered = False

    def _readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
        elif conn.state == _DRAINING:
            conn.drained += len(data)
            if conn.drained > 4 * self.limits.max_body:
                self._close(conn)
        else:
            conn.buf += data
            self._advance(conn)

    def _advance(self, conn: _Conn) -> None:
        try:
            self._frame(conn)
        except _RequestError as refusal:
            self._refuse(conn, refusal)
        except Exception:
            log.debug("http %s: dropped", conn.peer, exc_info=True)
            self._close(conn)

    def _frame(self, conn: _Conn) -> None:
        """Parse the head once it is in, then wait for the body; hand a whole request over."""
        limits = self.limits
        if conn.head is None:
            blank = len(conn.buf) - len(conn.buf.lstrip(b"\r\n"))
            if blank:
                del conn.buf[:blank]  # empty lines before a request line are allowed
            match = _HEAD_END.search(conn.buf, 0, limits.max_header + 4)
            if match is None:
                if len(conn.buf) > limits.max_header:
                    raise _RequestError(
                        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                        f"the request line and headers are over {limits.max_header} bytes",
                    )
                return
            head = _parse_head(bytes(conn.buf[: match.start()]), match.end())
            if head.length > limits.max_body:
                raise _RequestError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"the body is {head.length} bytes, over the {limits.max_body}-byte limit",
                )
            if self._buffered + head.length > limits.max_buffered:
                raise _RequestError(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    "too many requests at once: retry shortly",
                    headers=(("Retry-After", "1"),),
                )
            self._buffered += head.length
            conn.reserved = head.length
            conn.head = head
            if head.expects_continue and len(conn.buf) < head.size + head.length:
                with contextlib.suppress(OSError):
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        head = conn.head
        end = head.size + head.length
        if len(conn.buf) < end:
            return
        request = _Request(head, bytes(conn.buf[head.size : end]))
        del conn.buf[:end]
        conn.head = None
        try:
            self._jobs.put_nowait((conn, request))
        except queue.Full:
            raise _RequestError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "too many requests at once: retry shortly",
                headers=(("Retry-After", "1"),),
            ) from None
        self._unregister(conn)
        conn.state = _BUSY

    def _refuse(self, conn: _Conn, refusal: _RequestError) -> None:
        """Answer without reading more, then close without a reset."""
        log.debug("http %s: %d %s", conn.peer, *_said(refusal))
        answer = _response(
            refusal.status, _error_body(refusal.message), close=True, headers=refusal.headers
        )
        with contextlib.suppress(OSError):
            conn.sock.send(answer)  # small, on a connection with nothing else unsent
        self._linger(conn)

    def _linger(self, conn: _Conn) -> None:
        """Half-close, then read and drop what the client still sends until it closes too (or
        ``linger`` passes): closing with unread data would reset the connection, and a client
        might lose the answer it has not read yet."""
        self._release(conn)
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        conn.state = _DRAINING
        conn.buf.clear()
        conn.head = None
        conn.deadline = time.monotonic() + self.limits.linger
        self._register(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        if now < self._next_expiry:
            return
        soonest = float("inf")
        for conn in list(self._conns):
            if conn.state == _BUSY:
                continue
            if conn.deadline > now:
                soonest = min(soonest, conn.deadline)
                continue
            if conn.state == _READING and (conn.buf or conn.head is not None):
                log.debug("http %s: request not complete in time", conn.peer)
                answer = _response(
                    HTTPStatus.REQUEST_TIMEOUT,
                    _error_body(
                        f"the request did not arrive within {self.limits.request_timeout:g} s"
                    ),
                    close=True,
                )
                with contextlib.suppress(OSError):
                    conn.sock.send(answer)
            self._close(conn)
        self._next_expiry = soonest

    def _take_returned(self) -> None:
        while True:
            with self._lock:
                if not self._returned:
                    return
                conn, keep_alive = self._returned.popleft()
            if conn not in self._conns:
                continue
            self._release(conn)
            if not keep_alive:
                self._linger(conn)
                continue
            conn.state = _READING
            conn.deadline = time.monotonic() + self.limits.request_timeout
            self._register(conn)
            if conn.buf:  # a pipelined request is already here
                self._advance(conn)

    def _release(self, conn: _Conn) -> None:
        self._buffered -= conn.reserved
        conn.reserved = 0

    def _close(self, conn: _Conn) -> None:
        self._release(conn)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._unregister(conn)
        self._conns.discard(conn)
        conn.sock.close()

    def _close_all(self) -> None:
        for conn in list(self._conns):
            self._close(conn)

    # -- the workers ------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            conn, request = job
            keep_alive = False
            try:
                status, payload, headers = self.answers.answer(request)
                keep_alive = (
                    request.head.keep_alive and status < 500 and request.head.method in _METHODS
                )
                answer = _response(status, payload, close=not keep_alive, headers=headers)
                conn.sock.settimeout(self.limits.write_timeout)
                conn.sock.sendall(answer)
            except OSError as exc:
                log.debug("http %s: cannot send the answer (%s)", conn.peer, exc)
                keep_alive = False
            except Exception as exc:
                log.warning("http %s: answer failed: %s", conn.peer, _shown(repr(exc)))
                log.debug("http answer failed", exc_info=True)
                keep_alive = False
            finally:
                with contextlib.suppress(OSError):
                    conn.sock.setblocking(False)
                with self._lock:
                    self._returned.append((conn, keep_alive))
                self._wake()


class HttpInput:
    """The endpoint's threads; ``port`` is the bound one (useful when asked for 0)."""

    def __init__(self, classifier: Classifier, *, port: int, limits: Limits | None = None) -> None:
        try:
            self._server = _Server(classifier, port, limits or Limits())
        except OSError as exc:
            raise EdgeError(
                f"spec.input.http.port: cannot listen on {LOOPBACK}:{port} ({exc.strerror})"
            ) from exc
        self.port = self._server.port
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def threads(self) -> list[threading.Thread]:
        """The endpoint's threads (a fixed number: the event loop and the workers)."""
        return self._server.threads
