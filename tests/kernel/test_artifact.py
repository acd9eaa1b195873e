"""Signed artifacts: tampering with any byte is caught, and the error names the file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from fedge.artifact import sign_artifact, verify_artifact
from fedge.errors import ArtifactError, KeyFileError, SignatureError
from fedge.manifest import MANIFEST_NAME, SIGNATURE_NAME
from fedge.signing import (
    KeyPair,
    generate_keypair,
    load_private_key,
    load_public_key,
    parse_public_key,
)


@pytest.fixture
def keypair() -> KeyPair:
    return generate_keypair()


@pytest.fixture
def artifact(tmp_path: Path, keypair: KeyPair) -> Path:
    folder = tmp_path / "artifact"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(os.urandom(4096))
    (folder / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    sign_artifact(
        folder, keypair, name="sentiment", version="1.0.0", format="onnx-int8", labels={"app": "s"}
    )
    return folder


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_signed_artifact_verifies(artifact: Path, keypair: KeyPair) -> None:
    manifest = verify_artifact(artifact, [keypair.public])
    assert [entry.path for entry in manifest.files] == ["model.onnx", "tokenizer/vocab.txt"]
    assert manifest.labels == {"app": "s"}
    assert manifest.total_size == 4096 + len("[PAD]\n[UNK]\nhello\n")


@pytest.mark.parametrize("victim", ["model.onnx", "tokenizer/vocab.txt"])
@pytest.mark.parametrize("offset", [0, 7])
def test_one_flipped_byte_in_a_file_names_that_file(
    artifact: Path, keypair: KeyPair, victim: str, offset: int
) -> None:
    _flip_byte(artifact / victim, offset)
    with pytest.raises(ArtifactError, match=f"^{victim}: sha256") as info:
        verify_artifact(artifact, [keypair.public])
    assert info.value.file == victim


def test_one_flipped_byte_in_the_manifest_fails_the_signature(
    artifact: Path, keypair: KeyPair
) -> None:
    body = (artifact / MANIFEST_NAME).read_bytes()
    _flip_byte(artifact / MANIFEST_NAME, body.index(b"1.0.0"))  # version 1.0.0 -> 0.0.0
    with pytest.raises(
        SignatureError, match=f"^{MANIFEST_NAME}: signature does not verify"
    ) as info:
        verify_artifact(artifact, [keypair.public])
    assert info.value.file == MANIFEST_NAME


def test_truncated_file_reports_its_size(artifact: Path, keypair: KeyPair) -> None:
    path = artifact / "model.onnx"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="model.onnx: size is 100 bytes, manifest says 4096"):
        verify_artifact(artifact, [keypair.public])


def test_untrusted_signer_is_refused(artifact: Path) -> None:
    stranger = generate_keypair()
    with pytest.raises(SignatureError, match="not among the trusted keys"):
        verify_artifact(artifact, [stranger.public])


def test_resigning_with_another_key_is_refused(artifact: Path, keypair: KeyPair) -> None:
    attacker = generate_keypair()
    sign_artifact(artifact, attacker, name="sentiment", version="1.0.0", format="onnx-int8")
    with pytest.raises(SignatureError):
        verify_artifact(artifact, [keypair.public])


def test_signature_claiming_a_trusted_key_id_still_has_to_verify(
    artifact: Path, keypair: KeyPair
) -> None:
    attacker = generate_keypair()
    sign_artifact(artifact, attacker, name="sentiment", version="1.0.0", format="onnx-int8")
    sig = json.loads((artifact / SIGNATURE_NAME).read_text())
    sig["keyId"] = keypair.public.key_id  # lie about who signed
    (artifact / SIGNATURE_NAME).write_text(json.dumps(sig))
    with pytest.raises(SignatureError, match="manifest.json: signature does not verify"):
        verify_artifact(artifact, [keypair.public])


@pytest.mark.parametrize(
    "content", [b"", b"{", b'{"keyId": "x"}', b'{"alg": "rsa", "keyId": "x", "signature": "AA=="}']
)
def test_malformed_signature_file(artifact: Path, keypair: KeyPair, content: bytes) -> None:
    (artifact / SIGNATURE_NAME).write_bytes(content)
    with pytest.raises(SignatureError, match=SIGNATURE_NAME):
        verify_artifact(artifact, [keypair.public])


def test_missing_signature_or_manifest(artifact: Path, keypair: KeyPair) -> None:
    (artifact / SIGNATURE_NAME).unlink()
    with pytest.raises(SignatureError, match="manifest.sig: the signature is missing"):
        verify_artifact(artifact, [keypair.public])
    (artifact / MANIFEST_NAME).unlink()
    with pytest.raises(ArtifactError, match="manifest.json: the manifest is missing"):
        verify_artifact(artifact, [keypair.public])


def test_extra_and_missing_files_are_named(artifact: Path, keypair: KeyPair) -> None:
    (artifact / "evil.py").write_text("print('hi')")
    with pytest.raises(ArtifactError, match="evil.py: present in the folder but not listed"):
        verify_artifact(artifact, [keypair.public])
    (artifact / "evil.py").unlink()
    (artifact / "tokenizer" / "vocab.txt").unlink()
    with pytest.raises(
        ArtifactError, match="tokenizer/vocab.txt: listed in the manifest but missing"
    ):
        verify_artifact(artifact, [keypair.public])


def test_symlinks_are_not_artifact_files(tmp_path: Path, keypair: KeyPair) -> None:
    folder = tmp_path / "a"
    folder.mkdir()
    (tmp_path / "secret").write_text("x")
    (folder / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(ArtifactError, match="link: only regular files"):
        sign_artifact(folder, keypair, name="x", version="1", format="files")


def test_no_trusted_keys_is_an_error_not_a_pass(artifact: Path) -> None:
    with pytest.raises(SignatureError, match="no trusted keys"):
        verify_artifact(artifact, [])


def test_key_files_round_trip_and_private_key_is_0600(tmp_path: Path, keypair: KeyPair) -> None:
    key_path, pub_path = keypair.save(tmp_path / "keys")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert load_private_key(key_path).public.key_id == keypair.public.key_id
    assert load_public_key(pub_path).key_id == keypair.public.key_id
    assert parse_public_key(keypair.public.inline).key_id == keypair.public.key_id
    assert parse_public_key("keys/signing.pub", base_dir=tmp_path).key_id == keypair.public.key_id


@pytest.mark.parametrize("value", ["ed25519:not-base64!", "ed25519:AAAA", "missing.pem"])
def test_bad_public_keys_raise_key_file_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(KeyFileError):
        parse_public_key(value, base_dir=tmp_path)


def test_a_public_key_is_not_a_private_key(tmp_path: Path, keypair: KeyPair) -> None:
    _, pub_path = keypair.save(tmp_path)
    with pytest.raises(KeyFileError, match="not an unencrypted PEM private key"):
        load_private_key(pub_path)
