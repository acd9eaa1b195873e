"""The agent's local HTTP endpoint under load and abuse: bounded threads, no resets, JSON 4xx.

The endpoint (``edge_agent.http_input.HttpInput``) runs on 127.0.0.1 on real sockets, but it is
given a small real classifier instead of a whole agent (which would need a broker and a rollout):
:class:`EngineClassifier` answers through the same ``Classifier`` interface the agent implements,
with a real ONNX model and tokenizer (tests/support/edge_artifacts.py), so a text the tokenizer
cannot take would fail here as it would on a device. The path through a real agent process is in
test_edge_agent.py and test_agent_sigterm.py.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from edge_agent.http_input import MAX_BODY, MAX_TEXTS, HttpInput, Limits
from edge_agent.inference import InferenceEngine
from edge_agent.serving import Classified, NoModelError, Source
from fedge.signing import generate_keypair
from tests.support.edge_artifacts import LABELS, make_artifact
from tests.support.http_load import (
    LOOPBACK,
    all_at_once,
    closed_within,
    connect,
    exchange,
    named_threads,
    read_answer,
    request_bytes,
    slow_clients,
)

pytestmark = pytest.mark.timeout(120)

JSON = {"Content-Type": "application/json"}


class EngineClassifier:
    """The agent's ``Classifier`` interface over a real engine; ``gate`` holds every answer."""

    def __init__(self, engine: InferenceEngine | None) -> None:
        self.engine = engine
        self.seen: list[str] = []
        self.ids: list[str] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def classify(
        self, texts: Sequence[str], *, source: Source, input_ids: Sequence[str]
    ) -> Classified:
        assert source == "http"
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(timeout=30)
        if self.engine is None:
            raise NoModelError("no model is installed yet")
        with self._lock:
            self.seen.extend(texts)
            self.ids.extend(input_ids)
        start = time.perf_counter()
        predictions = self.engine.classify(texts)
        latency = (time.perf_counter() - start) * 1000
        return Classified("tiny-cls", "1.0.0", predictions, latency)

    def status_document(self) -> bytes:
        current = {"name": "tiny-cls", "version": "1.0.0"} if self.engine else None
        return json.dumps({"deviceId": "dev-http", "current": current}).encode()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> InferenceEngine:
    folder = tmp_path_factory.mktemp("http-model") / "tiny"
    make_artifact(folder, generate_keypair(), version="1.0.0")
    return InferenceEngine(folder, threads=1)


@pytest.fixture
def serve(engine: InferenceEngine) -> Iterator[Callable[..., tuple[HttpInput, EngineClassifier]]]:
    """Start an endpoint (``limits`` optional); every one started is stopped at the end."""
    started: list[HttpInput] = []

    def start(
        limits: Limits | None = None, *, model: bool = True, run: bool = True
    ) -> tuple[HttpInput, EngineClassifier]:
        classifier = EngineClassifier(engine if model else None)
        endpoint = HttpInput(classifier, port=0, limits=limits)
        started.append(endpoint)
        if run:
            endpoint.start()
        return endpoint, classifier

    yield start
    for endpoint in started:
        endpoint.stop()


def classify_request(text: str = "a good film", **headers: str) -> bytes:
    return request_bytes(
        "POST", "/v1/classify", json.dumps({"text": text}).encode(), headers={**JSON, **headers}
    )


def _post_bytes(body: object) -> bytes:
    return request_bytes("POST", "/v1/classify", json.dumps(body).encode(), headers=JSON)


def assert_no_traceback(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]):
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert noisy == [], [r.getMessage() for r in noisy]
    assert "Traceback" not in caplog.text
    assert "Traceback" not in capfd.readouterr().err


# ------------------------------------------------------------------------------ the API


