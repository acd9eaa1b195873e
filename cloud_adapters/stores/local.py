"""A folder on this machine as an artifact store, over libcloud's ``LOCAL`` driver.

The target's ``path`` is the folder that holds the artifacts (``<path>/<name>/<version>/...``);
with ``container`` set it is ``<path>/<container>/...`` instead. The folder is created when
missing: it is the demo's "cloud" and an on-premises mirror, not a bucket someone else provisions.
The read-back hashes the stored file (SHA-256), since a file system reports no content hash.

Presigned URL: a ``file://`` URL of the object. It does not expire (nothing on a file system can
enforce that); access is whatever the folder's permissions allow, and it serves only processes on
this machine or a shared mount. Devices elsewhere need an S3 or Azure replica.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from libcloud.storage.base import Object
from libcloud.storage.drivers.local import LocalStorageDriver

from cloud_adapters.placement.local_artifact import LocalFile
from cloud_adapters.stores.base import ArtifactStore, RemoteObject

__all__ = ["LocalStore", "make_local_driver"]


def make_local_driver(*, path: str, container: str | None) -> tuple[LocalStorageDriver, str, Path]:
    """The driver, the container name and its folder; the folders are created when missing."""
    folder = Path(path).expanduser().resolve()
    if container is None:
        base, name = folder.parent, folder.name
    else:
        base, name = folder, container
    (base / name).mkdir(parents=True, exist_ok=True)
    # libcloud's per-object locks would leave a lock file in the temp folder for every object
    # ever written; readers are protected by the commit marker instead (see layout).
    driver = LocalStorageDriver(str(base), ex_use_locking=False)  # type: ignore[no-untyped-call]
    return driver, name, base / name


def _hidden(name: str) -> bool:
    # libcloud keeps lock and hash files in these folders; they are not objects.
    return any(part in (".lock", ".hash") for part in name.split("/"))


class LocalStore(ArtifactStore):
    def __init__(self, *, folder: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.folder = folder  # the container's folder

    def _remote(self, obj: Object) -> RemoteObject:
        return self._stat(str(obj.name))

    def _stat(self, name: str) -> RemoteObject:
        # The modification time in nanoseconds: any rewrite of the file changes it.
        info = (self.folder / name).stat()
        return RemoteObject(name=name, size=info.st_size, fingerprint=f"mtime:{info.st_mtime_ns}")

    def _list_once(self, prefix: str) -> dict[str, RemoteObject]:
        # Walk only the prefix's folder (libcloud's LOCAL listing walks the whole container).
        start = self.folder / prefix
        top = start if prefix.endswith("/") else start.parent
        if not top.is_dir():
            return {}
        found = {}
        for path in sorted(top.rglob("*")):
            if path.is_file() and not path.is_symlink():
                name = path.relative_to(self.folder).as_posix()
                if name.startswith(prefix) and not _hidden(name):
                    found[name] = self._stat(name)
        return found

    def _upload(self, local: LocalFile, name: str) -> None:
        self._driver.upload_object(str(local.path), self._container, name)

    def content_matches(self, remote: RemoteObject, local: LocalFile) -> bool | None:
        return None  # no stored hash: the caller hashes the stored file

    def object_path(self, name: str) -> Path:
        return self.folder / name

    def presign(self, name: str, *, expires_s: int) -> str:
        return self.object_path(name).as_uri()
