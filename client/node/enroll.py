"""``fedge-client enroll``: join a federation with a one-time token, keeping the key at home.

The operator gives the data holder a token (``fedge enroll token NAME``) and the coordinator's
enrollment address, out of band. This module then, on the data holder's machine:

1. reads the SHA-256 of the federation's CA certificate out of the token, fetches the CA from the
   coordinator and refuses it unless the digests match, so that the first contact is already
   authenticated (a man in the middle cannot present a CA with that digest);
2. makes an EC P-384 key pair, the kind Flower's SuperNode authentication uses, and writes the
   private half in OpenSSH format, mode 0600 from the first byte; it never leaves the machine;
3. sends the public half and the token over HTTPS checked against that CA; the coordinator
   registers the key with the SuperLink and answers with what joining needs;
4. writes ``ca.crt``, ``supernode.key``/``supernode.pub``, the federation's public HE context
   when it has one, and last ``join.json`` (the SuperLink's address and the paths), each
   atomically, into the state directory. ``fedge-client start`` reads ``join.json``.

The new key goes to a temporary name until the coordinator accepts it, so a failed re-enrollment
(a key rotation) leaves the key that works in place.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import http.client
import json
import os
import ssl
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from fedge import enroll_token
from fedge.atomic import atomic_write_bytes, atomic_write_text
from fedge.bounded import InputError, load_json, read_capped
from fedge.errors import FedgeError, UsageError
from fedge.he_wire import PUBLIC_CONTEXT_FILE
from fedge.node_keys import generate_node_key

__all__ = [
    "CA_FILE",
    "JOIN_FILE",
    "KEY_FILE",
    "PUBLIC_KEY_FILE",
    "CoordinatorError",
    "EnrollmentRefusedError",
    "JoinInfo",
    "PinMismatchError",
    "enroll",
    "enroll_command",
    "generate_node_key",
    "load_join",
    "parse_token",
    "request_json",
]

KEY_FILE = "supernode.key"
PUBLIC_KEY_FILE = "supernode.pub"
CA_FILE = "ca.crt"
JOIN_FILE = "join.json"
TOKEN_ENV = "FEDGE_ENROLL_TOKEN"  # noqa: S105 - the variable's name

_MAX_ANSWER = 1024 * 1024


class EnrollmentRefusedError(UsageError):
    """The coordinator refused the token or the request (expired, already used, revoked)."""


class PinMismatchError(FedgeError):
    """The coordinator's CA is not the one the token pins: wrong address, or an impostor."""


class CoordinatorError(FedgeError):
    """The coordinator could not be reached or failed on its side."""


@dataclass(frozen=True)
class JoinInfo:
    """What ``join.json`` holds: enough for ``fedge-client start`` to join on its own."""

    name: str
    node_id: int
    superlink: str
    root_certificates: str
    auth_private_key: str
    fingerprint: str
    coordinator: str
    enrolled_at: str
    he_public_context: str | None = None


def parse_token(text: str) -> tuple[str, str]:
    """``(secret, CA sha256)`` of ``--token``, in the format of :mod:`fedge.enroll_token`."""
    try:
        return enroll_token.parse_token(text)
    except UsageError as exc:
        raise UsageError(
            f"--token: not a fedge enrollment token (expected {enroll_token.TOKEN_FORMAT}"
            ", as printed by `fedge enroll token`)"
        ) from exc


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--coordinator {address!r}: expected HOST:PORT")
    return host, int(port)


def _ca_sha256(pem: str) -> str:
    try:
        return enroll_token.ca_fingerprint(pem)
    except UsageError as exc:
        raise CoordinatorError("the coordinator's CA certificate is not PEM") from exc


