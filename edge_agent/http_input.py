"""The local HTTP endpoint: classify text sent by programs on the same device.

It binds to 127.0.0.1 only (never a routable address: the device's data stays on the device) and
speaks small JSON::

    POST /v1/classify   {"text": "..."} or {"texts": ["...", ...]} ->
                        {"artifact", "version", "latencyMs", "predictions": [...]}
    POST /v1/explain    {"text": "..."} -> {"artifact", "version", "label", "score", "scores",
                        "method": "occlusion", "words": [{"word", "start", "end",
                        "attribution"}, ...], "ms"}
    GET  /v1/health     200 {"status": "ok", ...} once a model is served, else 503
    GET  /v1/status     the device's ``reported`` document

``POST`` needs ``Content-Type: application/json`` (415 otherwise: a web page cannot send that
without the browser asking first) and a ``Content-Length`` (411; chunked bodies are refused). Every
refusal is a 4xx with a one-line ``{"error": ...}``: 400 for a body that is not a JSON object of
UTF-8 text, nested more than :data:`MAX_JSON_DEPTH` deep, or whose text cannot be encoded as
UTF-8 (a lone surrogate such as ``"\\ud800"``), naming the field; 413 over :data:`MAX_BODY`;
421 for a ``Host`` other than 127.0.0.1 or localhost (DNS rebinding); 503 while no model is
installed yet, or when more requests wait than :class:`Limits` allows (with ``Retry-After``).

``/v1/explain`` costs one inference per word (edge_agent/explain.py), so it has bounds of its own,
each refusal naming its limit: 413 for a body over :data:`MAX_EXPLAIN_BODY` (16 KiB), 422 for a
text over :data:`~edge_agent.explain.MAX_WORDS` (64) words or over the model's ``max_length``
tokens, 503 when it runs past its deadline (:data:`~edge_agent.explain.DEADLINE_S`, 5 s), and 503
with ``Retry-After`` while another explanation runs: one at a time, so the other workers stay free
to classify. Explanations are not counted in the device's latency telemetry (one is many
inferences, and the rollout's health judges single ones).

Whatever the clients do, it stays within a fixed number of threads and bounded memory: the
connections, the wire format and those bounds are edge_agent/http_server.py's and
edge_agent/http_wire.py's; this module is the routes and the JSON rules, run on the server's
workers.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from http import HTTPStatus
from typing import Any, Final

from edge_agent.explain import METHOD, DeadlineError, TooLongError
from edge_agent.http_server import MAX_BODY, Answer, BoundedServer, Limits
from edge_agent.http_wire import LOOPBACK, Head, Request, RequestError, error_body, shown
from edge_agent.serving import Classifier, Explaining, NoModelError
from fedge.bounded import InputError, load_json
from fedge.errors import EdgeError
from fedge.logs import get_logger

__all__ = [
    "LOOPBACK",
    "MAX_BODY",
    "MAX_EXPLAIN_BODY",
    "MAX_JSON_DEPTH",
    "MAX_TEXTS",
    "HttpInput",
    "Limits",
]

log = get_logger(__name__)

MAX_TEXTS: Final = 64
MAX_JSON_DEPTH: Final = 8  # {"texts": [...]} is 2 deep
MAX_REQUEST_ID: Final = 128
MAX_EXPLAIN_BODY: Final = 16 * 1024

_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID}}}")


def _document(body: bytes) -> Any:
    try:
        return load_json(
            body, source="request body", max_depth=MAX_JSON_DEPTH, allow_constants=False
        )
    except InputError as exc:
        raise RequestError(HTTPStatus.BAD_REQUEST, str(exc)) from None


def _texts(body: bytes) -> list[str]:
    doc = _document(body)
    if not isinstance(doc, dict):
        raise RequestError(HTTPStatus.BAD_REQUEST, 'expected {"text": "..."} or {"texts": [...]}')
    if "text" in doc and isinstance(doc["text"], str):
        _check_unicode(doc["text"], "text")
        return [doc["text"]]
    texts = doc.get("texts")
    if isinstance(texts, list) and texts and all(isinstance(text, str) for text in texts):
        if len(texts) > MAX_TEXTS:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"at most {MAX_TEXTS} texts per request")
        for index, text in enumerate(texts):
            _check_unicode(text, f"texts[{index}]")
        return texts
    raise RequestError(
        HTTPStatus.BAD_REQUEST, 'expected {"text": "..."} or {"texts": [...]} with strings'
    )


def _text(body: bytes) -> str:
    """The one text of an explanation request."""
    doc = _document(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
        raise RequestError(HTTPStatus.BAD_REQUEST, 'expected {"text": "..."} with a string')
    text: str = doc["text"]
    _check_unicode(text, "text")
    return text


def _check_unicode(text: str, field: str) -> None:
    """Refuse a string the tokenizer, the log and the results could not encode as UTF-8.

    JSON's ``\\ud800`` escapes parse into lone surrogates, which are not Unicode text.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"{field}: not Unicode text (lone surrogate {ascii(text[exc.start])[1:-1]} at "
            f"character {exc.start})",
        ) from None


