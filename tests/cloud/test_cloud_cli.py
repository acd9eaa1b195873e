"""``fedge place plan/apply/status/urls`` through fedge's own exit-code wrapper, against moto,
Azurite and a local folder: tables, JSON, drift repair from the command line, and one clear error
line for each way a store can be misconfigured."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from fedge.artifact import sign_artifact, verify_artifact
from fedge.cli import new_app, out
from fedge.process import free_port
from fedge.signing import generate_keypair
from server.cli.place import place_app
from tests.conftest import Result
from tests.support.cloud_servers import (
    AzuriteServer,
    MotoServer,
    azure_target,
    azurite,  # noqa: F401 - pytest fixture
    inventory_document,
    local_target,
    moto,  # noqa: F401 - pytest fixture
    placement_document,
    s3_target,
    unique,
    write_yaml,
)

Cli = Callable[..., Result]


@pytest.fixture(scope="module")
def fedge() -> typer.Typer:
    """A stand-in for server.cli.app's app with ``place`` registered the way the lead wires it."""
    app = new_app("fedge", "test app")
    app.add_typer(place_app, name="place")
    return app


@dataclass
class Setup:
    inventory: Path
    policy: Path
    artifact: Path
    state: Path
    pub: Path
    tmp: Path
    container: str


@pytest.fixture
def setup(moto: MotoServer, azurite: AzuriteServer, tmp_path: Path) -> Setup:  # noqa: F811
    bucket, container = unique("cli-s3"), unique("cli-az")
    moto.create_bucket(bucket)
    azurite.create_container(container)
    inventory = write_yaml(
        tmp_path / "inventory.yaml",
        inventory_document(
            [
                s3_target(moto, bucket),
                azure_target(azurite, container),
                local_target(tmp_path / "store-eu"),
                local_target(tmp_path / "store-us", name="us-local", residency="us"),
            ]
        ),
    )
    policy = write_yaml(
        tmp_path / "policy.yaml",
        placement_document(
            {
                "artifacts": {"matchLabels": {"app": "sentiment"}},
                "residency": ["eu"],
                "replicas": {"min": 3, "max": 3},
                "spread": {"minProviders": 3},
                "strategy": {"type": "ordered", "preference": ["eu-s3", "eu-azure", "eu-local"]},
            }
        ),
    )
    keypair = generate_keypair()
    keypair.save(tmp_path / "keys")
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "model.onnx").write_bytes(os.urandom(20_000))
    sign_artifact(
        artifact, keypair, name="sentiment", version="1.0", format="onnx-int8",
        labels={"app": "sentiment"},
    )  # fmt: skip
    return Setup(
        inventory=inventory,
        policy=policy,
        artifact=artifact,
        state=tmp_path / "state.sqlite",
        pub=tmp_path / "keys" / "signing.pub",
        tmp=tmp_path,
        container=container,
    )


def _args(setup: Setup, *names: str) -> list[str]:
    args = []
    for name in names:
        args += [f"--{name}", str(getattr(setup, name))]
    return args


def test_plan_prints_a_table_with_a_reason_for_every_rejected_target(
    cli: Cli, fedge: typer.Typer, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(out, "width", 200)  # one table row per line, as on a wide terminal
    result = cli(fedge, "place", "plan", *_args(setup, "policy", "inventory", "artifact"))
    assert result.code == 0, result.err
    assert "placement plan: sentiment 1.0" in result.out
    for name in ("eu-s3", "eu-azure", "eu-local", "us-local"):
        assert name in result.out
    [us_row] = [line for line in result.out.splitlines() if "us-local" in line]
    assert "rejected" in us_row and "residency us not allowed (allowed: eu)" in us_row
    assert "3 replica(s): eu-s3, eu-azure, eu-local" in result.out


def test_apply_status_urls_and_repair_from_the_command_line(
    cli: Cli,
    fedge: typer.Typer,
    setup: Setup,
    azurite: AzuriteServer,  # noqa: F811
) -> None:
    everything = _args(setup, "policy", "inventory", "artifact", "state")
    applied = cli(fedge, "place", "apply", *everything, "--trusted", str(setup.pub))
    assert applied.code == 0, applied.err
    assert "placement ok" in applied.out
    status = cli(fedge, "place", "status", "--state", str(setup.state))
    assert status.code == 0 and "sentiment" in status.out and "ok" in status.out
    shared = cli(fedge, "place", "urls", *_args(setup, "inventory", "artifact", "state"))
    assert shared.code == 0, shared.err
    document = json.loads(shared.out)
    assert [r["target"] for r in document["replicas"]] == ["eu-s3", "eu-azure", "eu-local"]
    azure = document["replicas"][1]
    device = setup.tmp / "device"
    for relative, url in {
        "manifest.json": azure["manifest"],
        "manifest.sig": azure["signature"],
        **azure["files"],
    }.items():
        (device / relative).parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            (device / relative).write_bytes(response.read())
    from fedge.signing import load_public_key

    verify_artifact(device, [load_public_key(setup.pub)])

    # Behind fedge's back: the whole Azure replica goes. `fedge place apply` brings it back.
    driver = azurite.driver()
    container = driver.get_container(setup.container)
    for obj in driver.list_container_objects(container, prefix="sentiment/1.0/"):
        driver.delete_object(obj)
    repaired = cli(fedge, "place", "apply", *everything)
    assert repaired.code == 0, repaired.err
    assert "eu-azure       upload  model.onnx" in repaired.out
    assert "eu-s3          upload" not in repaired.out
    assert len(driver.list_container_objects(container, prefix="sentiment/1.0/")) == 3


def test_an_unsatisfiable_policy_is_one_line_and_exit_2(
    cli: Cli, fedge: typer.Typer, setup: Setup
) -> None:
    policy = setup.policy.read_text().replace("min: 3", "min: 4").replace("max: 3", "max: 4")
    setup.policy.write_text(policy)
    result = cli(fedge, "place", "apply", *_args(setup, "policy", "inventory", "artifact", "state"))
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        "fedge: error: policy eu-only cannot place sentiment 1.0: only 3 target(s) can hold a "
        "replica, replicas.min is 4; nothing was uploaded"
    ]


