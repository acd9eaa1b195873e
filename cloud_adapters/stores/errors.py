"""libcloud's exceptions, and the HTTP ones under it, turned into fedge's at the boundary.

A caller of :mod:`cloud_adapters` catches :class:`~fedge.errors.CloudError` and never imports
libcloud or requests. Each error names the target and provider, the container and the object,
and says whether trying again may help (``transient``): a refused connection, a timeout, a 5xx or
a throttle are transient; refused credentials, a missing bucket or a 4xx are not, and retrying
them would only delay the one clear line the operator needs. Response bodies are never echoed
whole (they can carry an access key id); only their error code and first line of message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
from libcloud.common.types import InvalidCredsError, LibcloudError
from libcloud.storage.types import (
    ContainerDoesNotExistError,
    ObjectDoesNotExistError,
    ObjectHashMismatchError,
)

from fedge.errors import CloudError, FedgeError, UsageError

__all__ = [
    "PlacementError",
    "PlacementRefusedError",
    "Where",
    "translate",
]

_STATUS = re.compile(r"[Ss]tatus(?:[ _]code)?[:=]?\s*(\d{3})")
_XML_CODE = re.compile(r"<Code>([^<]{1,100})</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<\n]{1,300})")


class PlacementRefusedError(UsageError):
    """The policy cannot be satisfied by the inventory; nothing was uploaded (exit 2)."""


class PlacementError(FedgeError):
    """An apply ended with fewer intact replicas than the policy's minimum (exit 1)."""


@dataclass(frozen=True, slots=True)
class Where:
    """The coordinates every error of one store carries."""

    provider: str
    container: str | None = None

    def error(
        self, message: str, *, object_name: str | None = None, transient: bool = False
    ) -> CloudError:
        return CloudError(
            message,
            provider=self.provider,
            container=self.container,
            object_name=object_name,
            transient=transient,
        )


def _body_summary(text: str) -> str:
    code = _XML_CODE.search(text)
    message = _XML_MESSAGE.search(text)
    parts = [part.group(1).strip() for part in (code, message) if part]
    if parts:
        return ": ".join(parts)
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first[:200]


def _libcloud_text(exc: LibcloudError) -> str:
    value = getattr(exc, "value", None)
    text = str(value) if value is not None else ""
    return "" if text in ("None", "Unknown error") else text


def _chain_text(exc: BaseException) -> str:
    texts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts.append(f"{type(current).__name__} {current}")
        current = current.__cause__ or current.__context__
    return " ".join(texts)


def _network(exc: OSError, endpoint: str | None) -> tuple[str, bool]:
    """requests' errors are OSErrors; they are told apart by name (requests is not imported)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    chain = _chain_text(exc)
    where = f" {endpoint}" if endpoint else ""
    if names & {"Timeout", "ConnectTimeout", "ReadTimeout"} or isinstance(exc, TimeoutError):
        return f"endpoint{where} timed out", True
    if "Connection refused" in chain or isinstance(exc, ConnectionRefusedError):
        return f"endpoint{where} unreachable: connection refused", True
    if "Name or service not known" in chain or "getaddrinfo" in chain:
        return f"endpoint{where} unreachable: the host name does not resolve", True
    if names & {"SSLError"} or "CERTIFICATE_VERIFY_FAILED" in chain:
        return f"endpoint{where}: TLS failed (check tls.caFile)", False
    if names & {"ConnectionError", "ChunkedEncodingError"} or isinstance(exc, ConnectionError):
        return f"endpoint{where} unreachable: connection lost", True
    return f"I/O error talking to{where or ' the store'}: {exc.strerror or exc}", True


def translate(
    exc: BaseException,
    where: Where,
    *,
    object_name: str | None = None,
    endpoint: str | None = None,
) -> CloudError:
    """One :class:`CloudError` for any exception a libcloud call can raise."""
    if isinstance(exc, CloudError):
        return exc
    transient = False
    if isinstance(exc, InvalidCredsError):
        detail = _body_summary(_libcloud_text(exc))
        message = "authentication failed: the store refused the credentials"
        message += f" ({detail})" if detail else ""
        message += "; check credentials.keyRef and secretRef"
    elif isinstance(exc, ContainerDoesNotExistError):
        message = "the container (bucket) does not exist; create it or fix `container`"
        object_name = None
    elif isinstance(exc, ObjectDoesNotExistError):
        message = "the object does not exist"
    elif isinstance(exc, ObjectHashMismatchError):
        message, transient = "the store received different bytes (hash mismatch)", True
    elif isinstance(exc, RateLimitReachedError):
        message, transient = "throttled by the store (rate limit)", True
    elif isinstance(exc, BaseHTTPError):
        code = int(getattr(exc, "code", 0) or 0)
        message = f"HTTP {code}: {_body_summary(str(getattr(exc, 'message', exc)))}"
        transient = code >= 500 or code in (408, 429)
    elif isinstance(exc, LibcloudError):
        text = _libcloud_text(exc)
        status = _STATUS.search(text)
        code = int(status.group(1)) if status else 0
        summary = _body_summary(text) or type(exc).__name__
        message = f"HTTP {code}: {summary}" if code and str(code) not in summary else summary
        transient = code >= 500 or code in (408, 429)
    elif isinstance(exc, OSError):
        message, transient = _network(exc, endpoint)
    else:
        message = f"{type(exc).__name__}: {exc}"
    return where.error(message, object_name=object_name, transient=transient)
