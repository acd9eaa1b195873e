"""Redeeming an enrollment token: a holder's public key in, a registered SuperLink node out.

The token is one-time and the key is the holder's own (made on its machine by ``fedge-client
enroll``), so what happens here is checking both, then registering the key with the SuperLink
(server/enrollment/control.py) and recording it in the registry, in an order that never leaves a
key admitted for a holder the registry does not call active. The HTTPS endpoint around it is
server/enrollment/service.py.
"""

from __future__ import annotations

import base64
import contextlib
import threading
from collections.abc import Mapping
from typing import Any

from fedge.enroll_token import ca_fingerprint
from fedge.errors import FedgeError, UsageError
from fedge.logs import get_logger
from fedge.node_status import STATE_UNKNOWN, verify_status_request
from server.enrollment.control import NodeControl, unregister_if_present
from server.enrollment.errors import EnrollmentError, UnknownTokenError
from server.enrollment.registry import Registry
from server.enrollment.rules import Claim, Holder, NodePublicKey, parse_node_public_key, parse_token

__all__ = ["Enroller"]

log = get_logger(__name__)


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
                unregister_if_present(self.control, claim.previous_node_id)
            return self.registry.activate(claim, key=key, node_id=node_id, actor=actor)
        except BaseException:
            # The new key must not stay admitted when its holder is not (or no longer) active.
            with contextlib.suppress(FedgeError):
                self.control.unregister(node_id)
            raise
