"""HTTP/1.1 on the wire, for the device's loopback endpoints: requests in, answers out.

Strict on purpose: a request is refused (:class:`RequestError`, answered with a one-line JSON
``{"error": ...}``) unless its head is plain HTTP/1.0 or 1.1 that a handler can trust, so the
endpoint behind it never sees a malformed one. 400 for a malformed request line or headers, 411
without a ``Content-Length`` on a ``POST`` (a chunked body is refused: its length is not known
before reading it), 421 for a ``Host`` other than 127.0.0.1 or localhost (a web page reaching
the device through DNS rebinding), 417 for an ``Expect`` other than ``100-continue``. Nothing a
client sends is shown unescaped (:func:`shown`).
"""

from __future__ import annotations

import http.client
import io
import json
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

__all__ = [
    "ALLOWED_HOSTS",
    "HEAD_END",
    "LOOPBACK",
    "Head",
    "Headers",
    "Request",
    "RequestError",
    "error_body",
    "parse_head",
    "response",
    "shown",
]

LOOPBACK: Final = "127.0.0.1"
ALLOWED_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "[::1]"})

Headers = tuple[tuple[str, str], ...]


class RequestError(Exception):
    """A request answered with a 4xx/5xx instead of what it asked for (by the wire checks here,
    the server's limits, or the endpoint's own rules)."""

    def __init__(self, status: HTTPStatus, message: str, *, headers: Headers = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


HEAD_END = re.compile(rb"\r?\n\r?\n")  # where the head ends and the body begins
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DIGITS = re.compile(r"[0-9]+")


def shown(text: str, limit: int = 120) -> str:
    """``text`` for a message or a log line: printable ASCII, shortened."""
    escaped = ascii(text)[1:-1]
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


def error_body(message: str) -> bytes:
    """The JSON body of every refusal."""
    return json.dumps({"error": message}).encode("ascii")  # ensure_ascii: any str encodes


def response(status: int, payload: bytes, *, close: bool, headers: Headers = ()) -> bytes:
    """A whole answer: status line, headers, JSON ``payload``."""
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
class Head:
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
class Request:
    head: Head
    body: bytes


def parse_head(head: bytes, size: int) -> Head:
    """The request line and headers (without the blank line); RequestError if unusable."""
    line, _, rest = head.partition(b"\n")
    try:
        parts = line.rstrip(b"\r").decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise RequestError(HTTPStatus.BAD_REQUEST, "the request line is not ASCII") from None
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1].isprintable():
        raise RequestError(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version = parts
    if not target or " " in target:
        raise RequestError(HTTPStatus.BAD_REQUEST, "malformed request line")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise RequestError(
            HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"HTTP/1.0 or HTTP/1.1, not {shown(version)}"
        )
    try:
        headers = http.client.parse_headers(io.BytesIO(rest + b"\r\n"))
    except http.client.HTTPException as exc:
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"malformed headers ({shown(str(exc))})"
        ) from None
    _check_host(headers)
    tokens = {
        token.strip().lower()
        for value in headers.get_all("Connection") or []
        for token in value.split(",")
    }
    expect = (headers.get("Expect") or "").strip().lower()
    if expect and expect != "100-continue":
        raise RequestError(HTTPStatus.EXPECTATION_FAILED, f"cannot meet Expect: {shown(expect)}")
    return Head(
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
        raise RequestError(HTTPStatus.BAD_REQUEST, "more than one Host header")
    if not hosts:
        return  # HTTP/1.0 clients may leave it out
    host = hosts[0].strip().lower()
    name = host[: host.find("]") + 1] if host.startswith("[") else host.partition(":")[0]
    if name not in ALLOWED_HOSTS:
        raise RequestError(
            HTTPStatus.MISDIRECTED_REQUEST,
            f"this endpoint answers requests for {LOOPBACK} or localhost, not {shown(host)}",
        )


def _body_length(method: str, headers: http.client.HTTPMessage) -> int:
    if headers.get("Transfer-Encoding") is not None:
        raise RequestError(
            HTTPStatus.LENGTH_REQUIRED,
            "send the body with a Content-Length (Transfer-Encoding is not accepted)",
        )
    values = {value.strip() for value in headers.get_all("Content-Length") or []}
    if not values:
        if method == "POST":
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "a POST needs a Content-Length")
        return 0
    if len(values) > 1 or not _DIGITS.fullmatch(value := values.pop()):
        raise RequestError(HTTPStatus.BAD_REQUEST, "Content-Length must be one decimal number")
    return int(value) if len(value) <= 15 else 1 << 60
