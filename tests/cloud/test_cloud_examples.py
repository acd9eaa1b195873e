"""The one-machine placement example (policies/examples/inventory-local.yaml and
placement-local.yaml) works as shipped: only the endpoint's port is changed to the test's moto.

The README's "placement on one machine" section runs exactly this: a real ``fedge place apply``
process against a real S3-compatible endpoint (moto_server) and two folders, with the bucket
created by fedge (``createContainer: true``), not by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedge.artifact import sign_artifact
from fedge.signing import generate_keypair
from policies import EXAMPLES_DIR
from tests.support.cloud_servers import MotoServer, moto  # noqa: F401 - pytest fixture

SHIPPED_ENDPOINT = "http://127.0.0.1:5000"


def _fedge(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("fedge")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


@pytest.mark.slow
def test_the_one_machine_example_places_on_moto_and_a_folder(
    moto: MotoServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    inventory_text = (EXAMPLES_DIR / "inventory-local.yaml").read_text(encoding="utf-8")
    assert SHIPPED_ENDPOINT in inventory_text
    inventory = tmp_path / "inventory-local.yaml"
    inventory.write_text(inventory_text.replace(SHIPPED_ENDPOINT, moto.endpoint), encoding="utf-8")
    policy = tmp_path / "placement-local.yaml"
    policy.write_text((EXAMPLES_DIR / "placement-local.yaml").read_text(encoding="utf-8"))
    artifact = tmp_path / "model"
    artifact.mkdir()
    (artifact / "model.onnx").write_bytes(os.urandom(2048))
    keypair = generate_keypair()
    sign_artifact(
        artifact, keypair, name="sentiment", version="1.0", format="onnx-int8",
        labels={"app": "sentiment"},
    )  # fmt: skip
    env = {
        **os.environ,
        "FEDGE_LOCAL_S3_KEY": moto.access_key,
        "FEDGE_LOCAL_S3_SECRET": moto.secret_key,
    }
    args = ("--policy", str(policy), "--inventory", str(inventory), "--artifact", str(artifact))
    state = ("--state", str(tmp_path / "place.sqlite"))

    done = _fedge("place", "apply", *args, *state, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "container fedge-artifacts created" in done.stdout
    bucket = moto.driver().get_container("fedge-artifacts")
    names = {obj.name for obj in bucket.list_objects()}
    assert "sentiment/1.0/model.onnx" in names, names
    eu = tmp_path / "fedge-stores" / "eu"
    assert any(path.name == "model.onnx" for path in eu.rglob("*")), "nothing in the EU folder"
    us = tmp_path / "fedge-stores" / "us"
    assert not any(path.is_file() for path in us.rglob("*")), "a replica left the EU"

    again = _fedge("place", "apply", *args, *state, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "created" not in again.stdout  # the bucket exists now; nothing re-created

    urls = _fedge("place", "urls", *args[2:], *state, env=env)
    assert urls.returncode == 0, urls.stderr
    assert moto.endpoint in urls.stdout and "file://" in urls.stdout