def test_the_api_answers_as_before_on_one_kept_alive_connection(serve) -> None:
    endpoint, classifier = serve()
    connection = http.client.HTTPConnection(LOOPBACK, endpoint.port, timeout=10)
    try:
        connection.request("POST", "/v1/classify", json.dumps({"text": "a good film"}), JSON)
        one = connection.getresponse()
        answer = json.loads(one.read())
        assert one.status == 200, answer
        sock = connection.sock
        assert set(answer) == {"artifact", "version", "latencyMs", "predictions"}
        assert (answer["artifact"], answer["version"]) == ("tiny-cls", "1.0.0")
        assert answer["predictions"][0]["label"] in LABELS
        assert set(answer["predictions"][0]) == {"label", "score", "scores"}

        texts = {"texts": ["good", "bad", "\U0001f600 fine"]}  # a real pair of surrogates is fine
        connection.request(
            "POST", "/v1/classify", json.dumps(texts), {**JSON, "X-Request-Id": "req-7"}
        )
        many = connection.getresponse()
        assert many.status == 200 and len(json.loads(many.read())["predictions"]) == 3
        assert classifier.ids[-3:] == ["req-7/0", "req-7/1", "req-7/2"]

        connection.request("GET", "/v1/health")
        health = connection.getresponse()
        assert (health.status, json.loads(health.read())["status"]) == (200, "ok")
        connection.request("GET", "/v1/status")
        status = connection.getresponse()
        assert (status.status, json.loads(status.read())["deviceId"]) == (200, "dev-http")
        connection.request("GET", "/v1/nowhere")
        missing = connection.getresponse()
        assert missing.status == 404 and "error" in json.loads(missing.read())
        assert connection.sock is sock  # one connection served all five
    finally:
        connection.close()


def test_no_model_is_503_for_health_and_classify(serve) -> None:
    endpoint, _ = serve(model=False)
    health = exchange(endpoint.port, request_bytes("GET", "/v1/health"), method="GET")
    assert (health.status, health.json()["status"]) == (503, "no-model")
    answer = exchange(endpoint.port, classify_request())
    assert answer.status == 503 and "no model" in answer.json()["error"]


def test_pipelined_requests_are_answered_in_order(serve) -> None:
    endpoint, _ = serve()
    with connect(endpoint.port) as sock:
        sock.sendall(classify_request("good") + request_bytes("GET", "/v1/status"))
        first, second = read_answer(sock), read_answer(sock, method="GET")
    assert first.status == 200 and "predictions" in first.json()
    assert second.status == 200 and second.json()["deviceId"] == "dev-http"


# ------------------------------------------------------------------------------ the load