class _Answers:
    """The routes; run on the worker threads, each call returns an answer and never raises."""

    def __init__(self, classifier: Classifier, explainer: Explaining | None) -> None:
        self.classifier = classifier
        self.explainer = explainer
        self._explaining = threading.BoundedSemaphore(1)

    def answer(self, request: Request) -> Answer:
        head = request.head
        try:
            return self._route(request)
        except RequestError as refusal:
            log.debug(
                "http %s %s: %d %s",
                head.method,
                shown(head.target),
                int(refusal.status),
                refusal.message,
            )
            return refusal.status, error_body(refusal.message), refusal.headers
        except NoModelError as exc:
            return HTTPStatus.SERVICE_UNAVAILABLE, error_body(str(exc)), ()
        except EdgeError as exc:
            return HTTPStatus.INTERNAL_SERVER_ERROR, error_body(str(exc)), ()
        except Exception as exc:
            log.warning("http %s %s failed: %s", head.method, shown(head.target), shown(repr(exc)))
            log.debug("http request failed", exc_info=True)
            return HTTPStatus.INTERNAL_SERVER_ERROR, error_body("internal error (see the log)"), ()

    def _route(self, request: Request) -> Answer:
        head = request.head
        if head.path == "/v1/classify":
            self._allow(head, "POST")
            return HTTPStatus.OK, self._classify(request), ()
        if head.path == "/v1/explain" and self.explainer is not None:
            self._allow(head, "POST")
            return HTTPStatus.OK, self._explain(request, self.explainer), ()
        if head.path == "/v1/status":
            self._allow(head, "GET")
            return HTTPStatus.OK, self.classifier.status_document(), ()
        if head.path == "/v1/health":
            self._allow(head, "GET")
            return self._health()
        raise RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint {shown(head.path)}")

    @staticmethod
    def _allow(head: Head, method: str) -> None:
        if head.method != method:
            raise RequestError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{head.path} answers {method}, not {shown(head.method)}",
                headers=(("Allow", method),),
            )

    def _health(self) -> Answer:
        status = json.loads(self.classifier.status_document())
        current = status.get("current")
        code = HTTPStatus.OK if current else HTTPStatus.SERVICE_UNAVAILABLE
        doc = {"status": "ok" if current else "no-model", "current": current}
        return code, json.dumps(doc).encode("utf-8"), ()

    @staticmethod
    def _check_json(request: Request) -> None:
        headers = request.head.headers
        content_type = (headers.get("Content-Type") or "").partition(";")[0].strip().lower()
        if content_type != "application/json":
            raise RequestError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Type must be application/json, not {shown(content_type or 'none')}",
            )
        charset = headers.get_param("charset", header="Content-Type")
        if isinstance(charset, str) and charset.lower() not in ("utf-8", "utf8"):
            raise RequestError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"the body must be UTF-8, not {shown(charset)}"
            )

    def _classify(self, request: Request) -> bytes:
        self._check_json(request)
        request_id = request.head.headers.get("X-Request-Id")
        if request_id is None:
            request_id = uuid.uuid4().hex[:12]
        elif not _REQUEST_ID.fullmatch(request_id):
            raise RequestError(
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

    def _explain(self, request: Request, explainer: Explaining) -> bytes:
        if len(request.body) > MAX_EXPLAIN_BODY:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the body is {len(request.body)} bytes, over the {MAX_EXPLAIN_BODY}-byte limit "
                "of an explanation",
            )
        self._check_json(request)
        text = _text(request.body)
        if not self._explaining.acquire(blocking=False):
            raise RequestError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "another explanation is running (one at a time): retry shortly",
                headers=(("Retry-After", "1"),),
            )
        try:
            result = explainer.explain(text)
        except TooLongError as exc:
            raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, f"text: {exc}") from None
        except DeadlineError as exc:
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from None
        finally:
            self._explaining.release()
        explanation = result.explanation
        return json.dumps(
            {
                "artifact": result.artifact,
                "version": result.version,
                "label": explanation.label,
                "score": explanation.score,
                "scores": explanation.scores,
                "method": METHOD,
                "words": explanation.word_items(),
                "ms": round(explanation.ms, 3),
            }
        ).encode("utf-8")


class HttpInput:
    """The endpoint's threads; ``port`` is the bound one (useful when asked for 0).

    ``explainer`` serves ``POST /v1/explain`` (without one, that path is not found).
    """

    def __init__(
        self,
        classifier: Classifier,
        *,
        port: int,
        limits: Limits | None = None,
        explainer: Explaining | None = None,
    ) -> None:
        try:
            self._server = BoundedServer(
                _Answers(classifier, explainer).answer, port, limits or Limits()
            )
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
