"""Policy validation: every problem, located, with a hint; and the rules between fields."""

from __future__ import annotations

import textwrap

import pytest

from fedge.errors import PolicyError
from policies import (
    EXAMPLES_DIR,
    AgentConfig,
    FederationPolicy,
    check_files,
    check_text,
    load_files,
    load_one,
)


def problems(text: str) -> list[str]:
    return [str(p) for p in check_text(textwrap.dedent(text).lstrip("\n"), name="p.yaml").problems]


FED = """
apiVersion: fedge/v1
kind: FederationPolicy
metadata: {name: fed}
spec:
"""


def test_every_example_is_valid_and_loads() -> None:
    files = sorted(EXAMPLES_DIR.glob("*.yaml"))
    one_machine = [f for f in files if f.stem.endswith("-local")]
    main = [f for f in files if f not in one_machine]
    assert {f.stem for f in main} == {"agent", "federation", "inventory", "placement", "rollout"}
    assert {f.stem for f in one_machine} == {"inventory-local", "placement-local"}
    report = check_files(main)
    assert report.problems == []
    assert sorted(entry.document.kind for entry in report.documents) == [
        "AgentConfig",
        "CloudInventory",
        "FederationPolicy",
        "PlacementPolicy",
        "RolloutPolicy",
    ]
    local = check_files(one_machine)  # the one-machine pair is checked together, as it is used
    assert local.problems == []
    assert sorted(e.document.kind for e in local.documents) == ["CloudInventory", "PlacementPolicy"]


def test_three_mistakes_give_three_located_problems() -> None:
    found = problems(FED + "  rounds: three\n  privacy:\n    targetEpsilom: 8\n    delta: 2.0\n")
    assert found == [
        "p.yaml:5:11: spec.rounds: Input should be a valid integer (got 'three')",
        "p.yaml:7:5: spec.privacy.targetEpsilom: unknown field 'targetEpsilom' (did you mean 'targetEpsilon'?)",
        "p.yaml:8:12: spec.privacy.delta: Input should be less than 1 (got 2.0)",
    ]


def test_defaults_fill_an_almost_empty_spec() -> None:
    report = check_text(textwrap.dedent(FED).lstrip() + "  rounds: 2\n")
    assert report.ok
    doc = report.documents[0].document
    assert isinstance(doc, FederationPolicy)
    assert doc.spec.rounds == 2
    assert doc.spec.privacy.accountant == "rdp"
    assert doc.spec.round_timeout == 600.0


def test_yaml_1_2_scalars_exponents_are_numbers_and_no_is_a_string() -> None:
    report = check_text(
        textwrap.dedent(FED).lstrip() + "  privacy: {delta: 1e-5}\n  roundTimeout: 1h30m\n"
    )
    assert report.ok, report.problems
    doc = report.documents[0].document
    assert isinstance(doc, FederationPolicy)
    assert doc.spec.privacy.delta == 1e-5
    assert doc.spec.round_timeout == 5400.0
    found = problems(FED + "  protection: no\n")
    assert found == ["p.yaml:5:15: spec.protection: 'no' is not allowed (did you mean 'none'?)"]


def test_strict_types_refuse_quoted_numbers_and_yes() -> None:
    found = problems(FED + "  rounds: '3'\n  training: {localEpochs: yes}\n")
    assert "p.yaml:5:11: spec.rounds: Input should be a valid integer (got '3')" in found
    assert (
        "p.yaml:6:27: spec.training.localEpochs: Input should be a valid integer (got 'yes')"
        in found
    )


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (
            "apiVersion: fedge/v2\nkind: FederationPolicy\n",
            "p.yaml:1:13: apiVersion: unknown apiVersion 'fedge/v2' (supported: fedge/v1)",
        ),
        (
            "apiVersion: fedge/v1\nkind: FederationPolice\n",
            "p.yaml:2:7: kind: unknown kind 'FederationPolice' (did you mean 'FederationPolicy'?)",
        ),
        (
            "kind: FederationPolicy\n",
            "p.yaml:1:1: apiVersion: required field is missing (write apiVersion: fedge/v1)",
        ),
    ],
)
def test_envelope_problems(head: str, expected: str) -> None:
    assert expected in problems(head + "metadata: {name: x}\nspec: {}\n")


