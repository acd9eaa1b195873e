"""Real S3 and Azure Blob endpoints for the cloud tests: moto's server and Azurite.

Each starts on a free 127.0.0.1 port with throwaway credentials and stops at the end (no process
outlives the session). A missing binary fails the run under CI (env ``CI`` set) and skips the
tests elsewhere. Plain context managers (``moto_server``, ``azurite_server``) serve the
benchmark; the pytest fixtures ``moto`` and ``azurite`` wrap them once per session.

Use the fixtures by importing them into a test module::

    from tests.support.cloud_servers import azurite, moto  # noqa: F401 - pytest fixtures
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fedge.errors import FedgeError
from fedge.process import ManagedProcess, free_port

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"


class ServerMissingError(RuntimeError):
    """The server's binary is not installed here."""


class ServerStartError(FedgeError):
    """A test server exited at start or never listened (the message has its log's tail)."""


@dataclass
class Server:
    process: ManagedProcess
    port: int
    log: Path
    paused: bool = field(default=False)

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def pause(self) -> None:
        """Freeze the endpoint (SIGSTOP): connections hang until :meth:`resume`, data is kept."""
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.paused = False


@dataclass
class MotoServer(Server):
    access_key: str = ""
    secret_key: str = ""

    def driver(self, *, region: str = "eu-west-1") -> Any:
        """libcloud's own S3 driver on this server (set-up, and changes behind fedge's back)."""
        from libcloud.storage.drivers.s3 import S3StorageDriver

        driver = S3StorageDriver(  # type: ignore[no-untyped-call]
            self.access_key, self.secret_key, host=LOOPBACK, port=self.port, secure=False,
            region=region,
        )  # fmt: skip
        driver.ex_location_name = region
        return driver

    def create_bucket(self, name: str, *, region: str = "eu-west-1") -> None:
        self.driver(region=region).create_container(name)

    def require_auth(self, enabled: bool) -> None:
        """Make moto check access keys (it accepts any by default); only IAM-made keys pass."""
        request = urllib.request.Request(  # noqa: S310 - loopback URL built here
            f"{self.endpoint}/moto-api/reset-auth",
            data=b"0" if enabled else b"inf",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            response.read()


@dataclass
class AzuriteServer(Server):
    account: str = ""
    account_key: str = ""

    def driver(self) -> Any:
        """libcloud's own Azure driver on this server (set-up, and changes behind fedge's back)."""
        from libcloud.storage.drivers.azure_blobs import AzureBlobsStorageDriver

        return AzureBlobsStorageDriver(  # type: ignore[no-untyped-call]
            self.account, self.account_key, host=LOOPBACK, port=self.port, secure=False
        )

    def create_container(self, name: str) -> None:
        self.driver().create_container(name)


def _moto_binary() -> str:
    found = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
        "moto_server"
    )
    if found is None:
        raise ServerMissingError("moto_server is not installed (pip install 'moto[server]')")
    return found


def _azurite_binary() -> str:
    local = REPO / ".ci" / "cache" / "node" / "node_modules" / ".bin" / "azurite-blob"
    found = shutil.which("azurite-blob") or (str(local) if local.exists() else None)
    if found is None or shutil.which("node") is None:
        raise ServerMissingError(
            "azurite-blob is not installed (source scripts/setup-env.sh all,dev; "
            "fedge_setup_servers)"
        )
    return found


@contextlib.contextmanager
def moto_server(workdir: Path | None = None) -> Iterator[MotoServer]:
    binary = _moto_binary()
    port = free_port()
    with contextlib.ExitStack() as stack:
        folder = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        log = folder / f"moto-{port}.log"
        env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
        process = ManagedProcess(
            [binary, "-H", LOOPBACK, "-p", str(port)],
            log_path=log,
            name="moto_server",
            cwd=folder,
            env=env,
            error=ServerStartError,
        ).start()
        try:
            process.wait_for_port(port, timeout=30)
            yield MotoServer(
                process=process,
                port=port,
                log=log,
                access_key="AKIA" + secrets.token_hex(8).upper(),
                secret_key=secrets.token_urlsafe(30),
            )
        finally:
            process.stop()


