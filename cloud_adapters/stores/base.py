"""One artifact-store vocabulary over libcloud's storage drivers.

An :class:`ArtifactStore` is one container on one target of the CloudInventory. Every operation
goes through :meth:`ArtifactStore._call`, which translates libcloud's exceptions into
:class:`~fedge.errors.CloudError` (naming target, provider, container and object) and retries the
transient ones with backoff. Uploads are checked by reading back what landed: the size, and the
content hash the store itself computed (S3's ETag, Azure's Content-MD5) or, where the store cannot
vouch for the bytes, the object downloaded and hashed. The adapters in :mod:`.s3`, :mod:`.azure`
and :mod:`.local` supply the driver, the content check and the presigned URL.

A store is used by one thread at a time (libcloud connections are not thread-safe); the
reconciler opens one per target.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from libcloud.common.types import LibcloudError
from libcloud.storage.base import Container, Object, StorageDriver
from libcloud.storage.types import ContainerDoesNotExistError, ObjectDoesNotExistError

from cloud_adapters.placement.local_artifact import LocalFile
from cloud_adapters.stores.errors import Where, translate
from cloud_adapters.stores.retry import RetryPolicy, call_with_retry
from fedge.errors import CloudError

__all__ = ["ArtifactStore", "RemoteObject"]

T = TypeVar("T")
_log = logging.getLogger(__name__)
_DOWNLOAD_CHUNK = 1 << 20
_NOT_FOUND = re.compile(r"[Ss]tatus code:? 404\b")


@dataclass(frozen=True, slots=True)
class RemoteObject:
    """An object as a store lists it.

    ``fingerprint`` changes whenever the bytes may have changed (the ETag; for a local folder the
    modification time), so a replica recorded intact is re-checked with one listing and no
    download. ``md5`` is the content MD5 when the store reports one.
    """

    name: str
    size: int
    fingerprint: str
    md5: str | None = None


class ArtifactStore(ABC):
    """A container on one target; see the module docstring."""

    def __init__(
        self,
        *,
        target: str,
        provider: str,
        container: str,
        driver: StorageDriver,
        endpoint: str | None,
        retry: RetryPolicy,
        sleep: Callable[[float], None] = time.sleep,
        create_container: bool = False,
    ) -> None:
        self.target = target
        self.create_container = create_container
        self.provider = provider
        self.container = container
        self.endpoint = endpoint
        self.retry = retry
        self._driver = driver
        self._sleep = sleep
        self._where = Where(provider=f"{target} ({provider})", container=container)
        self._container = Container(name=container, extra={}, driver=driver)

    # -- the vocabulary -------------------------------------------------------------------------

    def probe(self) -> None:
        """Raise unless the container exists and the credentials may list it."""

        def check() -> None:
            self._driver.get_container(self.container)
            self._list_once("fedge-probe/")

        self._call(check, what="probe")

    def ensure_container(self) -> bool:
        """Create the container if it is missing (only where the inventory says
        ``createContainer: true``); True when it was created. Without the flag a missing
        container stays an error: a typo in a bucket name must not create a new bucket."""

        def check() -> bool:
            try:
                self._driver.get_container(self.container)
            except ContainerDoesNotExistError:
                if not self.create_container:
                    raise
                self._driver.create_container(self.container)
                return True
            return False

        return self._call(check, what="create container")

    def list(self, prefix: str) -> dict[str, RemoteObject]:
        """Every object under ``prefix``, by name."""
        return self._call(lambda: self._list_once(prefix), what=f"list {prefix}")

    def stat(self, name: str) -> RemoteObject | None:
        """The object, or None when there is none."""

        def head() -> RemoteObject | None:
            try:
                obj = self._driver.get_object(self.container, name)
            except ObjectDoesNotExistError:
                return None
            return self._remote(obj)

        return self._call(head, what="stat", object_name=name)

    def put(self, local: LocalFile, name: str) -> RemoteObject:
        """Upload one file, read back what landed, and return it; raise when it differs."""

        def attempt() -> RemoteObject:
            self._upload(local, name)
            landed = self._driver.get_object(self.container, name)
            remote = self._remote(landed)
            if remote.size != local.size:
                raise self._where.error(
                    f"read-back size is {remote.size} bytes, expected {local.size}",
                    object_name=name,
                    transient=True,
                )
            verdict = self.content_matches(remote, local)
            if verdict is None:
                verdict = self._download_sha256(name) == local.sha256
            if not verdict:
                raise self._where.error(
                    "read-back hash differs from the local file", object_name=name, transient=True
                )
            return remote

        return self._call(attempt, what="upload", object_name=name)

    def delete(self, name: str) -> bool:
        """Remove the object; False when it was already gone."""

        def remove() -> bool:
            try:
                obj = self._driver.get_object(self.container, name)
            except ObjectDoesNotExistError:
                return False
            return bool(self._driver.delete_object(obj))

        return self._call(remove, what="delete", object_name=name)

    def read_bytes(self, name: str, *, limit: int = 1 << 20) -> bytes | None:
        """A small object's bytes (a manifest), or None when there is none."""

        def read() -> bytes | None:
            try:
                obj = self._driver.get_object(self.container, name)
            except ObjectDoesNotExistError:
                return None
            if obj.size > limit:
                raise self._where.error(
                    f"object is {obj.size} bytes, more than the {limit} expected", object_name=name
                )
            return b"".join(self._driver.download_object_as_stream(obj, chunk_size=limit))

        return self._call(read, what="read", object_name=name)

    def matches(self, remote: RemoteObject, local: LocalFile) -> bool:
        """Whether ``remote`` holds exactly ``local``'s bytes (downloads when it cannot tell)."""
        if remote.size != local.size:
            return False
        verdict = self.content_matches(remote, local)
        if verdict is None:
            verdict = self._call(
                lambda: self._download_sha256(remote.name), what="verify", object_name=remote.name
            ) == (local.sha256)
        return verdict

    @abstractmethod
    def presign(self, name: str, *, expires_s: int) -> str:
        """A URL that lets a device without credentials GET the object until it expires."""

    # -- what each adapter supplies -------------------------------------------------------------

    @abstractmethod
    def _upload(self, local: LocalFile, name: str) -> None:
        """Send the file (streaming; multipart where the store needs it)."""

    @abstractmethod
    def content_matches(self, remote: RemoteObject, local: LocalFile) -> bool | None:
        """Compare the store's own content hash with the file's; None when it has none."""

    def _remote(self, obj: Object) -> RemoteObject:
        return RemoteObject(
            name=obj.name, size=int(obj.size or 0), fingerprint=str(obj.hash or "").strip('"')
        )

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def where(self) -> Where:
        return self._where

    def _list_once(self, prefix: str) -> dict[str, RemoteObject]:
        found: Iterator[Object] = self._driver.iterate_container_objects(
            self._container, prefix=prefix
        )
        try:
            return {obj.name: self._remote(obj) for obj in found}
        except LibcloudError as exc:
            # A listing of a missing bucket is a bare 404 in libcloud; say what it means.
            if _NOT_FOUND.search(str(getattr(exc, "value", ""))):
                raise ContainerDoesNotExistError(  # type: ignore[no-untyped-call]
                    value=None, driver=self._driver, container_name=self.container
                ) from exc
            raise

    def _download_sha256(self, name: str) -> str:
        obj = self._driver.get_object(self.container, name)
        hasher = hashlib.sha256()
        for chunk in self._driver.download_object_as_stream(obj, chunk_size=_DOWNLOAD_CHUNK):
            hasher.update(chunk)
        return hasher.hexdigest()

    def _call(self, operation: Callable[[], T], *, what: str, object_name: str | None = None) -> T:
        def translated() -> T:
            try:
                return operation()
            except CloudError:
                raise
            except Exception as exc:  # every libcloud/requests error is translated
                raise translate(
                    exc, self._where, object_name=object_name, endpoint=self.endpoint
                ) from exc

        return call_with_retry(
            translated,
            self.retry,
            describe=f"{self._where.provider} {what} {object_name or ''}".rstrip(),
            sleep=self._sleep,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.target} {self.container}>"


def strip_quotes(value: Any) -> str:
    return str(value or "").strip('"')
