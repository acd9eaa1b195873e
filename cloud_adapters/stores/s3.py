"""AWS S3 and any S3-compatible endpoint, over libcloud's S3 driver.

With no ``endpoint`` the target is AWS S3 in its ``region`` (libcloud's ``S3StorageDriver``).
With an endpoint (moto, MinIO, Ceph, Scaleway, Wasabi, R2, ...) the same driver is pointed at that
host and port, path-style; a region name AWS does not know is accepted too (S3-compatible clouds
have their own), through a subclass that only lifts libcloud's AWS region check. Files from
``MULTIPART_THRESHOLD`` on stream through S3 multipart upload in 5 MiB parts, each part checked
by the server against its Content-MD5; every upload is then read back (size and ETag).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from libcloud.storage.drivers.s3 import (
    CHUNK_SIZE,
    REGION_TO_HOST_MAP,
    BaseS3StorageDriver,
    S3SignatureV4Connection,
    S3StorageDriver,
)

from cloud_adapters.placement.local_artifact import S3_PART_SIZE, LocalFile
from cloud_adapters.stores.base import ArtifactStore, RemoteObject
from cloud_adapters.stores.sigv4 import presign_get

__all__ = ["MULTIPART_THRESHOLD", "S3Store", "make_s3_driver"]

MULTIPART_THRESHOLD = 8 * 1024 * 1024
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART_ETAG = re.compile(r"^[0-9a-f]{32}-\d+$")

if CHUNK_SIZE != S3_PART_SIZE:  # pragma: no cover - caught at import, pinned by a test as well
    raise ImportError(f"libcloud's S3 part size is {CHUNK_SIZE}, fedge expects {S3_PART_SIZE}")


class _AnyRegionS3Driver(BaseS3StorageDriver):
    """libcloud's S3 driver logic with SigV4 for any region name (S3-compatible clouds)."""

    name = "S3-compatible"
    connectionCls = S3SignatureV4Connection  # type: ignore[assignment]  # noqa: N815 - libcloud's

    def __init__(self, key: str, secret: str, *, region: str, **kwargs: Any) -> None:
        self.region_name = region
        super().__init__(key, secret, **kwargs)  # type: ignore[no-untyped-call]


def make_s3_driver(
    *,
    access_key: str,
    secret_key: str,
    region: str,
    endpoint: str | None,
    timeout_s: float,
) -> tuple[BaseS3StorageDriver, str, int, bool]:
    """The driver, and the host, port and scheme it talks to (the presigner needs them)."""
    if endpoint is None:
        if region not in REGION_TO_HOST_MAP:
            raise ValueError(f"region {region!r} is not an AWS S3 region; give an endpoint")
        host, port, secure = REGION_TO_HOST_MAP[region], 443, True
    else:
        parts = urlsplit(endpoint)
        secure = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
    options: dict[str, Any] = {"secure": secure, "host": host, "port": port, "timeout": timeout_s}
    driver: BaseS3StorageDriver
    if region in REGION_TO_HOST_MAP:
        driver = S3StorageDriver(  # type: ignore[no-untyped-call]
            access_key, secret_key, region=region, **options
        )
    else:
        driver = _AnyRegionS3Driver(access_key, secret_key, region=region, **options)
    # Only read by create_container (createContainer: true): S3 wants the region as a new
    # bucket's location constraint everywhere but us-east-1, where it must be absent.
    driver.ex_location_name = "" if region == "us-east-1" else region
    return driver, host, port, secure


class S3Store(ArtifactStore):
    def __init__(
        self,
        *,
        access_key: str,
        secret_key: str,
        region: str,
        host: str,
        port: int,
        secure: bool,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._access_key = access_key
        self._secret_key = secret_key
        self._region = region
        default_port = 443 if secure else 80
        self._host_header = host if port == default_port else f"{host}:{port}"
        self._secure = secure

    def _upload(self, local: LocalFile, name: str) -> None:
        container = self._container
        if local.size >= MULTIPART_THRESHOLD:
            with local.path.open("rb") as stream:
                self._driver.upload_object_via_stream(stream, container, name)
        else:
            self._driver.upload_object(str(local.path), container, name, verify_hash=True)

    def content_matches(self, remote: RemoteObject, local: LocalFile) -> bool | None:
        etag = remote.fingerprint.lower()
        if _MD5_ETAG.match(etag):
            return etag == local.md5
        if _MULTIPART_ETAG.match(etag):
            return etag == local.s3_multipart_etag
        return None  # e.g. SSE-KMS: the ETag is not an MD5, so download and hash

    def presign(self, name: str, *, expires_s: int) -> str:
        return presign_get(
            access_key=self._access_key,
            secret_key=self._secret_key,
            region=self._region,
            host=self._host_header,
            path=f"/{self.container}/{name}",
            expires_s=expires_s,
            secure=self._secure,
        )