def test_inline_secrets_are_refused_without_echoing_them() -> None:
    text = """
    apiVersion: fedge/v1
    kind: CloudInventory
    metadata: {name: inv}
    spec:
      targets:
        - name: a
          provider: s3
          region: eu-west-1
          residency: eu
          container: bucket
          credentials:
            key: AKIAEXAMPLEKEY
            secretRef: wJalrXUtnFEMIEXAMPLE
    """
    found = problems(text)
    assert found == [
        "p.yaml:12:9: spec.targets[0].credentials.key: inline secret where a secretRef belongs "
        "(use keyRef: {env: VAR} or {file: PATH})",
        "p.yaml:13:20: spec.targets[0].credentials.secretRef: inline secret where a secretRef "
        "belongs (secrets never appear inline: use {env: VAR} or {file: PATH})",
    ]
    assert not any("AKIA" in p or "wJalr" in p for p in found)


def example_problems(example: str, *edits: tuple[str, str]) -> list[str]:
    """Problems of an example file after textual edits (each edit must apply)."""
    text = (EXAMPLES_DIR / example).read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return [str(p) for p in check_text(text, name=example).problems]


def test_password_in_broker_is_an_inline_secret() -> None:
    found = example_problems(
        "agent.yaml", ("passwordRef: {file: device.password}", "password: hunter22")
    )
    assert len(found) == 1
    assert (
        "spec.broker.password: inline secret where a secretRef belongs (use passwordRef:"
        in found[0]
    )
    assert "hunter22" not in found[0]


def test_secret_ref_needs_exactly_one_source() -> None:
    found = example_problems(
        "agent.yaml", ("passwordRef: {file: device.password}", "passwordRef: {file: a, env: B}")
    )
    assert len(found) == 1
    assert "spec.broker.passwordRef: give exactly one of env or file" in found[0]


def test_duplicate_keys_and_non_mapping_documents() -> None:
    found = problems(FED + "  rounds: 2\n  rounds: 3\n---\n- just\n- a list\n")
    assert "p.yaml:6:3: spec.rounds: duplicate key (first given at line 5)" in found
    assert (
        "p.yaml:8:1: a policy document must be a mapping (with apiVersion, kind, metadata, spec)"
        in found
    )


def test_unknown_field_far_from_any_name_lists_the_choices() -> None:
    found = problems(FED + "  zzz: 1\n")
    assert found[0].startswith(
        "p.yaml:5:3: spec.zzz: unknown field 'zzz' (expected one of: model, rounds,"
    )


def test_cross_field_rules() -> None:
    found = problems(FED + "  clients: {perRound: 2, minimum: 3}\n")
    assert found == [
        "p.yaml:5:35: spec.clients.minimum: minimum (3) exceeds perRound (2) "
        "(a round could never gather enough replies)"
    ]


def test_he_protection_needs_plain_fedavg() -> None:
    found = problems(FED + "  protection: he\n  aggregation: {strategy: fedadam}\n")
    assert len(found) == 1 and "spec.aggregation.strategy: protection he needs" in found[0]
    assert problems(FED + "  protection: secagg\n  aggregation: {strategy: fedadam}\n") == []


def test_placement_rules_and_cross_document_preference() -> None:
    inventory = (EXAMPLES_DIR / "inventory.yaml").read_text()
    placement = (
        (EXAMPLES_DIR / "placement.yaml")
        .read_text()
        .replace("preference: [eu-s3, eu-azure]", "preference: [eu-s3, eu-s4, eu-s3]")
        .replace("min: 2", "min: 3")
    )
    found = [str(p) for p in check_text(inventory + "---\n" + placement, name="x.yaml").problems]
    joined = "\n".join(found)
    assert "spec.replicas.min: min (3) exceeds max (2)" in joined
    assert "spec.strategy.preference[2]: 'eu-s3' is listed twice" in joined
    assert "spec.strategy.preference[1]: no target named 'eu-s4' in the CloudInventory" in joined
    assert len(found) == 3


