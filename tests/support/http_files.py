"""A static file server on 127.0.0.1 that honours Range and can misbehave on purpose.

It plays a cloud store's presigned URLs for the edge tests: ``Range: bytes=<n>-`` gets a 206 with
``Content-Range``, a query string is accepted and ignored (as a signature would be), and per-path
faults let a test throttle a file (so an agent can be killed mid-download), cut a response after
some bytes (the connection breaks with the body incomplete), or refuse a path with a status code.
Every request is recorded (path and Range header) so a test can see that a resume really asked for
the rest only.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

LOOPBACK = "127.0.0.1"
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Fault:
    """What to do to one path: throttle (bytes/s, in writes of ``step`` bytes), cut after N bytes
    (``times`` times), or answer a status."""

    bytes_per_second: float | None = None
    step: int = 4096  # bytes per write when throttled: 1 makes a drip
    cut_after: int | None = None
    times: int = 1
    status: int | None = None


@dataclass
class Request:
    path: str
    range: str | None


@dataclass
class FileServer:
    root: Path
    port: int = 0
    faults: dict[str, Fault] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def fault(self, path: str, fault: Fault) -> None:
        with self.lock:
            self.faults[path.lstrip("/")] = fault

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def requests_for(self, suffix: str) -> list[Request]:
        with self.lock:
            return [request for request in self.requests if request.path.endswith(suffix)]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _fail(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        state = self.server.state
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        header = self.headers.get("Range")
        with state.lock:
            state.requests.append(Request(path=path, range=header))
            fault = state.faults.get(path)
            cut = None
            if fault is not None and fault.cut_after is not None and fault.times > 0:
                fault.times -= 1
                cut = fault.cut_after
        if fault is not None and fault.status is not None:
            self._fail(fault.status)
            return
        file = (state.root / path).resolve()
        if state.root.resolve() not in file.parents or not file.is_file():
            self._fail(HTTPStatus.NOT_FOUND)
            return
        data = file.read_bytes()
        start, status = 0, HTTPStatus.OK
        if header is not None:
            match = _RANGE.match(header)
            if match is None or int(match.group(1)) >= len(data):
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, status = int(match.group(1)), HTTPStatus.PARTIAL_CONTENT
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        rate = None if fault is None else fault.bytes_per_second
        step = 4096 if fault is None else fault.step
        try:
            for offset in range(0, len(body), step):
                self.wfile.write(body[offset : offset + step])
                self.wfile.flush()
                if rate:
                    time.sleep(step / rate)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: FileServer) -> None:
        self.state = state
        super().__init__((LOOPBACK, state.port), _Handler)


@contextlib.contextmanager
def file_server(root: Path) -> Iterator[FileServer]:
    root.mkdir(parents=True, exist_ok=True)
    state = FileServer(root=root)
    server = _Server(state)
    state.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def files(tmp_path: Path) -> Iterator[FileServer]:
    """A file server over ``tmp_path/www`` for one test."""
    with file_server(tmp_path / "www") as server:
        yield server
