"""The enrollment endpoint's HTTP handling under abuse: answers instead of resets, closed
connections after refusals, bounded reads and threads.

The real HTTPS server (server/enrollment/service.py) on 127.0.0.1 with real certificates; the
SuperLink behind it is a stand-in that refuses every registration (no request here gets that
far, and a test that did would fail loudly). The happy paths are in test_enrollment_endpoint.py.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedge.errors import FederationError
from fedge.tls import CertPaths, generate_federation_certs
from server.enrollment import service
from server.enrollment.registry import Registry
from server.enrollment.rules import NodePublicKey
from server.enrollment.service import MAX_BODY, Enroller, EnrollmentServer
from tests.support.http_load import (
    LOOPBACK,
    Answer,
    closed_within,
    connect,
    exchange,
    read_answer,
    request_bytes,
)

pytestmark = pytest.mark.timeout(120)

JSON = {"Content-Type": "application/json"}


class NoSuperLink:
    def register(self, key: NodePublicKey, *, name: str) -> int:
        raise FederationError("no SuperLink in this test")

    def unregister(self, node_id: int) -> None:
        raise FederationError("no SuperLink in this test")

    def nodes(self) -> dict[int, str]:
        return {}


@dataclass
class Endpoint:
    server: EnrollmentServer
    certs: CertPaths

    @property
    def port(self) -> int:
        return int(self.server.address.rsplit(":", 1)[1])

    @property
    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certs.ca_cert))

    def send(self, data: bytes, *, method: str = "POST") -> Answer:
        return exchange(self.port, data, tls=self.tls, method=method)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return generate_federation_certs(tmp_path_factory.mktemp("enroll-certs"))


@pytest.fixture
def endpoint(tmp_path: Path, certs: CertPaths) -> Iterator[Endpoint]:
    enroller = Enroller(
        Registry.in_workdir(tmp_path / "coordinator"),
        NoSuperLink(),
        superlink="127.0.0.1:9092",
        ca_cert=certs.ca_cert.read_text(),
    )
    with EnrollmentServer(enroller, certfile=certs.server_cert, keyfile=certs.server_key) as server:
        yield Endpoint(server, certs)


def enroll_request(body: bytes, **headers: str) -> bytes:
    return request_bytes("POST", "/v1/enroll", body, headers={**JSON, **headers})


def assert_still_serving(endpoint: Endpoint) -> None:
    answer = endpoint.send(request_bytes("GET", "/v1/ca"), method="GET")
    assert answer.status == 200 and "BEGIN CERTIFICATE" in answer.json()["ca_cert"]


def test_an_oversize_body_is_answered_413_not_reset(endpoint: Endpoint) -> None:
    # announced far over the cap, with only a little of it sent: refused before reading more
    with connect(endpoint.port, tls=endpoint.tls) as sock:
        sock.sendall(
            request_bytes(
                "POST",
                "/v1/enroll",
                headers={**JSON, "Content-Length": "50000000"},
                content_length=False,
            )
            + b"{" * 4096
        )
        answer = read_answer(sock)
        assert answer.status == 413 and answer.closes
        assert answer.json()["error"] == "too-large"
        assert f"{MAX_BODY}-byte limit" in answer.json()["message"]
        assert closed_within(sock, 3.0) is not None
    # sent whole before the client reads (what http.client does): still the 413, no reset
    whole = endpoint.send(enroll_request(b"[" + b" " * (MAX_BODY + 1000) + b"]"))
    assert whole.status == 413
    assert_still_serving(endpoint)


def test_after_a_403_the_server_closes_the_tls_connection(endpoint: Endpoint) -> None:
    body = json.dumps({"token": "not-a-token", "public_key": "ecdsa-sha2-nistp256 AAAA"}).encode()
    with connect(endpoint.port, tls=endpoint.tls) as sock:
        sock.sendall(enroll_request(body))  # HTTP/1.1: keep-alive unless told otherwise
        answer = read_answer(sock)
        assert answer.status == 403 and answer.closes, answer
        assert answer.json()["error"] == "malformed-token"
        closed_after = closed_within(sock, 2.0)
    assert closed_after is not None, "the connection stayed open after the 403"


def test_a_slow_client_is_cut_off_and_costs_a_bounded_number_of_threads(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "READ_TIMEOUT", 0.5)
    with connect(endpoint.port, tls=endpoint.tls) as slow:
        slow.sendall(b"POST /v1/enroll HTTP/1.1\r\nContent-Le")
        assert closed_within(slow, 3.0) is not None, "a half-sent request held its connection"
    with socket.create_connection((LOOPBACK, endpoint.port), timeout=5) as mute:
        assert closed_within(mute, 3.0) is not None, "a connection without a TLS handshake stayed"
    body = json.dumps({"token": "x" * 40, "public_key": "y"}).encode()
    with connect(endpoint.port, tls=endpoint.tls) as trickle:  # each byte in time, never done
        trickle.sendall(enroll_request(body)[:-30])
        started, cut = time.monotonic(), None
        for byte in body[-30:-1]:
            try:
                trickle.sendall(bytes([byte]))
            except OSError:
                cut = time.monotonic() - started
                break
            if closed_within(trickle, 0.1) is not None:
                cut = time.monotonic() - started
                break
        assert cut is not None and cut < 1.5, "a trickling client held its handler"

    crowd = [socket.create_connection((LOOPBACK, endpoint.port), timeout=5) for _ in range(60)]
    try:
        time.sleep(0.3)
        handlers = [t for t in threading.enumerate() if "process_request" in t.name]
        assert len(handlers) <= service.MAX_HANDLERS
    finally:
        for sock in crowd:
            sock.close()
    assert_still_serving(endpoint)


DEEP = b"[" * 10_000 + b"]" * 10_000
BAD: dict[str, tuple[bytes, int, str]] = {
    "depth 10000": (enroll_request(DEEP), 400, "nested"),
    "depth 50 in a field": (
        enroll_request(b'{"token": "x", "public_key": ' + b"[" * 50 + b"]" * 50 + b"}"),
        400,
        "nested more than",
    ),
    "not UTF-8": (enroll_request(b'{"token": "\xff"}'), 400, "not UTF-8"),
    "lone surrogate": (
        enroll_request(b'{"token": "\\ud800", "public_key": "k", "name": "n"}'),
        400,
        "token: not Unicode text",
    ),
    "lone surrogate in a key": (
        enroll_request(b'{"\\udc80": 1, "token": "t", "public_key": "k"}'),
        400,
        "not Unicode text",
    ),
    "not JSON": (enroll_request(b"token=x"), 400, "not valid JSON"),
    "no Content-Length": (
        request_bytes("POST", "/v1/status", headers=JSON, content_length=False),
        411,
        "Content-Length",
    ),
    "chunked": (
        request_bytes(
            "POST",
            "/v1/enroll",
            b"2\r\n{}\r\n0\r\n\r\n",
            headers={**JSON, "Transfer-Encoding": "chunked"},
            content_length=False,
        ),
        411,
        "Content-Length",
    ),
    "garbage request line": (b"HELLO\r\n\r\n", 400, "Bad request"),
    "unknown method": (request_bytes("PUT", "/v1/enroll", b"{}"), 501, "Unsupported method"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_requests_get_a_json_4xx_and_a_closed_connection(
    endpoint: Endpoint,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    case: str,
) -> None:
    data, status, says = BAD[case]
    caplog.set_level(logging.DEBUG, logger="fedge")
    with connect(endpoint.port, tls=endpoint.tls) as sock:
        sock.sendall(data)
        answer = read_answer(sock)
        assert answer.status == status, answer
        assert answer.closes
        assert set(answer.json()) == {"error", "message"}
        assert says in answer.json()["message"], answer.json()
        assert closed_within(sock, 3.0) is not None
    assert_still_serving(endpoint)
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert noisy == [], [r.getMessage() for r in noisy]
    assert "Traceback" not in capfd.readouterr().err
