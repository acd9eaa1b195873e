"""The coordinator's enrollment endpoint, and fedge's hands on the SuperLink's node list.

A data holder enrolls once, from its own machine: ``fedge-client enroll`` makes an EC key pair
there, sends the public half with its one-time token to this endpoint, and gets back what it needs
to join (the CA certificate, the SuperLink's address, the federation's public HE context when the
federation uses one). The endpoint checks the token against the registry
(server/enrollment/registry.py) and registers the key with the SuperLink through Flower's own
Control API client (``flwr supernode register``), which is what ``flower-superlink
--enable-supernode-auth`` admits SuperNodes by. ``fedge enroll revoke`` unregisters a node the same
way (``flwr supernode unregister``): the SuperLink checks every Fleet API call against its node
list, so a revoked SuperNode is turned away on its next call, without restarting anything.

The endpoint is HTTPS with the federation's server certificate (the SuperLink's), on the standard
library's HTTP server: three routes, JSON in and out. ``GET /v1/ca`` hands out the CA certificate
to anyone (it is public); the client trusts it only if its SHA-256 matches the pin inside the
token, and then talks to ``POST /v1/enroll`` over a connection verified against that CA. ``POST
/v1/status`` (fedge/node_status.py) tells an enrolled node, signed with its own key, whether the
coordinator still admits that key, so that ``fedge-client start`` can say it was revoked.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from fedge.enroll_token import CA_PATH, ENROLL_PATH, ca_fingerprint
from fedge.errors import FederationError, FedgeError, UsageError
from fedge.logs import get_logger
from fedge.node_status import STATE_UNKNOWN, STATUS_PATH, verify_status_request
from server.enrollment.errors import (
    DuplicateKeyError,
    DuplicateNameError,
    EnrollmentError,
    RevokedHolderError,
    TokenError,
    UnknownTokenError,
)
from server.enrollment.registry import Registry
from server.enrollment.rules import (
    Claim,
    Holder,
    NodePublicKey,
    parse_node_public_key,
    parse_token,
)
from server.federation.deployment_engine import CONNECTION, flwr_json

__all__ = [
    "Enroller",
    "EnrollmentServer",
    "NodeControl",
    "SuperLinkControl",
    "reconcile",
    "revoke_holder",
]

log = get_logger(__name__)

MAX_BODY = 64 * 1024
UNREGISTERED = "unregistered"


# ------------------------------------------------------------------------ the SuperLink side


class NodeControl(Protocol):
    """What enrollment needs from the SuperLink: add a key, drop a node, see the nodes."""

    def register(self, key: NodePublicKey, *, name: str) -> int: ...

    def unregister(self, node_id: int) -> None: ...

    def nodes(self) -> dict[int, str]: ...


@dataclass(frozen=True)
class SuperLinkControl:
    """The SuperLink's Control API through ``flwr supernode``, with a private ``FLWR_HOME``
    written by :func:`server.federation.deployment_engine.write_flwr_home`."""

    flwr_home: Path
    flwr: str = "flwr"

    def register(self, key: NodePublicKey, *, name: str) -> int:
        """Register ``key``; the SuperLink's node id for it."""
        with tempfile.TemporaryDirectory(prefix="fedge-enroll-") as scratch:
            key_file = Path(scratch) / "supernode.pub"
            key_file.write_text(f"{key.openssh} {name}\n", encoding="ascii")
            payload, _ = flwr_json(
                [
                    *("supernode", "register", str(key_file), CONNECTION),
                    *("--format", "json", "--name", name),
                ],
                flwr_home=self.flwr_home,
                flwr=self.flwr,
            )
        try:
            return int(str(payload["node-id"]))
        except (KeyError, ValueError) as exc:
            raise FederationError(f"`flwr supernode register`: no node id in {payload}") from exc

    def unregister(self, node_id: int) -> None:
        flwr_json(
            ["supernode", "unregister", str(node_id), CONNECTION, "--format", "json"],
            flwr_home=self.flwr_home,
            flwr=self.flwr,
        )

    def nodes(self) -> dict[int, str]:
        """Node id -> status (``registered``, ``online``, ``offline``, ``unregistered``)."""
        payload, _ = flwr_json(
            ["supernode", "ls", CONNECTION, "--format", "json"],
            flwr_home=self.flwr_home,
            flwr=self.flwr,
        )
        found: dict[int, str] = {}
        for node in payload.get("nodes") or []:
            if isinstance(node, dict) and str(node.get("node-id", "")).isdigit():
                found[int(str(node["node-id"]))] = str(node.get("status", ""))
        return found


