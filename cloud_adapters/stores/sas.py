"""Azure Blob service SAS for reading one blob (pure: values in, URL out).

libcloud 3.9's ``AzureBlobsStorageDriver.get_object_cdn_url`` puts the URL-encoded blob name in
the string to sign, where Azure (and Azurite) expect the decoded name, so a blob whose name holds
``+``, a space or any character that needs escaping gets a URL the service refuses. The format
here is the one of service version 2018-11-09 (the version libcloud's connection speaks), signed
with HMAC-SHA256 under the account key, read-only (``sp=r``) and for one blob (``sr=b``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlencode

__all__ = ["SAS_VERSION", "blob_read_sas"]

SAS_VERSION = "2018-11-09"
_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_CLOCK_SKEW = timedelta(minutes=5)  # start a little early: the service's clock may be behind


def blob_read_sas(
    *,
    account: str,
    account_key: str,
    container: str,
    blob: str,
    base_url: str,
    expires_s: int,
    https_only: bool = True,
    now: datetime | None = None,
) -> str:
    """``base_url`` is the account's blob endpoint as a client addresses it, without a slash at
    the end: ``https://acct.blob.core.windows.net``, or ``http://127.0.0.1:10000/acct`` for
    Azurite's path-style accounts."""
    if expires_s < 1:
        raise ValueError("expires_s must be positive")
    try:
        key = base64.b64decode(account_key, validate=True)
    except binascii.Error as exc:
        raise ValueError("the account key is not base64") from exc
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    params = {
        "sv": SAS_VERSION,
        "sr": "b",
        "sp": "r",
        "st": (moment - _CLOCK_SKEW).strftime(_FORMAT),
        "se": (moment + timedelta(seconds=expires_s)).strftime(_FORMAT),
        "spr": "https" if https_only else "https,http",
    }
    string_to_sign = "\n".join(
        [
            params["sp"],
            params["st"],
            params["se"],
            f"/blob/{account}/{container}/{blob}",
            "",  # signed identifier (stored access policy): none
            "",  # signed IP range: none
            params["spr"],
            params["sv"],
            params["sr"],
            "",  # snapshot time
            "",  # rscc: Cache-Control override
            "",  # rscd: Content-Disposition override
            "",  # rsce: Content-Encoding override
            "",  # rscl: Content-Language override
            "",  # rsct: Content-Type override
        ]
    )
    signature = base64.b64encode(
        hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).digest()
    ).decode("ascii")
    query = urlencode({**params, "sig": signature})
    path = quote(f"/{container}/{blob}", safe="/-_.~")
    return f"{base_url}{path}?{query}"