def _one_target_inventory(setup: Setup, target: dict[str, object]) -> list[str]:
    write_yaml(setup.inventory, inventory_document([target]))
    write_yaml(
        setup.policy,
        placement_document({"replicas": {"min": 1, "max": 1}}, name="one"),
    )
    return [*_args(setup, "policy", "inventory", "artifact", "state"), "--attempts", "2"]


def test_wrong_credentials_are_one_clear_line(
    cli: Cli,
    fedge: typer.Typer,
    setup: Setup,
    moto: MotoServer,  # noqa: F811
) -> None:
    args = _one_target_inventory(setup, s3_target(moto, unique("creds")))
    moto.require_auth(True)
    try:
        result = cli(fedge, "place", "apply", *args)
    finally:
        moto.require_auth(False)
    assert result.code == 1
    [line] = result.err.strip().splitlines()
    assert line.startswith("fedge: error: eu-s3 (s3): creds-")
    assert "authentication failed" in line and "check credentials.keyRef and secretRef" in line
    assert moto.secret_key not in result.err


@pytest.mark.parametrize("provider", ["s3", "azure"])
def test_an_unknown_bucket_is_one_clear_line(
    provider: str,
    cli: Cli,
    fedge: typer.Typer,
    setup: Setup,
    moto: MotoServer,  # noqa: F811
    azurite: AzuriteServer,  # noqa: F811
) -> None:
    target = (
        s3_target(moto, "no-such-bucket")
        if provider == "s3"
        else azure_target(azurite, "no-such-bucket")
    )
    result = cli(fedge, "place", "apply", *_one_target_inventory(setup, target))
    assert result.code == 1
    where = "eu-s3 (s3)" if provider == "s3" else "eu-azure (azure-blob)"
    assert result.err.strip().splitlines() == [
        f"fedge: error: {where}: no-such-bucket: the container (bucket) does not exist; "
        "create it or fix `container`"
    ]


def test_a_wrong_azure_key_is_one_clear_line(
    cli: Cli,
    fedge: typer.Typer,
    setup: Setup,
    azurite: AzuriteServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = azure_target(azurite, setup.container, env_prefix="FEDGE_T_CLI_BAD")
    monkeypatch.setenv("FEDGE_T_CLI_BAD_KEY", "AAAA" + azurite.account_key[4:])
    result = cli(fedge, "place", "apply", *_one_target_inventory(setup, target))
    assert result.code == 1
    [line] = result.err.strip().splitlines()
    assert line.startswith(f"fedge: error: eu-azure (azure-blob): {setup.container}: ")
    assert "authentication failed" in line


def test_an_unreachable_endpoint_is_one_clear_line(
    cli: Cli,
    fedge: typer.Typer,
    setup: Setup,
    moto: MotoServer,  # noqa: F811
) -> None:
    target = s3_target(moto, "any")
    target["endpoint"] = f"http://127.0.0.1:{free_port()}"
    result = cli(fedge, "place", "apply", *_one_target_inventory(setup, target))
    assert result.code == 1
    [line] = result.err.strip().splitlines()
    assert line.startswith("fedge: error: sentiment 1.0: 0 intact replica(s), replicas.min is 1")
    assert "(eu-s3 down: any: endpoint http://127.0.0.1:" in line
    assert "unreachable: connection refused (after 2 attempts))" in line
    assert "eu-s3          down    any: endpoint" in result.out  # the progress line


def test_an_inline_secret_in_the_inventory_is_one_located_line(
    cli: Cli,
    fedge: typer.Typer,
    setup: Setup,
    moto: MotoServer,  # noqa: F811
) -> None:
    target = s3_target(moto, "any")
    target["credentials"] = {"keyRef": {"env": "FEDGE_T_S3_KEY"}, "secretRef": "wJalrXUtnFEMI"}
    result = cli(fedge, "place", "plan", *_one_target_inventory(setup, target)[:6])
    assert result.code == 2
    [line] = result.err.strip().splitlines()
    assert line.startswith(f"{setup.inventory}:")
    assert "credentials.secretRef: inline secret where a secretRef belongs" in line
    assert "wJalrXUtnFEMI" not in result.err
