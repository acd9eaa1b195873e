"""A bounded HTTP/1.1 server on 127.0.0.1, for endpoints a device's own programs call.

A device is small and its endpoint must stay up whatever a local client does (a stuck program, a
flood, a half-sent request), so the standard library's thread-per-connection server will not do.
This one keeps a fixed number of threads and bounded memory; what it serves is a :data:`Handler`
(edge_agent/http_input.py is the one that classifies), called with a whole request. The numbers are
in :class:`Limits`:

* One event-loop thread accepts connections (listen backlog 256) and reads requests without
  blocking, until the headers and the whole ``Content-Length`` body are in; a request has
  ``request_timeout`` to arrive whole, or the connection gets 408 and is closed. A client that
  sends half a header line and waits costs a buffer, not a thread.
* A fixed pool of ``workers`` threads answers complete requests from a bounded queue; beyond it
  (and beyond ``max_buffered`` bytes of bodies held at once) new requests get 503 with
  ``Retry-After``. At most ``max_connections`` are open; past that, new ones wait in the kernel's
  backlog.
* A handler sees only a request whose head passed edge_agent/http_wire.py's checks and whose
  body is within ``max_body`` (413 otherwise; 431 for a head over ``max_header``). Each refusal
  is a one-line JSON ``{"error": ...}``.
* Refusals are answered before any more of the body is read, then the connection is closed
  gracefully (the unread rest is drained for at most ``linger`` seconds), so the client reads the
  answer instead of a reset. Nothing a client sends reaches the log as a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from edge_agent.http_wire import (
    HEAD_END,
    LOOPBACK,
    Head,
    Headers,
    Request,
    RequestError,
    error_body,
    parse_head,
    response,
    shown,
)
from fedge.logs import get_logger

__all__ = ["MAX_BODY", "Answer", "BoundedServer", "Handler", "Limits"]

log = get_logger(__name__)

MAX_BODY: Final = 1 << 20

Answer = tuple[int, bytes, Headers]  # status, JSON body, extra headers
# Called on a worker thread with a whole request; it should answer rather than raise (an exception
# is logged as a warning and the connection closed without an answer).
Handler = Callable[[Request], Answer]


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
        self.head: Head | None = None
        self.reserved = 0  # bytes of body counted against Limits.max_buffered
        self.drained = 0
        self.registered = False
        self.state = _READING


class BoundedServer:
    """The event loop (accept, read, frame, refuse) and the worker pool (answer with ``handler``).

    Binds to :data:`LOOPBACK` on ``port`` (0: a free one, then ``port`` is the bound one); an
    ``OSError`` if it cannot. Nothing runs before :meth:`start`.
    """

    def __init__(self, handler: Handler, port: int, limits: Limits) -> None:
        self.limits = limits
        self.handler = handler
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
        self._jobs: queue.Queue[tuple[_Conn, Request] | None] = queue.Queue(limits.queue)
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
        except RequestError as refusal:
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
            match = HEAD_END.search(conn.buf, 0, limits.max_header + 4)
            if match is None:
                if len(conn.buf) > limits.max_header:
                    raise RequestError(
                        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                        f"the request line and headers are over {limits.max_header} bytes",
                    )
                return
            head = parse_head(bytes(conn.buf[: match.start()]), match.end())
            if head.length > limits.max_body:
                raise RequestError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"the body is {head.length} bytes, over the {limits.max_body}-byte limit",
                )
            if self._buffered + head.length > limits.max_buffered:
                raise RequestError(
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
        request = Request(head, bytes(conn.buf[head.size : end]))
        del conn.buf[:end]
        conn.head = None
        try:
            self._jobs.put_nowait((conn, request))
        except queue.Full:
            raise RequestError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "too many requests at once: retry shortly",
                headers=(("Retry-After", "1"),),
            ) from None
        self._unregister(conn)
        conn.state = _BUSY

    def _refuse(self, conn: _Conn, refusal: RequestError) -> None:
        """Answer without reading more, then close without a reset."""
        log.debug("http %s: %d %s", conn.peer, int(refusal.status), refusal.message)
        answer = response(
            refusal.status, error_body(refusal.message), close=True, headers=refusal.headers
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
                answer = response(
                    HTTPStatus.REQUEST_TIMEOUT,
                    error_body(
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
                status, payload, headers = self.handler(request)
                keep_alive = (
                    request.head.keep_alive and status < 500 and request.head.method in _METHODS
                )
                answer = response(status, payload, close=not keep_alive, headers=headers)
                conn.sock.settimeout(self.limits.write_timeout)
                conn.sock.sendall(answer)
            except OSError as exc:
                log.debug("http %s: cannot send the answer (%s)", conn.peer, exc)
                keep_alive = False
            except Exception as exc:
                log.warning("http %s: answer failed: %s", conn.peer, shown(repr(exc)))
                log.debug("http answer failed", exc_info=True)
                keep_alive = False
            finally:
                with contextlib.suppress(OSError):
                    conn.sock.setblocking(False)
                with self._lock:
                    self._returned.append((conn, keep_alive))
                self._wake()