def request_json(
    host: str,
    port: int,
    context: ssl.SSLContext,
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    timeout: float,
) -> tuple[int, dict[str, Any]]:
    """One JSON request to the coordinator's enrollment endpoint: (status, JSON object)."""
    where = f"{host}:{port}"
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=timeout)
    try:
        data = json.dumps(body).encode("utf-8") if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        raw = response.read(_MAX_ANSWER + 1)
    except ssl.SSLCertVerificationError as exc:
        raise PinMismatchError(
            f"coordinator {where}: its certificate is not signed by the pinned CA "
            f"({exc.verify_message}); check --coordinator"
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise CoordinatorError(f"coordinator {where}: cannot reach it ({exc})") from exc
    finally:
        connection.close()
    try:
        payload = json.loads(raw) if len(raw) <= _MAX_ANSWER else None
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise CoordinatorError(
            f"coordinator {where}: answered {response.status} without a JSON object "
            "(is this fedge's enrollment address?)"
        )
    return response.status, payload


def _fetch_pinned_ca(host: str, port: int, ca_sha256: str, *, timeout: float) -> str:
    """The coordinator's CA certificate, trusted only because its digest is the token's pin."""
    # Nothing is verified on this one connection, and nothing secret is sent over it: what comes
    # back is checked against the pin before it is used.
    bootstrap = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bootstrap.check_hostname = False
    bootstrap.verify_mode = ssl.CERT_NONE
    status, payload = request_json(
        host, port, bootstrap, "GET", enroll_token.CA_PATH, timeout=timeout
    )
    pem = payload.get("ca_cert")
    if status != 200 or not isinstance(pem, str):
        raise CoordinatorError(f"coordinator {host}:{port}: no CA certificate ({status})")
    found = _ca_sha256(pem)
    if found != ca_sha256:
        raise PinMismatchError(
            f"coordinator {host}:{port} presents CA sha256 {found[:16]}..., but the token pins "
            f"{ca_sha256[:16]}...: wrong --coordinator, or someone is in between"
        )
    return pem


def _refusal(status: int, payload: dict[str, Any], where: str) -> FedgeError:
    message = str(payload.get("message") or payload.get("error") or f"status {status}")
    if 400 <= status < 500:
        return EnrollmentRefusedError(f"--token: {message}")
    return CoordinatorError(f"coordinator {where}: {message}")


def _answer_fields(payload: dict[str, Any], ca_sha256: str, where: str) -> tuple[str, int, str]:
    name, node_id, superlink = payload.get("name"), payload.get("node_id"), payload.get("superlink")
    ca_cert = payload.get("ca_cert")
    if not (
        isinstance(name, str)
        and isinstance(superlink, str)
        and isinstance(ca_cert, str)
        and str(node_id).isdigit()
    ):
        raise CoordinatorError(f"coordinator {where}: incomplete enrollment answer")
    if _ca_sha256(ca_cert) != ca_sha256:
        raise PinMismatchError(f"coordinator {where}: answered with a CA the token does not pin")
    return name, int(str(node_id)), superlink


def enroll(
    *,
    coordinator: str,
    token: str,
    state_dir: str | os.PathLike[str],
    name: str | None = None,
    timeout: float = 60.0,
) -> JoinInfo:
    """Enroll this machine (see the module docstring); the ``join.json`` written, as values."""
    _secret, ca_sha256 = parse_token(token)  # the coordinator checks the secret part
    host, port = _split_address(coordinator)
    where = f"{host}:{port}"
    ca_pem = _fetch_pinned_ca(host, port, ca_sha256, timeout=timeout)
    pinned = ssl.create_default_context(cadata=ca_pem)
    pinned.minimum_version = ssl.TLSVersion.TLSv1_2

    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    private, public = generate_node_key()
    pending = state / f".{KEY_FILE}.pending"
    atomic_write_bytes(pending, private, mode=0o600)
    try:
        body: dict[str, Any] = {"token": token.strip(), "public_key": public}
        if name is not None:
            body["name"] = name
        status, payload = request_json(
            host, port, pinned, "POST", enroll_token.ENROLL_PATH, body=body, timeout=timeout
        )
        if status != 200:
            raise _refusal(status, payload, where)
        holder, node_id, superlink = _answer_fields(payload, ca_sha256, where)
        he_path: Path | None = None
        he_context = payload.get("he_public_context")
        if isinstance(he_context, str):
            try:
                he_bytes = base64.b64decode(he_context, validate=True)
            except binascii.Error as exc:
                raise CoordinatorError(f"coordinator {where}: damaged HE context") from exc
            he_path = atomic_write_bytes(state / PUBLIC_CONTEXT_FILE, he_bytes)
        ca_path = atomic_write_text(state / CA_FILE, str(payload["ca_cert"]))
        atomic_write_text(state / PUBLIC_KEY_FILE, f"{public} {holder}\n")
        os.replace(pending, state / KEY_FILE)
    finally:
        with contextlib.suppress(FileNotFoundError):
            pending.unlink()
    info = JoinInfo(
        name=holder,
        node_id=node_id,
        superlink=superlink,
        root_certificates=str(ca_path),
        auth_private_key=str(state / KEY_FILE),
        fingerprint=str(payload.get("fingerprint", "")),
        coordinator=where,
        enrolled_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        he_public_context=str(he_path) if he_path is not None else None,
    )
    atomic_write_text(state / JOIN_FILE, json.dumps(asdict(info), indent=2) + "\n", mode=0o600)
    return info


def load_join(state_dir: str | os.PathLike[str]) -> JoinInfo:
    """The ``join.json`` that :func:`enroll` wrote into ``state_dir``."""
    path = Path(state_dir) / JOIN_FILE
    if not path.exists():
        raise UsageError(f"{path}: not enrolled yet (run `fedge-client enroll` first)")
    try:
        data = load_json(read_capped(path, limit=1 << 20, what="a join file"), source=str(path))
        return JoinInfo(**data)
    except (InputError, TypeError) as exc:
        raise UsageError(f"{path}: not a join file written by `fedge-client enroll`") from exc


def enroll_command(
    coordinator: Annotated[
        str, typer.Option("--coordinator", help="The coordinator's enrollment HOST:PORT.")
    ],
    token: Annotated[
        str,
        typer.Option(
            "--token",
            envvar=TOKEN_ENV,
            help=f"The one-time token from the operator (or set {TOKEN_ENV}).",
        ),
    ],
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Your state folder (keys, join.json, ledger).")
    ],
    *,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Your data holder name, checked against the token's."),
    ] = None,
) -> None:
    """Enroll with the coordinator: make your key pair here, register its public half."""
    from fedge.cli import out

    info = enroll(coordinator=coordinator, token=token, state_dir=state_dir, name=name)
    out.print(f"enrolled as {info.name}: SuperLink node {info.node_id}, key {info.fingerprint}")
    out.print(f"private key {info.auth_private_key} (mode 0600; it never leaves this machine)")
    out.print(f"join settings {Path(state_dir) / JOIN_FILE}; SuperLink {info.superlink}")
