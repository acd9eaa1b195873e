"""The artifact manifest: canonical bytes, a digest independent of file order, safe paths."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedge.errors import ArtifactError
from fedge.manifest import FileEntry, Manifest, Provenance

_names = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))
_paths = st.lists(_names, min_size=1, max_size=3).map("/".join)
_entries = st.builds(
    FileEntry,
    path=_paths,
    sha256=st.binary(min_size=1, max_size=8).map(lambda b: hashlib.sha256(b).hexdigest()),
    size=st.integers(min_value=0, max_value=10**12),
)
_file_sets = st.lists(_entries, min_size=1, max_size=12, unique_by=lambda e: e.path)


def _manifest(files: list[FileEntry]) -> Manifest:
    return Manifest.create(
        name="model",
        version="1.0.0",
        format="onnx-int8",
        files=files,
        created="2026-01-01T00:00:00Z",
        provenance=Provenance(run_id="r1", rounds=3, epsilon_per_client={"b": 2.0, "a": 1.5}),
    )


@given(_file_sets, st.randoms(use_true_random=False))
def test_same_files_in_any_order_give_the_same_digest(files: list[FileEntry], rnd) -> None:
    shuffled = list(files)
    rnd.shuffle(shuffled)
    first, second = _manifest(files), _manifest(shuffled)
    assert first.canonical_bytes() == second.canonical_bytes()
    assert first.digest == second.digest
    assert first.content_digest == second.content_digest


@given(_file_sets)
def test_canonical_bytes_round_trip(files: list[FileEntry]) -> None:
    manifest = _manifest(files)
    again = Manifest.from_bytes(manifest.canonical_bytes())
    assert again == manifest
    assert again.canonical_bytes() == manifest.canonical_bytes()


def test_any_changed_file_changes_the_content_digest() -> None:
    base = [FileEntry("a.bin", "0" * 64, 1), FileEntry("b.bin", "1" * 64, 2)]
    changed = [FileEntry("a.bin", "0" * 64, 1), FileEntry("b.bin", "1" * 64, 3)]
    assert _manifest(base).content_digest != _manifest(changed).content_digest


def test_manifest_records_provenance_sorted() -> None:
    doc = json.loads(_manifest([FileEntry("m.onnx", "a" * 64, 5)]).canonical_bytes())
    assert doc["provenance"]["epsilonPerClient"] == {"a": 1.5, "b": 2.0}
    assert list(doc["provenance"]["epsilonPerClient"]) == ["a", "b"]
    assert doc["files"] == [{"path": "m.onnx", "sha256": "a" * 64, "size": 5}]


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../b", "a//b", "a\\b", "", "./a"])
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(ArtifactError):
        FileEntry(path, "0" * 64, 1)


def test_duplicate_paths_are_refused() -> None:
    with pytest.raises(ArtifactError, match="listed twice"):
        _manifest([FileEntry("a", "0" * 64, 1), FileEntry("a", "1" * 64, 1)])


@pytest.mark.parametrize(
    "data",
    [b"", b"[]", b"\xff\xfe", b'{"schema": "other"}', b'{"schema": "fedge.artifact/v1"}'],
)
def test_malformed_manifest_raises_artifact_error(data: bytes) -> None:
    with pytest.raises(ArtifactError, match="manifest.json"):
        Manifest.from_bytes(data)


def test_content_digest_field_must_match_files() -> None:
    doc = json.loads(_manifest([FileEntry("m", "a" * 64, 5)]).canonical_bytes())
    doc["contentDigest"] = "0" * 64
    with pytest.raises(ArtifactError, match="contentDigest"):
        Manifest.from_bytes(json.dumps(doc).encode())
