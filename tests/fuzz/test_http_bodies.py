"""The fuzz tier, over the wire: random request bodies at the agent's and the enrollment HTTP
endpoints, both real servers on 127.0.0.1 (the enrollment one over TLS).

Each example is one connection with one POST. Whatever the body (random bytes, random JSON of any
shape, strings with lone surrogates escaped in, valid bodies with bytes flipped), the answer must
be a 2xx or a 4xx with a JSON ``error`` (never a 5xx, a reset or a hang), nothing may reach the
log at warning level or with a traceback, and the endpoint must still serve afterwards.

The agent's endpoint gets a real ONNX model and tokenizer behind the agent's ``Classifier``
interface (as in tests/edge/test_agent_http_limits.py), and behind ``POST /v1/explain`` a real
:class:`~edge_agent.explain.Explainer` (as in tests/edge/test_explain.py); the enrollment endpoint a registry and a
SuperLink stand-in that refuses registrations, so no example can enroll anyone.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.http_input import HttpInput
from edge_agent.inference import InferenceEngine
from fedge.signing import generate_keypair
from fedge.tls import CertPaths, generate_federation_certs
from server.enrollment.registry import Registry
from server.enrollment.service import Enroller, EnrollmentServer
from tests.edge.test_agent_http_limits import EngineClassifier
from tests.edge.test_explain import ServedExplainer
from tests.fuzz.test_documents import json_values
from tests.server.test_enrollment_http_limits import NoSuperLink
from tests.support.edge_artifacts import make_artifact
from tests.support.http_load import Answer, exchange, request_bytes

pytestmark = pytest.mark.timeout(180)

EXAMPLES = int(os.environ.get("FEDGE_FUZZ_HTTP_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("HYPOTHESIS_PROFILE") != "deep",
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
JSON = {"Content-Type": "application/json"}


@st.composite
def bodies(draw: st.DrawFn, valid: dict[str, Any]) -> bytes:
    """Noise, any JSON, the valid body with a field replaced or a surrogate escaped in, or
    the valid body with bytes flipped."""
    kind = draw(st.sampled_from(["noise", "json", "field", "surrogate", "flipped", "deep"]))
    if kind == "noise":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "field":
        key = draw(st.sampled_from(sorted(valid)))
        return json.dumps({**valid, key: draw(json_values)}).encode()
    if kind == "surrogate":
        key = draw(st.sampled_from(sorted(valid)))
        escape = draw(st.sampled_from(["\\ud800", "\\udfff", "\\ud83d", "\\u0000"]))
        return json.dumps({**valid, key: "x"}).replace('"x"', f'"a{escape}b"').encode()
    if kind == "deep":
        depth = draw(st.integers(min_value=8, max_value=5000))
        return b'{"text": ' + b"[" * depth + b"]" * depth + b"}"
    data = bytearray(json.dumps(valid).encode())
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        where = draw(st.integers(min_value=0, max_value=len(data) - 1))
        data[where] = draw(st.integers(min_value=0, max_value=255))
    return bytes(data)


def check(answer: Answer, caplog: pytest.LogCaptureFixture) -> None:
    assert 200 <= answer.status < 500, (answer.status, answer.body[:200])
    if answer.status >= 400:
        assert isinstance(answer.json().get("error"), str), answer.body[:200]
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert noisy == [], [r.getMessage() for r in noisy]
    caplog.clear()


# -- the agent's endpoint -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    folder = tmp_path_factory.mktemp("fuzz-model") / "tiny"
    make_artifact(folder, generate_keypair(), version="1.0.0")
    endpoint = HttpInput(EngineClassifier(InferenceEngine(folder, threads=1)), port=0)
    endpoint.start()
    try:
        yield endpoint.port
    finally:
        endpoint.stop()


@FUZZ
@given(body=bodies({"text": "a good film"}) | bodies({"texts": ["good", "bad"]}))
def test_any_classify_body_gets_a_2xx_or_a_json_4xx(
    agent_port: int, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fedge")
    check(exchange(agent_port, request_bytes("POST", "/v1/classify", body, headers=JSON)), caplog)
    health = exchange(agent_port, request_bytes("GET", "/v1/health"), method="GET")
    assert health.status == 200


@pytest.fixture(scope="module")
def explain_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    folder = tmp_path_factory.mktemp("fuzz-explain-model") / "tiny"
    make_artifact(folder, generate_keypair(), version="1.0.0", int8=True)
    served = ServedExplainer(InferenceEngine(folder, threads=1))
    endpoint = HttpInput(served, port=0, explainer=served)
    endpoint.start()
    try:
        yield endpoint.port
    finally:
        endpoint.stop()


@FUZZ
@given(body=bodies({"text": "a good film, not a bad one"}))
def test_any_explain_body_gets_a_2xx_or_a_json_4xx(
    explain_port: int, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fedge")
    answer = exchange(explain_port, request_bytes("POST", "/v1/explain", body, headers=JSON))
    check(answer, caplog)
    if answer.status == 200:
        doc = answer.json()
        assert all(isinstance(w["attribution"], float) for w in doc["words"]), doc
    health = exchange(explain_port, request_bytes("GET", "/v1/health"), method="GET")
    assert health.status == 200


# -- the enrollment endpoint -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return generate_federation_certs(tmp_path_factory.mktemp("fuzz-certs"))


@pytest.fixture(scope="module")
def enroll_port(tmp_path_factory: pytest.TempPathFactory, certs: CertPaths) -> Iterator[int]:
    workdir: Path = tmp_path_factory.mktemp("fuzz-coordinator")
    enroller = Enroller(
        Registry.in_workdir(workdir),
        NoSuperLink(),
        superlink="127.0.0.1:9092",
        ca_cert=certs.ca_cert.read_text(),
    )
    with EnrollmentServer(enroller, certfile=certs.server_cert, keyfile=certs.server_key) as server:
        yield int(server.address.rsplit(":", 1)[1])


VALID_ENROLL = {"token": "fedge-enroll-v1.abc.def", "name": "clinic-a", "public_key": "AAAA"}


@FUZZ
@given(body=bodies(VALID_ENROLL))
def test_any_enrollment_body_gets_a_json_4xx(
    enroll_port: int, certs: CertPaths, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fedge")
    tls = ssl.create_default_context(cafile=str(certs.ca_cert))
    answer = exchange(enroll_port, request_bytes("POST", "/v1/enroll", body, headers=JSON), tls=tls)
    assert 400 <= answer.status < 500, (answer.status, answer.body[:200])  # nobody enrolls here
    check(answer, caplog)
    ca = exchange(enroll_port, request_bytes("GET", "/v1/ca"), tls=tls, method="GET")
    assert ca.status == 200
