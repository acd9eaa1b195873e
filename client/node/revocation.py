"""Is this enrolled node still admitted? Ask the coordinator, and say so when it is not.

When the operator revokes a data holder, the SuperLink turns its SuperNode away and Flower's
SuperNode exits with a bare connection error. ``fedge-client start`` asks the coordinator's
enrollment endpoint instead (``POST /v1/status``, fedge/node_status.py), before it starts the
SuperNode and again when the SuperNode stops, over HTTPS checked against the CA that enrollment
pinned, with a request signed by the node's own key. A revoked node then ends with
:class:`NodeRevokedError`: one line that says so and how to take part again, and exit code
:data:`EXIT_REVOKED`, which no other fedge failure uses.

Anything else (the endpoint is not running, the network is down) is not a verdict: the caller
carries on as it would without asking.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Final

from client.node.enroll import CoordinatorError, JoinInfo, PinMismatchError, request_json
from fedge.errors import FedgeError
from fedge.logs import get_logger
from fedge.node_status import STATUS_PATH, sign_status_request

__all__ = ["EXIT_REVOKED", "NodeRevokedError", "node_state", "revoked_error"]

log = get_logger(__name__)

EXIT_REVOKED: Final = 77
"""``fedge-client start``'s exit code for a revoked node (sysexits' EX_NOPERM); fedge/cli.py's
codes are 0, 1, 2 and 130."""


class NodeRevokedError(FedgeError):
    """The coordinator revoked this data holder: no restart will let this node back in."""

    exit_code = EXIT_REVOKED


def revoked_error(join: JoinInfo, state_dir: Path) -> NodeRevokedError:
    """The one-line refusal, with the way back (a revoked name is never reused)."""
    return NodeRevokedError(
        f"this node was revoked by the coordinator (data holder {join.name}, SuperLink node "
        f"{join.node_id}); to take part again, ask the operator for an enrollment token under "
        f"a new name (`fedge enroll token NEW-NAME`), then run `fedge-client enroll "
        f"--coordinator {join.coordinator} --token TOKEN --state-dir {state_dir}`"
    )


def node_state(join: JoinInfo, *, timeout: float = 5.0) -> str | None:
    """``active``, ``revoked``, ``pending`` or ``unknown`` for this node's key; None if unasked.

    None when the coordinator cannot be asked or gives no usable answer (its enrollment endpoint
    is not running, say): the caller must not read anything into that.
    """
    host, _, port = join.coordinator.rpartition(":")
    try:
        body = sign_status_request(Path(join.auth_private_key).read_bytes())
        context = ssl.create_default_context(cafile=join.root_certificates)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        status, payload = request_json(
            host.strip("[]"), int(port), context, "POST", STATUS_PATH, body=body, timeout=timeout
        )
    except PinMismatchError as exc:  # an impostor's answer is no verdict either
        log.warning("node status: %s", exc)
        return None
    except (OSError, ValueError, ssl.SSLError, CoordinatorError, FedgeError) as exc:
        log.info("node status: could not ask the coordinator at %s: %s", join.coordinator, exc)
        return None
    state = payload.get("state")
    if status != 200 or not isinstance(state, str):
        log.info("node status: the coordinator answered %s: %s", status, payload.get("message"))
        return None
    return state
