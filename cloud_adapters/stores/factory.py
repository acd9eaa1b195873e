"""From a CloudInventory target to an open :class:`~cloud_adapters.stores.base.ArtifactStore`.

Secrets are read here, at use (``SecretRef.resolve``, which also registers them for log
redaction), never when the inventory is loaded, and never echoed in an error. A setting the
policy models accept but a store cannot use (an S3 target without a region AWS knows and no
endpoint, an Azure key that is not base64, credentials written into the endpoint URL) is a
:class:`~fedge.errors.UsageError` naming the target and field.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cloud_adapters.stores.base import ArtifactStore
from cloud_adapters.stores.retry import RetryPolicy
from fedge.errors import UsageError
from policies.inventory import Target

__all__ = ["StoreFactory", "open_store"]

StoreFactory = Callable[[Target], ArtifactStore]


def _credentials(target: Target, base_dir: Path | None) -> tuple[str, str]:
    if target.credentials is None:
        raise UsageError(
            f"target {target.name}: a {target.provider} target needs credentials "
            "(keyRef and secretRef)"
        )
    try:
        key = target.credentials.key_ref.resolve(base_dir=base_dir, field="keyRef")
        secret = target.credentials.secret_ref.resolve(base_dir=base_dir, field="secretRef")
    except UsageError as exc:
        raise UsageError(f"target {target.name}: credentials.{exc}") from exc
    return key, secret


def _check_endpoint(target: Target) -> None:
    if target.endpoint is None:
        return
    parts = urlsplit(target.endpoint)
    if parts.username or parts.password:
        raise UsageError(
            f"target {target.name}: endpoint carries credentials inline (user:secret@host); "
            "put them in credentials.keyRef and secretRef"
        )
    if parts.path not in ("", "/") or parts.query:
        raise UsageError(
            f"target {target.name}: endpoint must be scheme://host[:port], without a path"
        )


def _ca_file(target: Target, base_dir: Path | None) -> str | None:
    if target.tls.ca_file is None:
        return None
    path = Path(target.tls.ca_file)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        raise UsageError(f"target {target.name}: tls.caFile {path} does not exist")
    return str(path)


def _use_ca(driver: Any, ca_file: str | None) -> None:
    # libcloud reads its CA bundle from a process-wide setting; pin this driver's own instead.
    if ca_file is not None:
        driver.connection.connect()
        driver.connection.connection.ca_cert = ca_file


def open_store(
    target: Target,
    *,
    retry: RetryPolicy | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> ArtifactStore:
    """Open the store of one inventory target (no network call yet; see ``probe``)."""
    policy = retry or RetryPolicy()
    folder = Path(base_dir) if base_dir is not None else None
    _check_endpoint(target)
    common: dict[str, Any] = {
        "target": target.name,
        "provider": target.provider,
        "endpoint": target.endpoint,
        "retry": policy,
        "create_container": target.create_container,
    }
    if target.provider == "local":
        from cloud_adapters.stores.local import LocalStore, make_local_driver

        if target.path is None:
            raise UsageError(f"target {target.name}: a local target needs a path")
        path = Path(target.path)
        if folder is not None and not path.is_absolute():
            path = folder / path
        driver, container, where = make_local_driver(path=str(path), container=target.container)
        return LocalStore(driver=driver, container=container, folder=where, **common)
    if target.container is None:
        raise UsageError(f"target {target.name}: a {target.provider} target needs a container")
    key, secret = _credentials(target, folder)
    ca_file = _ca_file(target, folder)
    if target.provider == "s3":
        from cloud_adapters.stores.s3 import S3Store, make_s3_driver

        try:
            s3, host, port, secure = make_s3_driver(
                access_key=key,
                secret_key=secret,
                region=target.region,
                endpoint=target.endpoint,
                timeout_s=policy.timeout_s,
            )
        except ValueError as exc:
            raise UsageError(f"target {target.name}: {exc}") from exc
        _use_ca(s3, ca_file)
        return S3Store(
            driver=s3,
            container=target.container,
            access_key=key,
            secret_key=secret,
            region=target.region,
            host=host,
            port=port,
            secure=secure,
            **common,
        )
    from cloud_adapters.stores.azure import AzureStore, make_azure_driver

    try:
        azure, base_url = make_azure_driver(
            account=key, account_key=secret, endpoint=target.endpoint, timeout_s=policy.timeout_s
        )
    except ValueError as exc:
        raise UsageError(f"target {target.name}: {exc}") from exc
    _use_ca(azure, ca_file)
    return AzureStore(
        driver=azure,
        container=target.container,
        account=key,
        account_key=secret,
        base_url=base_url,
        **common,
    )