@contextlib.contextmanager
def azurite_server(workdir: Path | None = None) -> Iterator[AzuriteServer]:
    binary = _azurite_binary()
    port = free_port()
    account = "fedge" + secrets.token_hex(4)
    key = base64.b64encode(secrets.token_bytes(64)).decode("ascii")
    with contextlib.ExitStack() as stack:
        folder = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        log = folder / f"azurite-{port}.log"
        process = ManagedProcess(
            [
                binary,
                "--blobHost",
                LOOPBACK,
                "--blobPort",
                str(port),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--disableProductStyleUrl",
                "--disableTelemetry",
                "--loose",
                "--silent",
            ],
            log_path=log,
            name="azurite-blob",
            cwd=folder,
            env={**os.environ, "AZURITE_ACCOUNTS": f"{account}:{key}"},
            error=ServerStartError,
        ).start()
        try:
            process.wait_for_port(port, timeout=30)
            yield AzuriteServer(
                process=process, port=port, log=log, account=account, account_key=key
            )
        finally:
            process.stop()


def _missing(exc: ServerMissingError) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{exc} (required under CI)")
    pytest.skip(str(exc))


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto S3 server for the session; tests make their own buckets."""
    try:
        context = moto_server(tmp_path_factory.mktemp("moto"))
        server = context.__enter__()
    except ServerMissingError as exc:
        _missing(exc)
        raise
    try:
        yield server
    finally:
        if server.paused:
            server.resume()
        context.__exit__(None, None, None)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """One Azurite blob server for the session; tests make their own containers."""
    try:
        context = azurite_server(tmp_path_factory.mktemp("azurite"))
        server = context.__enter__()
    except ServerMissingError as exc:
        _missing(exc)
        raise
    try:
        yield server
    finally:
        context.__exit__(None, None, None)


# -- documents and artifacts the cloud tests share ------------------------------------------------


def write_yaml(path: Path, document: dict[str, object]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def inventory_document(
    targets: list[dict[str, object]], *, name: str = "clouds"
) -> dict[str, object]:
    return {
        "apiVersion": "fedge/v1",
        "kind": "CloudInventory",
        "metadata": {"name": name},
        "spec": {"targets": targets},
    }


def placement_document(spec: dict[str, object], *, name: str = "eu-only") -> dict[str, object]:
    return {
        "apiVersion": "fedge/v1",
        "kind": "PlacementPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def s3_target(
    server: MotoServer,
    bucket: str,
    *,
    name: str = "eu-s3",
    env_prefix: str = "FEDGE_T_S3",
    region: str = "eu-west-1",
    residency: str = "eu",
    price: float = 0.023,
) -> dict[str, object]:
    """An S3 target on moto; its credentials sit in ``<env_prefix>_KEY/_SECRET``."""
    os.environ[f"{env_prefix}_KEY"] = server.access_key
    os.environ[f"{env_prefix}_SECRET"] = server.secret_key
    return {
        "name": name,
        "provider": "s3",
        "endpoint": server.endpoint,
        "region": region,
        "residency": residency,
        "container": bucket,
        "pricing": {"storagePerGBMonth": price, "egressPerGB": 0.09},
        "credentials": {
            "keyRef": {"env": f"{env_prefix}_KEY"},
            "secretRef": {"env": f"{env_prefix}_SECRET"},
        },
    }  # fmt: skip


def azure_target(
    server: AzuriteServer,
    container: str,
    *,
    name: str = "eu-azure",
    env_prefix: str = "FEDGE_T_AZ",
    residency: str = "eu",
    price: float = 0.02,
) -> dict[str, object]:
    os.environ[f"{env_prefix}_ACCOUNT"] = server.account
    os.environ[f"{env_prefix}_KEY"] = server.account_key
    return {
        "name": name,
        "provider": "azure-blob",
        "endpoint": server.endpoint,
        "region": "westeurope",
        "residency": residency,
        "container": container,
        "pricing": {"storagePerGBMonth": price, "egressPerGB": 0.087},
        "credentials": {
            "keyRef": {"env": f"{env_prefix}_ACCOUNT"},
            "secretRef": {"env": f"{env_prefix}_KEY"},
        },
    }  # fmt: skip


def local_target(
    path: Path, *, name: str = "eu-local", residency: str = "eu", price: float = 0.01
) -> dict[str, object]:
    return {
        "name": name,
        "provider": "local",
        "path": str(path),
        "region": f"{residency}-onprem",
        "residency": residency,
        "pricing": {"storagePerGBMonth": price},
    }


def unique(prefix: str) -> str:
    """A bucket or container name no other test uses (3-63 lowercase characters)."""
    return f"{prefix}-{secrets.token_hex(4)}"
