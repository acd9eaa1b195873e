"""AWS Signature Version 4 query-string presigning for S3 GET URLs (pure: values in, URL out).

libcloud 3.9's ``S3StorageDriver.get_object_cdn_url`` signs the ``host`` header without the port,
so its URLs fail on any S3-compatible endpoint that is not on 80/443 and checks signatures; and
the driver refuses region names that are not AWS's, which S3-compatible clouds use. This module
follows AWS's "Authenticating Requests: Using Query Parameters" exactly, with the port kept in the
signed host whenever the client will send it, and a path-style URL (``/bucket/key``), which every
S3-compatible endpoint understands.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from urllib.parse import quote

__all__ = ["MAX_EXPIRES_S", "presign_get"]

MAX_EXPIRES_S = 7 * 24 * 3600  # the longest S3 accepts
_ALGORITHM = "AWS4-HMAC-SHA256"


def _uri_encode(text: str, *, keep_slash: bool) -> str:
    # RFC 3986 unreserved characters stay; everything else is %XX, upper-case hex, as AWS wants.
    return quote(text, safe="-_.~/" if keep_slash else "-_.~")


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def _signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret).encode("utf-8"), day)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def presign_get(
    *,
    access_key: str,
    secret_key: str,
    region: str,
    host: str,
    path: str,
    expires_s: int,
    secure: bool = True,
    now: datetime | None = None,
    session_token: str | None = None,
    service: str = "s3",
) -> str:
    """A URL that lets anyone holding it GET ``path`` on ``host`` until ``expires_s`` pass.

    ``host`` is what the HTTP client will send as ``Host``: ``name`` on the default port,
    ``name:port`` otherwise. ``path`` is unencoded (``/bucket/key with spaces``).
    """
    if not 1 <= expires_s <= MAX_EXPIRES_S:
        raise ValueError(f"expires_s must be between 1 and {MAX_EXPIRES_S}, not {expires_s}")
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    amz_date = moment.strftime("%Y%m%dT%H%M%SZ")
    day = moment.strftime("%Y%m%d")
    scope = f"{day}/{region}/{service}/aws4_request"
    params = {
        "X-Amz-Algorithm": _ALGORITHM,
        "X-Amz-Credential": f"{access_key}/{scope}",
        "X-Amz-Date": amz_date,
        "X-Amz-Expires": str(expires_s),
        "X-Amz-SignedHeaders": "host",
    }
    if session_token:
        params["X-Amz-Security-Token"] = session_token
    query = "&".join(
        f"{_uri_encode(key, keep_slash=False)}={_uri_encode(value, keep_slash=False)}"
        for key, value in sorted(params.items())
    )
    canonical_uri = _uri_encode(path, keep_slash=True)
    canonical_request = "\n".join(
        ["GET", canonical_uri, query, f"host:{host}\n", "host", "UNSIGNED-PAYLOAD"]
    )
    string_to_sign = "\n".join(
        [_ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    signature = hmac.new(
        _signing_key(secret_key, day, region, service),
        string_to_sign.encode("utf-8"),
        hashlib.sha256,
    ).hexdigest()
    scheme = "https" if secure else "http"
    return f"{scheme}://{host}{canonical_uri}?{query}&X-Amz-Signature={signature}"
