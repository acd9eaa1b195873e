"""Where an artifact's objects live in a container, and in which order they are written.

``<artifact-name>/<version>/<file>``, with ``manifest.json`` and ``manifest.sig`` beside the files.
The signature is the commit marker: it is written last and removed first, so a replica is
visible to readers (``fedge place urls``, an edge device) only once every byte under it was
written and read back, and a replica being repaired or removed disappears before it changes.
"""

from __future__ import annotations

from fedge.manifest import MANIFEST_NAME, SIGNATURE_NAME

__all__ = ["COMMIT_MARKER", "object_name", "prefix", "relative_name", "upload_order"]

COMMIT_MARKER = SIGNATURE_NAME


def prefix(artifact: str, version: str) -> str:
    return f"{artifact}/{version}/"


def object_name(artifact: str, version: str, relative: str) -> str:
    return prefix(artifact, version) + relative


def relative_name(artifact: str, version: str, name: str) -> str | None:
    """The artifact-relative path of ``name``, or None when it is not under the version."""
    head = prefix(artifact, version)
    return name[len(head) :] if name.startswith(head) else None


def upload_order(relatives: list[str]) -> list[str]:
    """Files first (sorted), then ``manifest.json``, then the commit marker."""
    files = sorted(name for name in relatives if name not in (MANIFEST_NAME, SIGNATURE_NAME))
    tail = [name for name in (MANIFEST_NAME, SIGNATURE_NAME) if name in relatives]
    return files + tail
