"""Clients that push an HTTP server to its limits: raw requests, many at once, slow ones.

Used against the edge agent's local endpoint and the enrollment endpoint (plain TCP or TLS). Every
helper works on real sockets, so a reset or a hang shows up as what it is (ConnectionResetError,
TimeoutError), never as a mocked answer.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


def request_bytes(
    method: str,
    path: str,
    body: bytes = b"",
    *,
    headers: Mapping[str, str] | None = None,
    host: str = LOOPBACK,
    content_length: bool = True,
) -> bytes:
    """One HTTP/1.1 request as bytes; ``Content-Length`` is added for a body unless told not."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if content_length and (body or method == "POST"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def connect(
    port: int, *, tls: ssl.SSLContext | None = None, timeout: float = 10.0
) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    if tls is None:
        return sock
    return tls.wrap_socket(sock, server_hostname=LOOPBACK)


def read_answer(sock: socket.socket, *, method: str = "POST") -> Answer:
    """Read exactly one response off ``sock`` (which stays open, with any later response unread
    on it), skipping interim 1xx answers. Needs ``Content-Length`` unless the server closes."""
    while True:
        head = bytearray()
        while not head.endswith(b"\r\n\r\n"):
            byte = sock.recv(1)
            if not byte:
                raise ConnectionError(f"closed before a whole response: {bytes(head)!r}")
            head += byte
        lines = bytes(head).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if status >= 200:
            break
    if method == "HEAD" or status in (204, 304):
        return Answer(status, headers, b"")
    body = bytearray()
    length = int(headers["content-length"]) if "content-length" in headers else None
    while length is None or len(body) < length:
        chunk = sock.recv(65536 if length is None else min(65536, length - len(body)))
        if not chunk:
            if length is None:
                break
            raise ConnectionError(f"closed after {len(body)} of {length} body bytes")
        body += chunk
    return Answer(status, headers, bytes(body))


def exchange(
    port: int,
    data: bytes,
    *,
    tls: ssl.SSLContext | None = None,
    method: str = "POST",
    timeout: float = 10.0,
) -> Answer:
    """Send ``data`` on a new connection and read one answer."""
    with contextlib.closing(connect(port, tls=tls, timeout=timeout)) as sock:
        sock.sendall(data)
        return read_answer(sock, method=method)


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the peer closed ``sock`` (end of stream or a reset), None if it did not
    within ``seconds``; whatever else arrives is read and dropped."""
    start = time.monotonic()
    while (left := seconds - (time.monotonic() - start)) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except TimeoutError:
            return None
        except (ConnectionResetError, ssl.SSLError):
            return time.monotonic() - start
    return None


def all_at_once(count: int, call: Callable[[int], Any], *, timeout: float = 60.0) -> list[Any]:
    """Run ``call(i)`` for ``count`` indexes in as many threads, released together by a barrier;
    each result, or the exception it raised."""
    barrier = threading.Barrier(count)

    def one(index: int) -> Any:
        try:
            barrier.wait(timeout=timeout)
            return call(index)
        except Exception as exc:  # noqa: BLE001 - the test looks at every outcome
            return exc

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count), timeout=timeout))


@contextlib.contextmanager
def slow_clients(
    port: int, count: int, *, sends: bytes = b"GET /v1/health HTTP/1.1\r\nHo"
) -> Iterator[list[socket.socket]]:
    """``count`` connections that each send the start of a request, then wait (slowloris)."""
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection((LOOPBACK, port), timeout=5)
            sock.sendall(sends)
            opened.append(sock)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def named_threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]
