"""Every number in an edge agent's settings has a finite range, checked where it is written.

An AgentConfig with ``keepalive: .inf`` crashed the agent and ``1e30`` silently stopped its MQTT
thread. Now each numeric field (the broker's keepalive and port, the HTTP input's port, the
telemetry interval) refuses ``.inf``, ``.nan``, ``1e30``, ``-1`` and huge integers with one
problem located at the field (``file:line:column: spec.broker.keepalive: ...``); defaults and
sane values pass. The settings the agent runs with (:mod:`edge_agent.config`), which benchmarks
build in code without a file, refuse the same values and name the field.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_agent.config import AgentSettings, BrokerSettings, load_settings
from fedge.errors import PolicyError, UsageError
from policies import AgentConfig, check_text
from policies.agent import AgentSpec

KEY = "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
TEMPLATE = """\
apiVersion: fedge/v1
kind: AgentConfig
metadata: {{name: dev-1}}
spec:
  deviceId: dev-1
  fleet: clinics
  broker:
    host: mqtt.example.org
    port: {port}
    keepalive: {keepalive}
  trustedKeys: [{key}]
  stateDir: state
  input:
    http: {{port: {http}}}
  telemetry:
    interval: {interval}
"""
SANE = {"port": "8883", "keepalive": "30s", "http": "8080", "interval": "30s"}
# field placeholder -> (the path a problem names, the line of the value, its column)
FIELDS = {
    "port": ("spec.broker.port", 9, 11),
    "keepalive": ("spec.broker.keepalive", 10, 16),
    "http": ("spec.input.http.port", 14, 18),
    "interval": ("spec.telemetry.interval", 16, 15),
}
HUGE = "1" + "0" * 5000  # past Python's int-parsing limit: the YAML reader refuses it
BIG = "1" + "0" * 39  # parsed, then far out of every range
BAD = {
    "inf": ".inf",
    "minus-inf": "-.inf",
    "nan": ".nan",
    "1e30": "1e30",
    "minus-one": "-1",
    "zero-point": "0.5",
    "40-digits": BIG,
    "inf-string": "'" + "9" * 400 + "s'",  # float('9' * 400) is inf
}


def document(**values: str) -> str:
    return TEMPLATE.format(key=KEY, **{**SANE, **values})


def problems_of(text: str) -> list[str]:
    return [str(problem) for problem in check_text(text, name="agent.yaml").problems]


def test_the_template_with_sane_values_is_valid() -> None:
    report = check_text(document(), name="agent.yaml")
    assert report.ok, report.problems
    spec = report.documents[0].document.spec
    assert isinstance(spec, AgentSpec)
    assert (spec.broker.keepalive, spec.telemetry.interval) == (30.0, 30.0)


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("bad", BAD, ids=list(BAD))
def test_an_unusable_number_is_one_problem_located_at_its_field(field: str, bad: str) -> None:
    path, line, column = FIELDS[field]
    found = problems_of(document(**{field: BAD[bad]}))
    assert len(found) == 1, found
    assert found[0].startswith(f"agent.yaml:{line}:{column}: {path}: "), found[0]


@pytest.mark.parametrize("field", FIELDS)
def test_a_huge_integer_is_a_located_problem_not_a_traceback(field: str) -> None:
    _path, line, column = FIELDS[field]
    found = problems_of(document(**{field: HUGE}))
    assert len(found) == 1, found
    assert found[0].startswith(f"agent.yaml:{line}:{column}: "), found[0]
    assert "digits" in found[0]


@pytest.mark.parametrize("field", ["keepalive", "interval"])
def test_a_huge_integer_problem_names_its_field(field: str) -> None:
    path, line, column = FIELDS[field]
    found = problems_of(document(**{field: HUGE}))
    assert found[0].startswith(f"agent.yaml:{line}:{column}: {path}: "), found[0]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("keepalive", "5s", 5.0),
        ("keepalive", "1h", 3600.0),
        ("keepalive", "3600", 3600.0),
        ("keepalive", "12.5", 12.5),
        ("interval", "1s", 1.0),
        ("interval", "500ms", None),  # below the floor
        ("interval", "24h", 86400.0),
        ("interval", "86401", None),
        ("keepalive", "4s", None),
        ("keepalive", "3601", None),
        ("port", "1", 1),
        ("port", "65535", 65535),
        ("port", "65536", None),
        ("port", "0", None),
        ("http", "0", 0),
        ("http", "65535", 65535),
    ],
)
def test_the_edges_of_each_range(field: str, value: str, expected: float | None) -> None:
    report = check_text(document(**{field: value}), name="agent.yaml")
    if expected is None:
        assert [p.path for p in report.problems] == [FIELDS[field][0]]
        return
    assert report.ok, report.problems
    spec = report.documents[0].document.spec
    assert isinstance(spec, AgentSpec)
    got = {
        "keepalive": spec.broker.keepalive,
        "interval": spec.telemetry.interval,
        "port": spec.broker.port,
        "http": spec.input.http.port if spec.input.http else None,
    }[field]
    assert got == expected


PY_BAD = [math.inf, -math.inf, math.nan, 1e30, -1, 10**5000, True]
PY_BAD_IDS = ["inf", "minus-inf", "nan", "1e30", "minus-one", "5001-digits", "true"]


@pytest.mark.parametrize("value", PY_BAD, ids=PY_BAD_IDS)
@pytest.mark.parametrize(
    ("where", "loc"),
    [
        ({"broker": {"host": "h", "keepalive": "VALUE"}}, ("broker", "keepalive")),
        ({"broker": {"host": "h", "port": "VALUE"}}, ("broker", "port")),
        ({"telemetry": {"interval": "VALUE"}}, ("telemetry", "interval")),
        ({"input": {"http": {"port": "VALUE"}}}, ("input", "http", "port")),
    ],
)
def test_the_model_built_in_code_refuses_them_too(
    value: object, where: dict[str, object], loc: tuple[str, ...]
) -> None:
    """Python values (no YAML reader in front): a ValidationError on the field, never an
    OverflowError from float() of a 5000-digit integer."""

    def put(tree: dict[str, object]) -> dict[str, object]:
        return {k: value if v == "VALUE" else put(v) if isinstance(v, dict) else v
                for k, v in tree.items()}  # fmt: skip

    spec: dict[str, object] = {
        "deviceId": "d",
        "fleet": "f",
        "broker": {"host": "h"},
        "trustedKeys": [KEY],
        "stateDir": "s",
    }
    spec.update(put(where))
    with pytest.raises(ValidationError) as refused:
        AgentSpec.model_validate(spec)
    assert [error["loc"] for error in refused.value.errors()] == [loc]


def test_the_json_schema_shows_the_ranges() -> None:
    defs = AgentConfig.model_json_schema(by_alias=True)["$defs"]
    keepalive = defs["BrokerSpec"]["properties"]["keepalive"]["anyOf"][0]
    interval = defs["TelemetrySpec"]["properties"]["interval"]["anyOf"][0]
    assert (keepalive["minimum"], keepalive["maximum"]) == (5.0, 3600.0)
    assert (interval["minimum"], interval["maximum"]) == (1.0, 86400.0)


# -- the settings the agent runs with --------------------------------------------------------


def broker(**overrides: object) -> BrokerSettings:
    return BrokerSettings(**{"host": "127.0.0.1", "port": 8883, **overrides})  # type: ignore[arg-type]


def agent(**overrides: object) -> AgentSettings:
    values: dict[str, object] = {
        "device_id": "d",
        "fleet": "f",
        "broker": broker(),
        "trusted_keys": (),
        "state_dir": Path("state"),
        **overrides,
    }
    return AgentSettings(**values)  # type: ignore[arg-type]


NUMBERS = [*PY_BAD, 0, "30"]
NUMBER_IDS = [*PY_BAD_IDS, "zero", "a-string"]


@pytest.mark.parametrize("value", NUMBERS, ids=NUMBER_IDS)
@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda v: broker(keepalive=v), "broker.keepalive"),
        (lambda v: broker(port=v), "broker.port"),
        (lambda v: agent(telemetry_interval=v), "telemetry_interval"),
        (lambda v: agent(http_port=v if v != 0 else -1), "http_port"),
    ],
)
def test_agent_settings_built_in_code_refuse_them_with_the_field_name(
    value: object, build: object, name: str
) -> None:
    with pytest.raises(UsageError) as refused:
        build(value)  # type: ignore[operator]
    assert str(refused.value).startswith(f"agent settings: {name} must be "), refused.value
    assert len(str(refused.value)) < 200


def test_agent_settings_defaults_and_sane_values_pass() -> None:
    assert agent().telemetry_interval == 30.0
    assert agent().broker.keepalive == 30.0
    assert broker(keepalive=5, port=1).keepalive == 5
    assert broker(keepalive=3600.0, port=65535).port == 65535
    assert agent(telemetry_interval=1, http_port=0).http_port == 0
    assert agent(telemetry_interval=86400.0, http_port=None).http_port is None


def test_load_settings_refuses_an_infinite_keepalive_with_its_location(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(document(keepalive=".inf"), encoding="utf-8")
    with pytest.raises(PolicyError) as refused:
        load_settings(config)
    assert str(refused.value).startswith(f"{config}:10:16: spec.broker.keepalive: ")
    assert refused.value.exit_code == 2
    config.write_text(document(), encoding="utf-8")
    assert load_settings(config).broker.keepalive == 30.0
