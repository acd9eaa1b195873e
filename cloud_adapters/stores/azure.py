"""Azure Blob Storage (and Azurite), over libcloud's ``AZURE_BLOBS`` driver.

Credentials are the storage account name (``keyRef``) and its base64 account key
(``secretRef``). With no endpoint, or ``https://<account>.blob.core.windows.net``, the driver talks
to Azure itself; any other endpoint (Azurite, IoT Edge storage) is addressed path-style,
``http://host:port/<account>/...``. Blobs over libcloud's 4 MiB block size stream as block blobs,
each block checked by the service against its Content-MD5; the read-back compares the blob's
Content-MD5 and size.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import urlsplit

from libcloud.storage.base import Object
from libcloud.storage.drivers.azure_blobs import AZURE_STORAGE_HOST_SUFFIX, AzureBlobsStorageDriver

from cloud_adapters.placement.local_artifact import LocalFile
from cloud_adapters.stores.base import ArtifactStore, RemoteObject, strip_quotes
from cloud_adapters.stores.sas import blob_read_sas

__all__ = ["AzureStore", "make_azure_driver"]


def make_azure_driver(
    *, account: str, account_key: str, endpoint: str | None, timeout_s: float
) -> tuple[AzureBlobsStorageDriver, str]:
    """The driver, and the account's blob base URL as a client addresses it."""
    try:
        base64.b64decode(account_key, validate=True)
    except binascii.Error as exc:
        raise ValueError("the Azure account key (secretRef) is not base64") from exc
    public_host = f"{account}.{AZURE_STORAGE_HOST_SUFFIX}"
    if endpoint is None or urlsplit(endpoint).hostname == public_host:
        secure = endpoint is None or urlsplit(endpoint).scheme == "https"
        driver = AzureBlobsStorageDriver(  # type: ignore[no-untyped-call]
            account, account_key, secure=secure, timeout=timeout_s
        )
        return driver, f"{'https' if secure else 'http'}://{public_host}"
    parts = urlsplit(endpoint)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    driver = AzureBlobsStorageDriver(  # type: ignore[no-untyped-call]
        account, account_key, secure=secure, host=host, port=port, timeout=timeout_s
    )
    netloc = host if port == (443 if secure else 80) else f"{host}:{port}"
    return driver, f"{parts.scheme}://{netloc}/{account}"


class AzureStore(ArtifactStore):
    def __init__(self, *, account: str, account_key: str, base_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._account = account
        self._account_key = account_key
        self._base_url = base_url

    def _upload(self, local: LocalFile, name: str) -> None:
        # upload_object streams from the file: one Put Blob up to 4 MiB, block blob beyond.
        self._driver.upload_object(str(local.path), self._container, name, verify_hash=True)

    def _remote(self, obj: Object) -> RemoteObject:
        extra = obj.extra or {}
        md5 = extra.get("md5_hash")
        return RemoteObject(
            name=obj.name,
            size=int(obj.size or 0),
            fingerprint=strip_quotes(extra.get("etag") or obj.hash),
            md5=str(md5).lower() if md5 else None,
        )

    def content_matches(self, remote: RemoteObject, local: LocalFile) -> bool | None:
        return None if remote.md5 is None else remote.md5 == local.md5

    def presign(self, name: str, *, expires_s: int) -> str:
        return blob_read_sas(
            account=self._account,
            account_key=self._account_key,
            container=self.container,
            blob=name,
            base_url=self._base_url,
            expires_s=expires_s,
            https_only=self._base_url.startswith("https://"),
        )
