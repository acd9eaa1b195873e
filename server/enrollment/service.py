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
``fedge enroll sync`` (:func:`sync_nodes`) reconciles the two lists both ways. The Control API
asks for no credential, so the SuperLink listens on loopback, where only the operator reaches
it, and SuperNodes come in through the Fleet API proxy (server/federation/fleet_proxy.py).

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
import io
import json
import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from fedge.bounded import InputError, load_json
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
    "SyncReport",
    "UnknownNode",
    "reconcile",
    "revoke_holder",
    "sync_nodes",
]

log = get_logger(__name__)

MAX_BODY = 64 * 1024
UNREGISTERED = "unregistered"
# How long a claimed token may stay unrecorded before sync takes its node for an unknown one:
# the enrollment's `flwr` commands time out well before this.
IN_FLIGHT = 300.0


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


@dataclass(frozen=True)
class UnknownNode:
    """A node the SuperLink admits that no data holder in the registry has."""

    node_id: int
    status: str


@dataclass
class SyncReport:
    """What :func:`sync_nodes` changed on the SuperLink, and what still disagrees."""

    changes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unknown: list[UnknownNode] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not self.problems


def _refusal_hint(name: str, reason: str) -> str:
    if "already in use" in reason:
        return (
            "the SuperLink keeps the key of a node that was unregistered outside fedge and "
            f"never takes it again: `fedge enroll rotate {name}` gives the holder a new key "
            f"(or, if it was being revoked, run `fedge enroll revoke {name}` again)"
        )
    return "run `fedge enroll sync` again once the SuperLink answers"


def sync_nodes(
    registry: Registry,
    control: NodeControl,
    *,
    actor: str,
    unregister_unknown: bool = False,
) -> SyncReport:
    """Make the SuperLink's node list agree with the registry, both ways; every action audited.

    From the registry to the SuperLink: an active holder whose node the SuperLink no longer
    admits (a SuperLink restarted on an in-memory database forgets every node) has its
    unchanged key registered again; a revoked holder whose node is still admitted is
    unregistered. A key the SuperLink refuses is a problem, reported and audited, and the other
    holders are still synced.

    From the SuperLink to the registry: a node the SuperLink admits that no holder has (someone
    used the Control API behind fedge's back) is reported and audited as ``node.unknown``; with
    ``unregister_unknown`` it is unregistered (``node.unregistered-unknown``), unless an
    enrollment is between registering its key and recording it (then it is left alone and
    reported, and the next sync decides).
    """
    nodes = control.nodes()
    holders = registry.holders()
    report = SyncReport()
    for holder in holders:
        node_id = holder.node_id
        admitted = node_id is not None and nodes.get(node_id, UNREGISTERED) != UNREGISTERED
        if holder.state == "revoked" and admitted and node_id is not None:
            control.unregister(node_id)
            registry.record(
                "node.unregistered",
                holder.name,
                actor=actor,
                detail=f"revoked holder's node {node_id} was still admitted",
            )
            report.changes.append(f"{holder.name}: revoked, unregistered node {node_id}")
        elif holder.state == "active" and not admitted and holder.public_key:
            key = parse_node_public_key(holder.public_key)
            try:
                new_id = control.register(key, name=holder.name)
            except FederationError as exc:
                registry.record(
                    "holder.reregister-failed",
                    holder.name,
                    actor=actor,
                    detail=f"key {key.fingerprint}: {exc}",
                )
                report.problems.append(
                    f"{holder.name}: the SuperLink refused key {key.fingerprint} ({exc}); "
                    + _refusal_hint(holder.name, str(exc))
                )
                continue
            registry.set_node_id(
                holder.name,
                new_id,
                actor=actor,
                detail=f"key {key.fingerprint}: node {node_id} -> {new_id}",
            )
            report.changes.append(
                f"{holder.name}: registered key {key.fingerprint} as node {new_id}"
            )
    known = {holder.node_id for holder in holders if holder.node_id is not None}
    strangers = sorted(
        (node_id, status)
        for node_id, status in nodes.items()
        if status != UNREGISTERED and node_id not in known
    )
    in_flight = registry.claims_in_flight(within=IN_FLIGHT) if strangers else []
    for node_id, status in strangers:
        subject = f"node {node_id}"
        if unregister_unknown and not in_flight:
            control.unregister(node_id)
            registry.record(
                "node.unregistered-unknown",
                subject,
                actor=actor,
                detail=f"was {status}; no data holder in the registry has this node",
            )
            report.changes.append(f"node {node_id}: unknown to the registry, unregistered")
            continue
        detail = f"{status} at the SuperLink; no data holder in the registry has this node"
        if in_flight:
            detail += f"; enrollment in progress: {', '.join(in_flight)}"
        registry.record("node.unknown", subject, actor=actor, detail=detail)
        report.unknown.append(UnknownNode(node_id, status))
        advice = (
            f"left alone while {', '.join(in_flight)} enroll(s); run sync again"
            if unregister_unknown
            else "`fedge enroll sync --unregister-unknown` removes it"
        )
        report.problems.append(
            f"node {node_id}: {status} at the SuperLink but no data holder in the registry has "
            f"it (not enrolled through fedge); {advice}"
        )
    return report