def _unregister_if_present(control: NodeControl, node_id: int) -> bool:
    """Unregister ``node_id`` unless the SuperLink no longer admits it; whether it did."""
    if control.nodes().get(node_id, UNREGISTERED) == UNREGISTERED:
        return False
    control.unregister(node_id)
    return True


def revoke_holder(
    registry: Registry, control: NodeControl | None, name: str, *, actor: str, reason: str = ""
) -> Holder:
    """Unregister the holder's node from the SuperLink, then mark it revoked in the registry.

    In that order, so the registry never says ``revoked`` while the SuperLink still admits the
    key; a failure leaves both as they were, and the command can simply be run again. Without a
    ``control`` (no SuperLink given) only a holder that never registered a node can be revoked.
    """
    holder = registry.holder(name)
    if holder.state != "revoked" and holder.node_id is not None:
        if control is None:
            raise UsageError(
                f"data holder {name} has SuperLink node {holder.node_id}: give --superlink "
                "and --ca so that the node can be unregistered"
            )
        _unregister_if_present(control, holder.node_id)
    return registry.revoke(name, actor=actor, reason=reason)  # refuses a second revocation


def reconcile(registry: Registry, control: NodeControl, *, actor: str) -> list[str]:
    """Make the SuperLink's node list agree with the registry; one line per change made.

    An active holder whose node the SuperLink lost (a SuperLink restarted on an in-memory
    database forgets every node) has its unchanged key registered again; a revoked holder whose
    node the SuperLink still admits is unregistered.
    """
    nodes = control.nodes()
    changes: list[str] = []
    for holder in registry.holders():
        admitted = holder.node_id is not None and nodes.get(holder.node_id, UNREGISTERED) not in (
            UNREGISTERED,
        )
        if holder.state == "revoked" and admitted and holder.node_id is not None:
            control.unregister(holder.node_id)
            changes.append(f"{holder.name}: revoked, unregistered node {holder.node_id}")
        elif holder.state == "active" and not admitted and holder.public_key:
            key = parse_node_public_key(holder.public_key)
            node_id = control.register(key, name=holder.name)
            registry.set_node_id(
                holder.name,
                node_id,
                actor=actor,
                detail=f"key {key.fingerprint}: node {holder.node_id} -> {node_id}",
            )
            changes.append(f"{holder.name}: registered key {key.fingerprint} as node {node_id}")
    return changes


# --------------------------------------------------------------------------------- enrolling


