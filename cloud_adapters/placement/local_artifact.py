"""A signed artifact folder read once: what each object must be on every store.

One pass over each file computes everything a store can be checked against: size and SHA-256
(the manifest's own terms), MD5 (what S3's single-part ETag and Azure's Content-MD5 report) and
the S3 multipart ETag for the part size the S3 adapter uploads with. A file that differs from the
manifest stops the apply before any upload. With trusted keys the signature is verified as well
(:func:`fedge.artifact.verify_artifact`); without them the manifest is taken as written, since the
operator signed it moments ago on this machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedge.artifact import verify_artifact
from fedge.bounded import InputError, read_capped
from fedge.errors import ArtifactError, SignatureError
from fedge.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, SIGNATURE_NAME, Manifest
from fedge.signing import PublicKey

__all__ = ["S3_PART_SIZE", "LocalArtifact", "LocalFile", "load_local_artifact"]

# libcloud's S3 multipart part size (libcloud.storage.drivers.s3.CHUNK_SIZE); a test pins it.
S3_PART_SIZE = 5 * 1024 * 1024
_READ = 1 << 20


@dataclass(frozen=True, slots=True)
class LocalFile:
    """One object-to-be: its path on disk and the digests the stores are checked against."""

    relative: str
    path: Path
    size: int
    sha256: str
    md5: str
    s3_multipart_etag: str

    @property
    def parts(self) -> int:
        return max(1, -(-self.size // S3_PART_SIZE))


@dataclass(frozen=True, slots=True)
class LocalArtifact:
    directory: Path
    manifest: Manifest
    manifest_digest: str  # sha256 of manifest.json's bytes
    files: tuple[LocalFile, ...]  # every object, manifest.json and manifest.sig included

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files)

    def file(self, relative: str) -> LocalFile:
        for entry in self.files:
            if entry.relative == relative:
                return entry
        raise KeyError(relative)


def digest_file(path: Path, relative: str) -> LocalFile:
    sha = hashlib.sha256()
    md5 = hashlib.md5()  # noqa: S324 - what the stores report, not a security control
    part_digests: list[bytes] = []
    part = hashlib.md5()  # noqa: S324
    in_part = 0
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_READ):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
            view = memoryview(chunk)
            while view:
                take = min(len(view), S3_PART_SIZE - in_part)
                part.update(view[:take])
                in_part += take
                view = view[take:]
                if in_part == S3_PART_SIZE:
                    part_digests.append(part.digest())
                    part, in_part = hashlib.md5(), 0  # noqa: S324
    if in_part or not part_digests:
        part_digests.append(part.digest())
    combined = hashlib.md5(b"".join(part_digests)).hexdigest()  # noqa: S324
    return LocalFile(
        relative=relative,
        path=path,
        size=size,
        sha256=sha.hexdigest(),
        md5=md5.hexdigest(),
        s3_multipart_etag=f"{combined}-{len(part_digests)}",
    )


def load_local_artifact(
    directory: str | Path, *, trusted: Sequence[PublicKey] = ()
) -> LocalArtifact:
    """Read and check a signed artifact folder; raise ArtifactError naming the file at fault."""
    folder = Path(directory)
    if trusted:
        verify_artifact(folder, trusted)
    manifest_path = folder / MANIFEST_NAME
    try:
        body = read_capped(manifest_path, limit=MAX_MANIFEST_BYTES, what="a manifest")
    except InputError as exc:
        if exc.reason == "does not exist":
            raise ArtifactError(
                "not a signed artifact: manifest.json is missing", file=str(manifest_path)
            ) from exc
        raise ArtifactError(exc.reason, file=str(manifest_path)) from exc
    if not (folder / SIGNATURE_NAME).is_file():
        raise SignatureError(
            "not a signed artifact: manifest.sig is missing", file=str(folder / SIGNATURE_NAME)
        )
    manifest = Manifest.from_bytes(body)
    files = []
    for entry in manifest.files:
        path = folder / entry.path
        if path.is_symlink() or not path.is_file():
            raise ArtifactError("listed in the manifest but missing", file=str(path))
        local = digest_file(path, entry.path)
        if local.size != entry.size or local.sha256 != entry.sha256:
            raise ArtifactError("differs from the manifest (size or sha256)", file=str(path))
        files.append(local)
    files.append(digest_file(manifest_path, MANIFEST_NAME))
    files.append(digest_file(folder / SIGNATURE_NAME, SIGNATURE_NAME))
    return LocalArtifact(
        directory=folder,
        manifest=manifest,
        manifest_digest=hashlib.sha256(body).hexdigest(),
        files=tuple(files),
    )