def test_inventory_rules() -> None:
    text = """
    apiVersion: fedge/v1
    kind: CloudInventory
    metadata: {name: inv}
    spec:
      targets:
        - {name: a, provider: s3, region: r, residency: eu, endpoint: "http://s3.example.com"}
        - {name: a, provider: local, region: r, residency: eu}
        - {name: m, provider: s3, region: r, residency: eu, container: c, endpoint: "http://127.0.0.1:5000",
           credentials: {keyRef: {env: K}, secretRef: {env: S}}}
    """
    joined = "\n".join(problems(text))
    assert "spec.targets[0]: a s3 target needs a container" in joined
    assert "spec.targets[0]: a s3 target needs credentials" in joined
    assert (
        "spec.targets[0].endpoint: plain http to a host off this machine: TLS is required (use https://)"
        in joined
    )
    assert "spec.targets[1].name: target name 'a' is used twice" in joined
    assert "spec.targets[1]: a local target needs a path" in joined
    assert "targets[2]" not in joined  # loopback http is fine (test endpoints)


def test_agent_rules() -> None:
    joined = "\n".join(
        example_problems(
            "agent.yaml",
            ("enabled: true", "enabled: false"),
            ("    username: clinic-a-01\n", ""),
            ("ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=", "ed25519:AAAA"),
        )
    )
    assert "spec.broker.tls.enabled: TLS is off for a broker off this machine" in joined
    assert "spec.broker.username: passwordRef is set but username is not" in joined
    assert "spec.trustedKeys[0]: not an Ed25519 public key" in joined


def test_device_ids_must_be_topic_safe() -> None:
    found = example_problems("agent.yaml", ("deviceId: clinic-a-01", "deviceId: 'a/+/#'"))
    assert len(found) == 1 and "spec.deviceId: 'a/+/#' is not of the required form" in found[0]


def test_duplicate_names_across_files(tmp_path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text((EXAMPLES_DIR / "rollout.yaml").read_text())
    second.write_text((EXAMPLES_DIR / "rollout.yaml").read_text())
    found = [str(p) for p in check_files([first, second]).problems]
    assert len(found) == 1 and found[0].startswith(str(second))
    assert "another RolloutPolicy is named 'clinics-canary'" in found[0]


def test_load_files_raises_policy_error_with_every_problem(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent(FED).lstrip() + "  rounds: 0\n  protection: rsa\n")
    with pytest.raises(PolicyError) as info:
        load_files([bad])
    assert len(info.value.problems) == 2
    assert info.value.exit_code == 2


def test_load_one_wants_exactly_one_document_of_the_kind() -> None:
    doc = load_one(EXAMPLES_DIR / "agent.yaml", AgentConfig)
    assert doc.spec.device_id == "clinic-a-01"
    assert doc.spec.broker.keepalive == 30.0
    with pytest.raises(Exception, match="expected exactly one FederationPolicy document, found 0"):
        load_one(EXAMPLES_DIR / "agent.yaml", FederationPolicy)


def test_secret_ref_resolves_from_env_and_file(tmp_path, monkeypatch) -> None:
    from fedge.errors import UsageError
    from policies.common import SecretRef

    monkeypatch.setenv("FEDGE_TEST_SECRET", "s3cr3t-value")
    assert SecretRef(env="FEDGE_TEST_SECRET").resolve() == "s3cr3t-value"
    (tmp_path / "pw").write_text("from-file\n")
    assert SecretRef(file="pw").resolve(base_dir=tmp_path) == "from-file"
    monkeypatch.delenv("FEDGE_TEST_SECRET")
    with pytest.raises(UsageError, match="FEDGE_TEST_SECRET is not set"):
        SecretRef(env="FEDGE_TEST_SECRET").resolve()
