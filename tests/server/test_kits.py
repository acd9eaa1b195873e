"""Startup kits and the broker folder (server/kit/): a real mosquitto runs the written config.

The broker test starts mosquitto on the folder ``fedge broker init`` writes and checks what the
security rests on: TLS with the folder's CA, no anonymous client, passwords, and each device
confined to its own topics while the operator sees the whole tree. The kit tests check that a
device kit's agent.yaml is accepted by the real ``fedge-agent check`` and that a holder kit's
start script is valid shell that enrolls once and then starts.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from fedge.errors import UsageError
from fedge.process import ManagedProcess, free_port
from fedge.signing import generate_keypair
from server.kit.broker import OPERATOR, BrokerFolder
from server.kit.kits import device_kit, holder_kit
from tests.support.mqtt_broker import MosquittoBroker, Operator, mosquitto_binary


def _tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name(name)
    return subprocess.run([str(exe), *args], capture_output=True, text=True, check=False)


def test_init_keeps_passwords_and_certificates_and_names_are_checked(tmp_path: Path) -> None:
    broker = BrokerFolder(tmp_path / "b").init(host="127.0.0.1", port=8883)
    user = broker.add_device("clinics", "a-01")
    assert user == "clinics.a-01"
    password, ca = broker.password(user), broker.ca_cert().read_bytes()
    BrokerFolder(tmp_path / "b").init(host="127.0.0.1", port=8883)  # again: nobody locked out
    assert broker.password(user) == password and broker.ca_cert().read_bytes() == ca
    assert broker.users() == ["clinics.a-01", OPERATOR]
    acl = (tmp_path / "b" / "acl").read_text()
    assert "user clinics.a-01\ntopic readwrite fedge/v1/clinics/a-01/#" in acl
    assert "user operator\ntopic readwrite fedge/v1/#" in acl
    for secret in ("passwd", "acl", "secrets/operator.password", "certs/server.key"):
        assert (tmp_path / "b" / secret).stat().st_mode & 0o777 == 0o600, secret
    assert password not in (tmp_path / "b" / "passwd").read_text()  # hashed, never in clear
    with pytest.raises(UsageError, match="fleet 'a.b': a broker fleet name may not contain"):
        broker.add_device("a.b", "x")
    with pytest.raises(UsageError, match="device 'no spaces': not a topic-safe id"):
        broker.add_device("clinics", "no spaces")
    with pytest.raises(UsageError, match="not a broker folder"):
        BrokerFolder(tmp_path / "nothing").add_device("clinics", "a")


@pytest.mark.slow
def test_the_written_config_runs_mosquitto_with_tls_passwords_and_per_device_acl(
    tmp_path: Path,
) -> None:
    try:
        binary = mosquitto_binary()
    except Exception as exc:  # noqa: BLE001 - the support module's own missing-broker error
        pytest.fail(f"mosquitto is needed: {exc}")
    port = free_port()
    done = _tool("fedge", "broker", "init", "--out", str(tmp_path / "b"), "--host", "127.0.0.1",
                 "--port", str(port))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"mosquitto -c {tmp_path / 'b' / 'mosquitto.conf'}" in done.stdout
    broker = BrokerFolder(tmp_path / "b")
    a, b = broker.add_device("clinics", "a"), broker.add_device("clinics", "b")
    server = cast(MosquittoBroker, SimpleNamespace(certs=broker.certs, port=port))
    with ManagedProcess([binary, "-c", str(broker.config)], log_path=tmp_path / "m.log") as proc:
        proc.wait_for_port(port)
        with (
            Operator(server, OPERATOR, broker.password(OPERATOR)) as operator,
            Operator(server, a, broker.password(a), subscribe=()) as device,
        ):
            device.publish("fedge/v1/clinics/a/status", {"ok": 1}).wait_for_publish(5)
            device.publish("fedge/v1/clinics/b/status", {"forged": 1}).wait_for_publish(5)
            operator.wait_for(
                lambda: "fedge/v1/clinics/a/status" in operator.latest, timeout=10, what="a"
            )
            time.sleep(0.5)  # the forged message, had it passed the ACL, would be here by now
            assert "fedge/v1/clinics/b/status" not in operator.latest
        refused = Operator(server, b, "wrong-password", subscribe=())
        with pytest.raises(RuntimeError, match="could not connect"):
            refused.__enter__()


def test_a_device_kit_is_accepted_by_the_real_agent(tmp_path: Path) -> None:
    broker = BrokerFolder(tmp_path / "b").init(host="mqtt.example.org", port=8883)
    signer = generate_keypair().public
    kit = device_kit(
        tmp_path / "kit", broker=broker, fleet="clinics", device="a-01", trusted=[signer.inline]
    )
    assert kit.username == "clinics.a-01" and "clinics.a-01" in broker.users()
    assert (kit.folder / "ca.crt").read_bytes() == broker.ca_cert().read_bytes()
    assert (kit.folder / "device.password").stat().st_mode & 0o777 == 0o600
    assert (kit.folder / "device.password").read_text().strip() == broker.password(kit.username)
    checked = _tool("fedge-agent", "check", "--config", str(kit.folder / "agent.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "a-01" in checked.stdout
    with pytest.raises(UsageError, match="--out .*not empty"):
        device_kit(tmp_path / "kit", broker=broker, fleet="clinics", device="a-01",
                   trusted=[signer.inline])  # fmt: skip


def test_a_holder_kit_enrolls_once_then_starts(tmp_path: Path) -> None:
    policy = tmp_path / "federation.yaml"
    policy.write_text("apiVersion: fedge/v1\n", encoding="utf-8")
    kit = holder_kit(
        tmp_path / "kit", name="hospital-a", token="fedge1.secret.hash", expires_at="2030-01-01",
        policy=policy, coordinator="coord.example.org:9443",
    )  # fmt: skip
    assert (kit.folder / "token").stat().st_mode & 0o777 == 0o600
    script = kit.folder / "start.sh"
    assert subprocess.run(["/bin/sh", "-n", str(script)], check=False).returncode == 0
    # Run it with fake fedge-client that records its arguments: enroll first, then start.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    fake = bin_dir / "fedge-client"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$FEDGE_ENROLL_TOKEN|$*" >> {calls}\n'
        'if [ "$1" = enroll ]; then mkdir -p state && echo {} > state/join.json; fi\n'
    )
    fake.chmod(0o755)
    data = tmp_path / "data.tsv"
    data.write_text("text\tlabel\n", encoding="utf-8")
    env: dict[str, Any] = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    for _ in range(2):
        run = subprocess.run([str(script), str(data)], env=env, capture_output=True, text=True,
                             check=False, cwd=tmp_path)  # fmt: skip
        assert run.returncode == 0, run.stderr
    lines = calls.read_text().splitlines()
    assert lines[0] == (
        "fedge1.secret.hash|enroll --coordinator coord.example.org:9443 --state-dir state "
        "--name hospital-a"
    )
    start = f"|start --policy federation.yaml --state-dir state --data {data}"
    assert lines[1:] == [start, start]  # enrolled once; the second run only starts


def test_fedge_kit_holder_issues_a_token_the_registry_knows(tmp_path: Path) -> None:
    from fedge.enroll_token import parse_token
    from fedge.tls import generate_federation_certs
    from server.enrollment.registry import Registry

    certs = generate_federation_certs(tmp_path / "certs")
    policy = tmp_path / "federation.yaml"
    policy.write_text("apiVersion: fedge/v1\n", encoding="utf-8")
    workdir = tmp_path / "coordinator"
    made = _tool("fedge", "kit", "holder", "hospital-a", "--ca", str(certs.ca_cert),
                 "--policy", str(policy), "--coordinator", "127.0.0.1:9443",
                 "--workdir", str(workdir), "--out", str(tmp_path / "kit"), "--expires", "2h")  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = (tmp_path / "kit" / "token").read_text().strip()
    assert (tmp_path / "kit" / "ca.crt").read_bytes() == certs.ca_cert.read_bytes()
    assert token not in made.stdout  # the token is in the kit, never on the terminal
    parse_token(token)
    (holder,) = Registry.in_workdir(workdir).holders()
    assert (holder.name, holder.state) == ("hospital-a", "pending")
    missing = _tool("fedge", "kit", "holder", "hospital-b", "--ca", str(certs.ca_cert),
                    "--policy", str(tmp_path / "nope.yaml"), "--coordinator", "h:1",
                    "--workdir", str(workdir), "--out", str(tmp_path / "kit-b"))  # fmt: skip
    assert missing.returncode == 2 and "--policy" in missing.stderr
    assert [h.name for h in Registry.in_workdir(workdir).holders()] == ["hospital-a"]