class Enroller:
    """Redeem a token for a registered key: the logic behind ``POST /v1/enroll``.

    Requests are handled one at a time (a lock), since each drives ``flwr`` commands against the
    one SuperLink; the registry's transactions keep a token one-time even across processes.
    """

    def __init__(
        self,
        registry: Registry,
        control: NodeControl,
        *,
        superlink: str,
        ca_cert: str,
        he_public_context: bytes | None = None,
    ) -> None:
        self.registry = registry
        self.control = control
        self.superlink = superlink
        self.ca_cert = ca_cert
        self.ca_sha256 = ca_fingerprint(ca_cert)
        self.he_public_context = he_public_context
        self._lock = threading.Lock()

    def enroll(self, body: Mapping[str, Any], *, peer: str) -> dict[str, Any]:
        """Check, claim, register, record; the answer the data holder's client needs."""
        token, public_key, name = body.get("token"), body.get("public_key"), body.get("name")
        if not isinstance(token, str) or not isinstance(public_key, str):
            raise UsageError("request: expected JSON with string fields token and public_key")
        if name is not None and not isinstance(name, str):
            raise UsageError("request: name must be a string")
        secret, pin = parse_token(token)
        if pin != self.ca_sha256:
            raise UnknownTokenError(
                "this token pins another CA certificate: it was issued by another coordinator"
            )
        key = parse_node_public_key(public_key)
        actor = f"enroll-service ({peer})"
        with self._lock:
            claim = self.registry.claim(secret, actor=actor)
            try:
                if name is not None and name != claim.name:
                    raise UnknownTokenError(
                        f"this token is for data holder {claim.name}, not {name}"
                    )
                self.registry.check_key_free(claim, key.fingerprint)
                holder = self._register(claim, key, actor=actor)
            except BaseException as exc:
                reason = exc.reason if isinstance(exc, EnrollmentError) else type(exc).__name__
                self.registry.release(claim, actor=actor, reason=reason)
                raise
        log.info("enrolled %s: key %s, node %s", holder.name, key.fingerprint, holder.node_id)
        return {
            "name": holder.name,
            "node_id": str(holder.node_id),
            "fingerprint": key.fingerprint,
            "superlink": self.superlink,
            "ca_cert": self.ca_cert,
            "he_public_context": (
                base64.b64encode(self.he_public_context).decode("ascii")
                if self.he_public_context is not None
                else None
            ),
        }

    def status(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/status``: the state of the signer's own key (fedge/node_status.py).

        The signature is checked before the registry is read, and the answer is about that key
        only (its holder's name and state, or ``unknown``), so it never tells whether any other
        name exists.
        """
        key = parse_node_public_key(verify_status_request(body))
        holder = self.registry.holder_by_fingerprint(key.fingerprint)
        if holder is None:
            return {"state": STATE_UNKNOWN, "fingerprint": key.fingerprint}
        return {"state": holder.state, "name": holder.name, "fingerprint": key.fingerprint}

    def _register(self, claim: Claim, key: NodePublicKey, *, actor: str) -> Holder:
        node_id = self.control.register(key, name=claim.name)
        try:
            if claim.purpose == "rotate" and claim.previous_node_id is not None:
                _unregister_if_present(self.control, claim.previous_node_id)
            return self.registry.activate(claim, key=key, node_id=node_id, actor=actor)
        except BaseException:
            # The new key must not stay admitted when its holder is not (or no longer) active.
            with contextlib.suppress(FedgeError):
                self.control.unregister(node_id)
            raise


# ------------------------------------------------------------------------------- the server

_STATUS: list[tuple[type[Exception], HTTPStatus]] = [
    (TokenError, HTTPStatus.FORBIDDEN),
    (RevokedHolderError, HTTPStatus.FORBIDDEN),
    (DuplicateKeyError, HTTPStatus.CONFLICT),
    (DuplicateNameError, HTTPStatus.CONFLICT),
    (UsageError, HTTPStatus.BAD_REQUEST),
    (FederationError, HTTPStatus.BAD_GATEWAY),
    (FedgeError, HTTPStatus.INTERNAL_SERVER_ERROR),
]


def _error_answer(exc: Exception) -> tuple[HTTPStatus, dict[str, str]]:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            reason = getattr(exc, "reason", None) or kind.__name__
            return status, {"error": str(reason), "message": str(exc)}
    log.exception("enrollment request failed")
    return HTTPStatus.INTERNAL_SERVER_ERROR, {
        "error": "internal",
        "message": "the enrollment service failed; see its log",
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    enroller: Enroller
    tls: ssl.SSLContext

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gives up during the TLS handshake is not the server's problem.
        log.debug("connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 30
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        # TLS in the worker thread, so that a slow handshake never stalls the accept loop.
        self.request.settimeout(self.timeout)
        self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _answer(self, status: HTTPStatus, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path != CA_PATH:
            self._answer(HTTPStatus.NOT_FOUND, {"error": "not-found", "message": self.path})
            return
        self._answer(HTTPStatus.OK, {"ca_cert": self.server.enroller.ca_cert})

    def do_POST(self) -> None:
        if self.path not in (ENROLL_PATH, STATUS_PATH):
            self._answer(HTTPStatus.NOT_FOUND, {"error": "not-found", "message": self.path})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
            if not 0 < length <= MAX_BODY:
                raise ValueError(length)
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise TypeError(type(body).__name__)
        except (ValueError, TypeError):
            self.close_connection = True
            self._answer(
                HTTPStatus.BAD_REQUEST,
                {"error": "bad-request", "message": f"expected a JSON object of <= {MAX_BODY} B"},
            )
            return
        try:
            enroller = self.server.enroller
            if self.path == STATUS_PATH:
                answer = enroller.status(body)
            else:
                answer = enroller.enroll(body, peer=self.client_address[0])
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON answer
            status, payload = _error_answer(exc)
            self._answer(status, payload)
            return
        self._answer(HTTPStatus.OK, answer)


class EnrollmentServer:
    """The HTTPS endpoint on ``host:port`` (port 0: a free one), served from a thread.

    ``certfile``/``keyfile``: the federation's server certificate (``fedge certs``), which the
    client checks against the CA that its token pins.
    """

    def __init__(
        self,
        enroller: Enroller,
        *,
        certfile: str | os.PathLike[str],
        keyfile: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(
                f"{certfile}: cannot load the server certificate and key: {exc}"
            ) from exc
        try:
            self._httpd = _Server((host, port), _Handler)
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        self._httpd.enroller = enroller
        self._httpd.tls = context
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        host, port = self._httpd.server_address[:2]
        shown = host.decode() if isinstance(host, bytes) else str(host)
        return f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"

    def start(self) -> EnrollmentServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.2},
                name="fedge-enroll",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        with contextlib.suppress(OSError):
            self._httpd.server_close()

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C in ``fedge enroll serve``)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def __enter__(self) -> EnrollmentServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