def reconcile(registry: Registry, control: NodeControl, *, actor: str) -> list[str]:
    """:func:`sync_nodes` without unregistering unknown nodes: its changes, then its problems."""
    report = sync_nodes(registry, control, actor=actor)
    return [*report.changes, *report.problems]


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
#
# Bounded like every fedge endpoint: a listen backlog of BACKLOG, at most MAX_HANDLERS
# connections served at once (more wait in the backlog), a deadline of READ_TIMEOUT for each
# request (request line, headers and body together, TLS handshake included), a body cap. Every
# answer is JSON; every refusal closes the connection, and a refusal that leaves a body unread
# drains it for at most LINGER seconds first, so the client reads the answer, not a reset.

MAX_JSON_DEPTH = 8
BACKLOG = 128
MAX_HANDLERS = 32
SLOT_WAIT = 1.0  # a connection waits this long for a free handler, then is dropped
READ_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
LINGER = 1.0
_DRAIN_CAP = 4 * MAX_BODY

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


class _Refused(Exception):  # noqa: N818 - an answer, not a failure
    """A request answered with an error before anything was done with it."""

    def __init__(self, status: HTTPStatus, message: str, *, unread: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.unread = unread  # the body (or some of it) is still on the connection


def _not_text(value: Any) -> str | None:
    """The first field (``name`` or ``a.b[2]``) holding a string that is not UTF-8-encodable
    (a lone surrogate from a ``\\ud800`` escape), or None."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return where or "body"
        elif isinstance(item, dict):
            for key, child in item.items():
                name = f"{where}.{key}" if where else str(key)
                if _not_text(key) is not None:
                    return where or "body"
                stack.append((name, child))
        elif isinstance(item, list):
            stack.extend((f"{where}[{index}]", child) for index, child in enumerate(item))
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = BACKLOG
    enroller: Enroller
    tls: ssl.SSLContext

    def __init__(self, address: tuple[str, int], handler: type[_Handler]) -> None:
        self._slots = threading.BoundedSemaphore(MAX_HANDLERS)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(timeout=SLOT_WAIT):
            log.warning(
                "enrollment: %d connections in progress; dropped one from %s",
                MAX_HANDLERS,
                client_address[0],
            )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gives up (a TLS handshake, a timeout, a reset) is not the server's problem.
        log.debug("connection from %s failed", client_address, exc_info=True)


class _DeadlineReader(io.RawIOBase):
    """Reads from the connection, each read bounded by what is left of the handler's deadline
    (so a client sending a byte every few seconds cannot hold a handler past it)."""

    def __init__(self, sock: socket.socket, handler: _Handler) -> None:
        super().__init__()
        self._sock = sock
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = READ_TIMEOUT
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # answer a malformed request line with headers too
    deadline = 0.0
    _unread = False
    _expects_continue = False

    def setup(self) -> None:
        # TLS in the worker thread, so that a slow handshake never stalls the accept loop.
        self.deadline = time.monotonic() + READ_TIMEOUT
        self.request.settimeout(READ_TIMEOUT)
        self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self))

    def handle_one_request(self) -> None:
        self.deadline = time.monotonic() + READ_TIMEOUT  # an idle keep-alive counts too
        self._expects_continue = False
        super().handle_one_request()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._close()

    def _close(self) -> None:
        """Half-close (the client reads the answer, then end of stream), drop what it still
        sends if a body was left unread, and close."""
        sock = self.connection
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)  # an SSLSocket drops its TLS state here
        if self._unread:
            end, drained = time.monotonic() + LINGER, 0
            while drained < _DRAIN_CAP and (left := end - time.monotonic()) > 0:
                try:
                    sock.settimeout(left)
                    chunk = sock.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                drained += len(chunk)
        sock.close()

    def handle_expect_100(self) -> bool:
        self._expects_continue = True  # sent once the body is known to be acceptable
        return True

    def log_message(self, format: str, *args: Any) -> None:
        # ascii(): a request line is the client's text, control characters included
        log.info("%s %s", self.address_string(), ascii(format % args)[1:-1])

    def log_error(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), ascii(format % args)[1:-1])

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (bad request line, headers too long or too
        many, unknown method), in JSON like the rest."""
        status = HTTPStatus(code)
        self._unread = True  # whatever the request carried is still on the connection
        self._answer(
            status,
            {"error": status.phrase.lower().replace(" ", "-"), "message": message or status.phrase},
        )

    def _answer(self, status: HTTPStatus, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.connection.settimeout(WRITE_TIMEOUT)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if status >= HTTPStatus.BAD_REQUEST or self.close_connection:
            self.send_header("Connection", "close")  # also sets close_connection
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, refused: _Refused) -> None:
        self._unread = self._unread or refused.unread
        error = "too-large" if refused.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE else None
        error = error or refused.status.phrase.lower().replace(" ", "-")
        self._answer(refused.status, {"error": error, "message": refused.message})

    def do_GET(self) -> None:
        if self.headers.get("Content-Length", "0").strip() != "0" or self.headers.get(
            "Transfer-Encoding"
        ):
            self._unread = True
            self.close_connection = True
        if self.path != CA_PATH:
            self._answer(HTTPStatus.NOT_FOUND, {"error": "not-found", "message": self.path})
            return
        self._answer(HTTPStatus.OK, {"ca_cert": self.server.enroller.ca_cert})

    def do_POST(self) -> None:
        try:
            if self.path not in (ENROLL_PATH, STATUS_PATH):
                raise _Refused(HTTPStatus.NOT_FOUND, self.path, unread=True)
            body = self._body()
        except _Refused as refused:
            self._refuse(refused)
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

    def _body(self) -> dict[str, Any]:
        """The request's JSON object, read only once its length is known to be acceptable."""
        if self.headers.get("Transfer-Encoding") is not None:
            raise _Refused(
                HTTPStatus.LENGTH_REQUIRED,
                "send the body with a Content-Length (Transfer-Encoding is not accepted)",
                unread=True,
            )
        raw = (self.headers.get("Content-Length") or "").strip()
        if not raw:
            raise _Refused(HTTPStatus.LENGTH_REQUIRED, "a POST needs a Content-Length", unread=True)
        if not (raw.isascii() and raw.isdigit()):
            raise _Refused(HTTPStatus.BAD_REQUEST, "Content-Length is not a number", unread=True)
        length = int(raw) if len(raw) <= 15 else MAX_BODY + 1
        if length > MAX_BODY:
            raise _Refused(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the body is {length} bytes, over the {MAX_BODY}-byte limit",
                unread=True,
            )
        if self._expects_continue:
            self.send_response_only(HTTPStatus.CONTINUE)
            self.end_headers()
        data = self.rfile.read(length)  # TimeoutError past the deadline: handled by the stdlib
        if len(data) < length:
            raise _Refused(HTTPStatus.BAD_REQUEST, "the body ended before its Content-Length")
        try:
            body = load_json(
                data, source="request body", max_depth=MAX_JSON_DEPTH, allow_constants=False
            )
        except InputError as exc:
            raise _Refused(HTTPStatus.BAD_REQUEST, str(exc)) from None
        if not isinstance(body, dict):
            raise _Refused(HTTPStatus.BAD_REQUEST, f"expected a JSON object of <= {MAX_BODY} B")
        field_name = _not_text(body)
        if field_name is not None:
            raise _Refused(
                HTTPStatus.BAD_REQUEST, f"{field_name}: not Unicode text (a lone surrogate)"
            )
        return body


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
