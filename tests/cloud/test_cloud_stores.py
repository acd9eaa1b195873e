"""The three store adapters against real endpoints: uploads read back, multipart, presigned URLs,
and every failure turned into one CloudError that names target, container and object."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from libcloud.storage.drivers.s3 import CHUNK_SIZE

from cloud_adapters.placement.local_artifact import S3_PART_SIZE, digest_file
from cloud_adapters.stores.factory import open_store
from cloud_adapters.stores.retry import RetryPolicy
from cloud_adapters.stores.sas import blob_read_sas
from fedge.errors import CloudError, UsageError
from fedge.process import free_port
from policies.inventory import Target
from tests.support.cloud_servers import (
    AzuriteServer,
    MotoServer,
    azure_target,
    azurite,  # noqa: F401 - pytest fixture
    local_target,
    moto,  # noqa: F401 - pytest fixture
    s3_target,
    unique,
)

FAST = RetryPolicy(attempts=2, base_delay_s=0.01, max_delay_s=0.02, timeout_s=10.0)


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback or file
        return bytes(response.read())


def _file(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


@pytest.fixture
def s3_bucket(moto: MotoServer) -> str:  # noqa: F811
    bucket = unique("store-s3")
    moto.create_bucket(bucket)
    return bucket


@pytest.fixture
def azure_container(azurite: AzuriteServer) -> str:  # noqa: F811
    container = unique("store-az")
    azurite.create_container(container)
    return container


def test_fedge_computes_the_multipart_etag_with_libclouds_part_size() -> None:
    assert CHUNK_SIZE == S3_PART_SIZE


def test_s3_streams_a_large_file_as_multipart_and_checks_the_etag_it_reads_back(
    moto: MotoServer,  # noqa: F811
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    store = open_store(Target.model_validate(s3_target(moto, s3_bucket)), retry=FAST)
    store.probe()
    big = digest_file(_file(tmp_path, "big.bin", 2 * S3_PART_SIZE + 123), "big.bin")
    landed = store.put(big, "a/1/big bin+.bin")
    assert landed.size == big.size
    assert landed.fingerprint == big.s3_multipart_etag and landed.fingerprint.endswith("-3")
    small = digest_file(_file(tmp_path, "small.bin", 1000), "small.bin")
    assert store.put(small, "a/1/small.bin").fingerprint == small.md5
    assert set(store.list("a/1/")) == {"a/1/big bin+.bin", "a/1/small.bin"}
    url = store.presign("a/1/big bin+.bin", expires_s=300)
    assert hashlib.sha256(_fetch(url)).hexdigest() == big.sha256
    assert store.delete("a/1/small.bin") is True
    assert store.delete("a/1/small.bin") is False
    assert store.stat("a/1/small.bin") is None


def test_s3_accepts_a_region_aws_does_not_know(
    moto: MotoServer,  # noqa: F811
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    """S3-compatible clouds name their own regions; the generic driver signs for them."""
    target = Target.model_validate(s3_target(moto, s3_bucket, region="fr-par"))
    store = open_store(target, retry=FAST)
    small = digest_file(_file(tmp_path, "x.bin", 10), "x.bin")
    assert store.put(small, "r/x.bin").size == 10
    assert "/fr-par/s3/aws4_request" in store.presign("r/x.bin", expires_s=60).replace("%2F", "/")


def test_azure_streams_blocks_and_reads_back_the_content_md5(
    azurite: AzuriteServer,  # noqa: F811
    azure_container: str,
    tmp_path: Path,
) -> None:
    store = open_store(Target.model_validate(azure_target(azurite, azure_container)), retry=FAST)
    store.probe()
    big = digest_file(_file(tmp_path, "big.bin", 5 * 1024 * 1024 + 7), "big.bin")
    landed = store.put(big, "a/1+x/big file.bin")
    assert landed.md5 == big.md5 and landed.size == big.size
    listed = store.list("a/")["a/1+x/big file.bin"]
    assert listed.fingerprint == landed.fingerprint and store.matches(listed, big)
    url = store.presign("a/1+x/big file.bin", expires_s=300)
    assert hashlib.sha256(_fetch(url)).hexdigest() == big.sha256


def test_azurite_refuses_an_expired_or_forged_sas(
    azurite: AzuriteServer,  # noqa: F811
    azure_container: str,
    tmp_path: Path,
) -> None:
    store = open_store(Target.model_validate(azure_target(azurite, azure_container)), retry=FAST)
    store.put(digest_file(_file(tmp_path, "f.bin", 10), "f.bin"), "f.bin")

    def sas(key: str, **more: Any) -> str:
        return blob_read_sas(
            account=azurite.account,
            account_key=key,
            container=azure_container,
            blob="f.bin",
            base_url=f"{azurite.endpoint}/{azurite.account}",
            https_only=False,
            **more,
        )

    expired = sas(azurite.account_key, expires_s=60, now=datetime.now(UTC) - timedelta(hours=2))
    forged = sas("AAAA" + azurite.account_key[4:], expires_s=60)
    for url in (expired, forged):
        with pytest.raises(urllib.error.HTTPError) as refused:
            _fetch(url)
        assert refused.value.code == 403
    assert len(_fetch(sas(azurite.account_key, expires_s=60))) == 10


def test_local_store_reads_back_by_hash_and_gives_file_urls(tmp_path: Path) -> None:
    store = open_store(Target.model_validate(local_target(tmp_path / "store")), retry=FAST)
    store.probe()
    entry = digest_file(_file(tmp_path, "m.bin", 4096), "m.bin")
    landed = store.put(entry, "a/1/m.bin")
    assert landed.size == 4096 and landed.fingerprint.startswith("mtime:")
    url = store.presign("a/1/m.bin", expires_s=60)
    assert url.startswith("file://") and _fetch(url) == entry.path.read_bytes()
    (tmp_path / "store" / "a" / "1" / "m.bin").write_bytes(b"x" * 4096)  # same size, new bytes
    changed = store.stat("a/1/m.bin")
    assert changed is not None and not store.matches(changed, entry)


def test_wrong_s3_credentials_give_one_clear_error(
    moto: MotoServer,  # noqa: F811
    s3_bucket: str,
) -> None:
    store = open_store(Target.model_validate(s3_target(moto, s3_bucket)), retry=FAST)
    moto.require_auth(True)  # moto now knows no access key at all: ours is wrong
    try:
        with pytest.raises(CloudError) as failed:
            store.probe()
    finally:
        moto.require_auth(False)
    error = failed.value
    assert not error.transient
    assert (error.provider, error.container) == ("eu-s3 (s3)", s3_bucket)
    assert "authentication failed" in str(error) and "InvalidAccessKeyId" in str(error)
    assert moto.secret_key not in str(error)


def test_wrong_azure_key_gives_one_clear_error(
    azurite: AzuriteServer,  # noqa: F811
    azure_container: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = Target.model_validate(azure_target(azurite, azure_container, env_prefix="FEDGE_T_BAD"))
    monkeypatch.setenv("FEDGE_T_BAD_KEY", "AAAA" + azurite.account_key[4:])
    with pytest.raises(CloudError, match="authentication failed") as failed:
        open_store(target, retry=FAST).probe()
    assert not failed.value.transient
    assert str(failed.value).startswith(f"eu-azure (azure-blob): {azure_container}: ")


@pytest.mark.parametrize("provider", ["s3", "azure"])
def test_an_unknown_bucket_gives_one_clear_error(
    provider: str,
    moto: MotoServer,  # noqa: F811
    azurite: AzuriteServer,  # noqa: F811
) -> None:
    spec = s3_target(moto, "no-such-bucket") if provider == "s3" else azure_target(
        azurite, "no-such-container"
    )  # fmt: skip
    with pytest.raises(CloudError) as failed:
        open_store(Target.model_validate(spec), retry=FAST).probe()
    assert "does not exist" in str(failed.value) and not failed.value.transient
    assert failed.value.container in ("no-such-bucket", "no-such-container")


@pytest.mark.parametrize("provider", ["s3", "azure"])
def test_create_container_makes_a_missing_bucket_only_when_the_inventory_says_so(
    provider: str,
    moto: MotoServer,  # noqa: F811
    azurite: AzuriteServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    name = f"fresh-{provider}-{os.getpid()}"
    spec = s3_target(moto, name) if provider == "s3" else azure_target(azurite, name)
    plain = open_store(Target.model_validate(spec), retry=FAST)
    with pytest.raises(CloudError, match="does not exist"):
        plain.ensure_container()  # a typo in a bucket name must not create a bucket
    spec["createContainer"] = True
    store = open_store(Target.model_validate(spec), retry=FAST)
    assert store.ensure_container() is True
    assert store.ensure_container() is False  # there now: nothing to create
    store.probe()
    small = digest_file(_file(tmp_path, "small.bin", 100), "small.bin")
    assert store.put(small, "a/1/small.bin").size == 100
    assert set(plain.list("a/1/")) == {"a/1/small.bin"}  # the same container, seen without the flag


def test_an_unreachable_endpoint_is_transient_and_retried(moto: MotoServer) -> None:  # noqa: F811
    spec = s3_target(moto, "any-bucket")
    spec["endpoint"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    waits: list[float] = []
    store = open_store(Target.model_validate(spec), retry=FAST)
    store._sleep = waits.append
    with pytest.raises(CloudError) as failed:
        store.probe()
    assert failed.value.transient
    assert "unreachable: connection refused (after 2 attempts)" in str(failed.value)
    assert waits == [0.01]


def test_credentials_inline_in_the_endpoint_are_refused(moto: MotoServer) -> None:  # noqa: F811
    spec = s3_target(moto, "b")
    spec["endpoint"] = f"http://AKIAXX:topsecret@127.0.0.1:{moto.port}"
    with pytest.raises(UsageError, match="endpoint carries credentials inline") as refused:
        open_store(Target.model_validate(spec))
    assert "topsecret" not in str(refused.value)


def test_a_missing_secret_names_the_target_and_variable(
    moto: MotoServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = s3_target(moto, "b", env_prefix="FEDGE_T_UNSET")
    monkeypatch.delenv("FEDGE_T_UNSET_SECRET")
    with pytest.raises(
        UsageError,
        match="eu-s3: credentials.secretRef: environment variable FEDGE_T_UNSET_SECRET is not set",
    ):
        open_store(Target.model_validate(spec))
    # the field at fault is the one named: a missing key is keyRef, not secretRef
    monkeypatch.setenv("FEDGE_T_UNSET_SECRET", "s")
    monkeypatch.delenv("FEDGE_T_UNSET_KEY")
    with pytest.raises(
        UsageError,
        match="eu-s3: credentials.keyRef: environment variable FEDGE_T_UNSET_KEY is not set",
    ):
        open_store(Target.model_validate(spec))
