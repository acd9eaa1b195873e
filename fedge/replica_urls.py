"""The replica-URL document: where a device may download one artifact version, one entry per copy.

Its one home. Placement writes the entries (``cloud_adapters.placement.urls``, then
``fedge place urls`` wraps them in :func:`urls_document`, the ``urls.json`` file); the fleet
controller passes each entry on unchanged inside a ``desired`` message; the edge agent reads them
(``edge_agent.protocol.Replica``, a pydantic model whose field names and URL rule are the ones
here, so its refusals keep their wording on the wire). The kernel has no pydantic, so
:meth:`ReplicaURLs.from_dict` is a plain validator with the same rules, for readers without it::

    {"artifact": "sentiment", "version": "1.0",
     "replicas": [{"target": "eu-s3", "provider": "s3", "region": "eu-west-1",
                   "residency": "eu", "expires": "2030-01-01T00:00:00Z",
                   "manifest": URL, "signature": URL, "files": {"model.onnx": URL}}]}

URLs are presigned http(s) (cloud stores) or absolute ``file://`` (the demo's local stores);
``expires`` is an ISO time, or null for ``file://`` URLs, which cannot expire.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DOCUMENT_FIELDS",
    "FIELDS",
    "LOCATION_FIELDS",
    "URL_FIELDS",
    "URL_MAX_LENGTH",
    "URL_PATTERN",
    "ReplicaURLs",
    "urls_document",
]

URL_PATTERN: Final = r"^(https?://[^\s/]+/[^\s]*|file:///[^\s]*)$"
URL_MAX_LENGTH: Final = 8192
LOCATION_FIELDS: Final = ("target", "provider", "region", "residency", "expires")
"""Where the copy is; informative for a device, so a reader accepts them missing or null."""
URL_FIELDS: Final = ("manifest", "signature", "files")
"""What a device downloads: required."""
FIELDS: Final = LOCATION_FIELDS + URL_FIELDS
"""Every field of an entry, in the order :meth:`ReplicaURLs.to_dict` writes them."""
DOCUMENT_FIELDS: Final = ("artifact", "version", "replicas")

_URL: Final = re.compile(URL_PATTERN)


@dataclass(frozen=True, slots=True)
class ReplicaURLs:
    """One intact copy of an artifact version: presigned URLs for the manifest, signature, files."""

    manifest: str
    signature: str
    files: dict[str, str]  # artifact-relative path -> URL
    target: str | None = None
    provider: str | None = None
    region: str | None = None
    residency: str | None = None
    expires: str | None = None  # ISO time; None for file:// URLs, which cannot expire

    def to_dict(self) -> dict[str, Any]:
        """The entry as written to ``urls.json`` (files sorted by path)."""
        return {
            "target": self.target,
            "provider": self.provider,
            "region": self.region,
            "residency": self.residency,
            "expires": self.expires,
            "manifest": self.manifest,
            "signature": self.signature,
            "files": dict(sorted(self.files.items())),
        }

    @classmethod
    def from_dict(cls, doc: object) -> ReplicaURLs:
        """Validate one entry; ``ValueError("<field>: <problem>")`` for the first problem found."""
        if not isinstance(doc, Mapping):
            raise ValueError(f"expected an object, got {type(doc).__name__}")
        for name in doc:
            if name not in FIELDS:
                raise ValueError(f"{name}: unknown field")
        for name in URL_FIELDS:
            if name not in doc:
                raise ValueError(f"{name}: missing")
        files = doc["files"]
        if not isinstance(files, Mapping) or not files:
            raise ValueError("files: expected a non-empty object of path -> URL")
        where = {name: _optional(doc, name) for name in LOCATION_FIELDS}
        return cls(
            manifest=_url(doc["manifest"], "manifest"),
            signature=_url(doc["signature"], "signature"),
            files={_path(path): _url(url, f"files.{path}") for path, url in files.items()},
            target=where["target"],
            provider=where["provider"],
            region=where["region"],
            residency=where["residency"],
            expires=where["expires"],
        )


def urls_document(artifact: str, version: str, replicas: Sequence[ReplicaURLs]) -> dict[str, Any]:
    """The ``urls.json`` object: the version and each replica's entry, best replica first."""
    return {
        "artifact": artifact,
        "version": version,
        "replicas": [replica.to_dict() for replica in replicas],
    }


def _url(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a URL string")
    if len(value) > URL_MAX_LENGTH:
        raise ValueError(f"{where}: URL longer than {URL_MAX_LENGTH} characters")
    if not _URL.match(value):
        raise ValueError(f"{where}: not an http(s):// or absolute file:// URL")
    return value


def _optional(doc: Mapping[Any, object], name: str) -> str | None:
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name}: expected a string or null")
    return value


def _path(value: object) -> str:
    if not isinstance(value, str):  # JSON keys are strings; a Python caller may pass others
        raise ValueError(f"files: key {value!r} is not a string")
    return value
