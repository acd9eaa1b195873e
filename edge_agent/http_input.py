"""The local HTTP endpoint: classify text sent by programs on the same device.

It binds to 127.0.0.1 only (never a routable address: the device's data stays on the device) and
speaks small JSON::

    POST /v1/classify   {"text": "..."} or {"texts": ["...", ...]} ->
                        {"artifact", "version", "latencyMs", "predictions": [...]}
    GET  /v1/health     200 {"status": "ok", ...} once a model is served, else 503
    GET  /v1/status     the device's ``reported`` document

Bad requests get 400 with a one-line ``error``; 503 while no model is installed yet.
"""

from __future__ import annotations

import json
import threading
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edge_agent.serving import Classifier, NoModelError
from fedge.errors import EdgeError
from fedge.logs import get_logger

__all__ = ["LOOPBACK", "HttpInput"]

log = get_logger(__name__)

LOOPBACK = "127.0.0.1"
MAX_BODY = 1 << 20
MAX_TEXTS = 64


class _BadRequestError(ValueError):
    pass


def _texts(body: bytes) -> list[str]:
    try:
        doc: Any = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _BadRequestError(f"body is not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise _BadRequestError('expected {"text": "..."} or {"texts": [...]}')
    if "text" in doc and isinstance(doc["text"], str):
        return [doc["text"]]
    texts = doc.get("texts")
    if isinstance(texts, list) and texts and all(isinstance(text, str) for text in texts):
        if len(texts) > MAX_TEXTS:
            raise _BadRequestError(f"at most {MAX_TEXTS} texts per request")
        return texts
    raise _BadRequestError('expected {"text": "..."} or {"texts": [...]} with strings')


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s " + format, self.client_address[0], *args)

    def _send(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _json(self, status: int, doc: dict[str, Any]) -> None:
        self._send(status, json.dumps(doc).encode("utf-8"))

    def do_GET(self) -> None:
        classifier = self.server.classifier
        if self.path == "/v1/status":
            self._send(HTTPStatus.OK, classifier.status_document())
        elif self.path == "/v1/health":
            status = json.loads(classifier.status_document())
            current = status.get("current")
            code = HTTPStatus.OK if current else HTTPStatus.SERVICE_UNAVAILABLE
            self._json(code, {"status": "ok" if current else "no-model", "current": current})
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path}"})

    def do_POST(self) -> None:
        if self.path != "/v1/classify":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self.close_connection = True
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"Content-Length must be 1..{MAX_BODY}"})
            return
        try:
            texts = _texts(self.rfile.read(length))
        except _BadRequestError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        request_id = self.headers.get("X-Request-Id") or uuid.uuid4().hex[:12]
        ids = [request_id] if len(texts) == 1 else [f"{request_id}/{i}" for i in range(len(texts))]
        try:
            result = self.server.classifier.classify(texts, source="http", input_ids=ids)
        except NoModelError as exc:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            return
        except EdgeError as exc:
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})
            return
        self._json(
            HTTPStatus.OK,
            {
                "artifact": result.artifact,
                "version": result.version,
                "latencyMs": round(result.latency_ms, 3),
                "predictions": [
                    {"label": p.label, "score": p.score, "scores": p.scores}
                    for p in result.predictions
                ],
            },
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, classifier: Classifier) -> None:
        self.classifier = classifier
        super().__init__((LOOPBACK, port), _Handler)


class HttpInput:
    """The endpoint's server thread; ``port`` is the bound one (useful when asked for 0)."""

    def __init__(self, classifier: Classifier, *, port: int) -> None:
        try:
            self._server = _Server(port, classifier)
        except OSError as exc:
            raise EdgeError(
                f"spec.input.http.port: cannot listen on {LOOPBACK}:{port} ({exc.strerror})"
            ) from exc
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"fedge-http-{self.port}",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