def test_the_backlog_holds_200_connections_until_the_endpoint_accepts(serve) -> None:
    """Before ``start()`` nothing accepts: 200 connects must still complete (the kernel's queue),
    and every one is answered once it runs. A backlog of 5 makes connects past it time out."""
    endpoint, _ = serve(run=False)
    sockets = []
    try:
        for _ in range(200):
            sockets.append(socket.create_connection((LOOPBACK, endpoint.port), timeout=1.0))
        endpoint.start()
        for sock in sockets:
            sock.settimeout(10)
            sock.sendall(classify_request())
        answers = [read_answer(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert [a.status for a in answers] == [200] * 200


def test_200_concurrent_requests_are_all_answered_by_a_fixed_pool(serve) -> None:
    limits = Limits()
    endpoint, classifier = serve(limits)

    def one(index: int) -> int:
        connection = http.client.HTTPConnection(LOOPBACK, endpoint.port, timeout=30)
        try:
            connection.request("POST", "/v1/classify", json.dumps({"text": f"good {index}"}), JSON)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    outcomes = all_at_once(200, one)
    failures = [o for o in outcomes if o != 200]
    assert failures == [], failures[:5]
    assert len(classifier.seen) == 200
    assert len(named_threads(f"fedge-http-{endpoint.port}")) == limits.workers + 1


def test_300_slow_clients_take_no_thread_and_hold_up_no_one(serve) -> None:
    limits = Limits()
    endpoint, _ = serve(limits)
    exchange(endpoint.port, classify_request())  # warm: the first inference loads kernels
    threads_before = threading.active_count()
    with slow_clients(endpoint.port, 300):
        time.sleep(0.2)  # let the endpoint take them all in
        start = time.monotonic()
        answer = exchange(endpoint.port, classify_request(), timeout=5)
        elapsed = time.monotonic() - start
        assert answer.status == 200
        assert elapsed < 1.0, f"answered after {elapsed:.2f} s"
        assert threading.active_count() <= threads_before + 1
        assert len(named_threads(f"fedge-http-{endpoint.port}")) == limits.workers + 1


def test_a_request_that_does_not_arrive_in_time_is_cut_off(serve) -> None:
    endpoint, _ = serve(Limits(request_timeout=0.5))
    half_head = socket.create_connection((LOOPBACK, endpoint.port), timeout=5)
    half_body = socket.create_connection((LOOPBACK, endpoint.port), timeout=5)
    idle = socket.create_connection((LOOPBACK, endpoint.port), timeout=5)
    try:
        half_head.sendall(b"POST /v1/classify HTTP/1.1\r\nContent-Le")
        half_body.sendall(classify_request("a good film")[:-5])
        late = read_answer(half_head)
        assert late.status == 408 and late.closes and "error" in late.json()
        assert read_answer(half_body).status == 408
        gone = closed_within(idle, 3.0)
        assert gone is not None, "an idle connection was kept open past the timeout"
    finally:
        for sock in (half_head, half_body, idle):
            sock.close()
    assert exchange(endpoint.port, classify_request()).status == 200


def test_a_full_queue_answers_503_with_retry_after(serve) -> None:
    endpoint, classifier = serve(Limits(workers=1, queue=1))
    classifier.gate = threading.Event()
    first = connect(endpoint.port)
    second = connect(endpoint.port)
    try:
        first.sendall(classify_request("good"))  # taken by the one worker, held at the gate
        assert classifier.entered.wait(10)
        second.sendall(classify_request("good"))  # waits in the queue
        time.sleep(0.3)
        shed = exchange(endpoint.port, classify_request("good"))
        assert shed.status == 503 and shed.headers.get("retry-after") == "1", shed
        classifier.gate.set()
        assert read_answer(first).status == 200
        assert read_answer(second).status == 200
    finally:
        classifier.gate.set()
        first.close()
        second.close()


# ------------------------------------------------------------------------ malformed requests

DEEP = b"[" * 10_000 + b"]" * 10_000
BAD_REQUESTS: dict[str, tuple[bytes, int, str]] = {
    "lone surrogate": (
        request_bytes("POST", "/v1/classify", b'{"text": "\\ud800"}', headers=JSON),
        400,
        "text: not Unicode text",
    ),
    "lone surrogate in texts": (
        request_bytes("POST", "/v1/classify", b'{"texts": ["ok", "a\\udfffb"]}', headers=JSON),
        400,
        "texts[1]",
    ),
    "depth 10000": (
        request_bytes("POST", "/v1/classify", DEEP, headers=JSON),
        400,
        "nested",
    ),
    "depth 100 beside a text": (
        request_bytes(
            "POST",
            "/v1/classify",
            b'{"text": "good", "x": ' + b"[" * 100 + b"]" * 100 + b"}",
            headers=JSON,
        ),
        400,
        "nested more than",
    ),
    "not UTF-8": (
        request_bytes("POST", "/v1/classify", b'{"text": "caf\xe9"}', headers=JSON),
        400,
        "not UTF-8",
    ),
    "UTF-8 of a surrogate": (
        request_bytes("POST", "/v1/classify", b'{"text": "\xed\xa0\x80"}', headers=JSON),
        400,
        "not UTF-8",
    ),
    "not JSON": (request_bytes("POST", "/v1/classify", b"text=good", headers=JSON), 400, "JSON"),
    "a 5000-digit number": (
        request_bytes(
            "POST", "/v1/classify", b'{"text": "a", "n": 1' + b"0" * 5000 + b"}", headers=JSON
        ),
        400,
        "not valid JSON",
    ),
    "a list, not an object": (
        request_bytes("POST", "/v1/classify", b'["good"]', headers=JSON),
        400,
        "expected",
    ),
    "a number for text": (
        request_bytes("POST", "/v1/classify", b'{"text": 5}', headers=JSON),
        400,
        "with strings",
    ),
    "too many texts": (
        _post_bytes({"texts": ["good"] * (MAX_TEXTS + 1)}),
        400,
        f"at most {MAX_TEXTS}",
    ),
    "text/plain": (
        request_bytes(
            "POST", "/v1/classify", b'{"text": "good"}', headers={"Content-Type": "text/plain"}
        ),
        415,
        "application/json",
    ),
    "no Content-Type": (
        request_bytes("POST", "/v1/classify", b'{"text": "good"}'),
        415,
        "application/json",
    ),
    "latin-1 charset": (
        request_bytes(
            "POST",
            "/v1/classify",
            b'{"text": "good"}',
            headers={"Content-Type": "application/json; charset=latin-1"},
        ),
        415,
        "UTF-8",
    ),
    "no Content-Length": (
        request_bytes("POST", "/v1/classify", b"", headers=JSON, content_length=False),
        411,
        "Content-Length",
    ),
    "chunked": (
        request_bytes(
            "POST",
            "/v1/classify",
            b"5\r\nhello\r\n0\r\n\r\n",
            headers={**JSON, "Transfer-Encoding": "chunked"},
            content_length=False,
        ),
        411,
        "Content-Length",
    ),
    "Content-Length not a number": (
        request_bytes(
            "POST", "/v1/classify", headers={**JSON, "Content-Length": "12a"}, content_length=False
        ),
        400,
        "Content-Length",
    ),
    "two Content-Lengths": (
        request_bytes(
            "POST",
            "/v1/classify",
            b"{}",
            headers={**JSON, "Content-Length": "2", "content-length": "3"},
            content_length=False,
        ),
        400,
        "Content-Length",
    ),
    "oversize, announced": (
        request_bytes(
            "POST",
            "/v1/classify",
            headers={**JSON, "Content-Length": str(MAX_BODY + 1)},
            content_length=False,
        )
        + b"x" * 65536,
        413,
        "limit",
    ),
    "headers over 16 KiB": (
        request_bytes("GET", "/v1/health", headers={"X-Pad": "p" * 20_000}),
        431,
        "headers",
    ),
    "garbage request line": (b"HELLO THERE\r\n\r\n", 400, "request line"),
    "binary request line": (b"\x16\x03\x01\x02\x00\x01\r\n\r\n", 400, "request line"),
    "HTTP/2.0": (b"GET /v1/health HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", 505, "HTTP/1.1"),
    "GET on classify": (request_bytes("GET", "/v1/classify"), 405, "POST"),
    "DELETE on status": (request_bytes("DELETE", "/v1/status"), 405, "GET"),
    "unknown path": (request_bytes("GET", "/v1/../../etc/passwd"), 404, "no such endpoint"),
    "another host (DNS rebinding)": (
        request_bytes("GET", "/v1/status", host="evil.example:8080"),
        421,
        "127.0.0.1",
    ),
    "bad X-Request-Id": (
        classify_request(**{"X-Request-Id": "x" * 200}),
        400,
        "X-Request-Id",
    ),
    "unknown Expect": (
        request_bytes("POST", "/v1/classify", b"{}", headers={**JSON, "Expect": "magic"}),
        417,
        "Expect",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_a_malformed_request_gets_a_json_4xx_and_the_endpoint_keeps_serving(
    serve, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], case: str
) -> None:
    data, status, says = BAD_REQUESTS[case]
    endpoint, classifier = serve()
    caplog.set_level(logging.DEBUG, logger="fedge")
    answer = exchange(endpoint.port, data)
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert says in error, error
    assert classifier.seen == []  # nothing malformed reached the model
    assert exchange(endpoint.port, classify_request()).status == 200
    assert_no_traceback(caplog, capfd)


def test_an_oversize_body_sent_whole_still_gets_its_413(serve) -> None:
    """http.client sends the whole body before it reads: the endpoint must not reset it."""
    endpoint, _ = serve()
    connection = http.client.HTTPConnection(LOOPBACK, endpoint.port, timeout=10)
    try:
        body = b'{"text": "' + b"a" * MAX_BODY + b'"}'
        connection.request("POST", "/v1/classify", body, JSON)
        response = connection.getresponse()
        assert response.status == 413
        assert "limit" in json.loads(response.read())["error"]
    finally:
        connection.close()


def test_expect_100_continue_is_honoured_only_for_an_acceptable_body(serve) -> None:
    endpoint, _ = serve()
    body = json.dumps({"text": "good"}).encode()
    expect = {**JSON, "Expect": "100-continue"}
    with connect(endpoint.port) as sock:
        sock.sendall(
            request_bytes(
                "POST",
                "/v1/classify",
                headers={**expect, "Content-Length": str(len(body))},
                content_length=False,
            )
        )
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert read_answer(sock).status == 200
    with connect(endpoint.port) as sock:
        sock.sendall(
            request_bytes(
                "POST",
                "/v1/classify",
                headers={**expect, "Content-Length": str(MAX_BODY * 2)},
                content_length=False,
            )
        )
        refused = read_answer(sock)
    assert refused.status == 413  # straight away: no 100, no body read


def test_stop_ends_every_thread_and_frees_the_port(serve) -> None:
    endpoint, _ = serve()
    assert exchange(endpoint.port, classify_request()).status == 200
    threads = endpoint.threads()
    endpoint.stop()
    assert not any(thread.is_alive() for thread in threads)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, endpoint.port))
