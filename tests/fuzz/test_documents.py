"""The fuzz tier: every document that crosses a trust boundary, mutated at random.

For policy files, artifact manifests and signatures, ``desired`` documents and privacy ledgers,
hypothesis feeds the parser real documents with bytes inserted, deleted or flipped, structured
values of the wrong kind, and plain noise. Each parser must answer with its own located error
(a policy problem with a line, an ArtifactError naming the file, a ProtocolError naming the
channel, a LedgerError naming the ledger) or a valid object: never a traceback, never a hang.
The examples are bounded (counts here, a timeout per test) so the tier stays in the fast suite;
``HYPOTHESIS_PROFILE=deep`` runs many more. The agent's and the enrollment endpoint's HTTP bodies
are fuzzed against the real servers in test_http_bodies.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.privacy.ledger_file import LedgerError, parse_ledger
from edge_agent.protocol import DesiredState, ProtocolError
from fedge.artifact import verify_manifest
from fedge.errors import ArtifactError
from fedge.manifest import FileEntry, Manifest
from fedge.signing import generate_keypair
from policies import check_text
from policies.source import read_policy_file
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.timeout(120)

# derandomized in the suite: CI replays the same examples (a finding is fixed, then pinned by it);
# HYPOTHESIS_PROFILE=deep explores anew.
settings.register_profile(
    "fedge",
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("deep", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fedge"))

KEY = generate_keypair()
MANIFEST = Manifest.create(
    name="tiny-cls",
    version="1.0.0",
    format="onnx-fp32",
    files=[FileEntry(path="model.onnx", sha256="a" * 64, size=1234)],
    metrics={"accuracy": 0.8},
)
MANIFEST_BYTES = MANIFEST.canonical_bytes()
SIGNATURE = json.dumps(
    {"schema": "fedge.signature/v1", "alg": "ed25519", "keyId": KEY.public.key_id, "signature": ""}
).encode()
DESIRED = json.dumps(
    {
        "schema": 1,
        "deploymentId": "d-1",
        "artifact": "tiny-cls",
        "version": "1.0.0",
        "manifestSha256": "b" * 64,
        "replicas": [
            {
                "target": "s3-eu",
                "manifest": "https://example.com/m.json",
                "signature": "https://example.com/m.sig",
                "files": {"model.onnx": "https://example.com/model.onnx"},
            }
        ],
        "settings": {"telemetryInterval": 30, "publishResults": True},
    }
).encode()


def mutated(original: bytes) -> st.SearchStrategy[bytes]:
    """``original`` with a few random edits: insertions, deletions, replaced bytes."""

    @st.composite
    def edit(draw: st.DrawFn) -> bytes:
        data = bytearray(original)
        for _ in range(draw(st.integers(min_value=1, max_value=6))):
            where = draw(st.integers(min_value=0, max_value=len(data)))
            kind = draw(st.sampled_from(["insert", "delete", "replace"]))
            chunk = draw(st.binary(min_size=1, max_size=8))
            if kind == "insert":
                data[where:where] = chunk
            elif kind == "delete":
                del data[where : where + len(chunk)]
            else:
                data[where : where + len(chunk)] = chunk
        return bytes(data)

    return edit()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def replaced_field(original: bytes) -> st.SearchStrategy[bytes]:
    """``original`` (a JSON object) with one top-level field set to any JSON value."""
    doc = json.loads(original)
    return st.tuples(st.sampled_from(sorted(doc)), json_values).map(
        lambda pair: json.dumps({**doc, pair[0]: pair[1]}).encode()
    )


# -- policy files --------------------------------------------------------------------------------

POLICIES = sorted(EXAMPLES.glob("*.yaml"))


@given(
    st.sampled_from(POLICIES).flatmap(lambda path: mutated(path.read_bytes())),
)
def test_a_mutated_policy_file_is_accepted_or_refused_with_located_problems(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    report = check_text(text, name="fuzz.yaml")
    for problem in report.problems:
        assert problem.file == "fuzz.yaml" and problem.line >= 1 and problem.column >= 1


@given(st.binary(max_size=600))
def test_policy_file_bytes_never_escape_as_a_traceback(tmp_path_factory: Any, data: bytes) -> None:
    path = Path(tmp_path_factory.mktemp("p")) / "policy.yaml"
    path.write_bytes(data)
    source = read_policy_file(path)
    for problem in source.problems:
        assert problem.file == str(path) and problem.line >= 1


# -- manifests and signatures ---------------------------------------------------------------------


@given(mutated(MANIFEST_BYTES) | replaced_field(MANIFEST_BYTES) | st.binary(max_size=300))
def test_a_mutated_manifest_parses_or_is_an_artifact_error(data: bytes) -> None:
    try:
        manifest = Manifest.from_bytes(data)
    except ArtifactError as exc:
        assert exc.file  # the manifest, or the listed file whose entry is wrong
        assert str(exc).startswith(f"{exc.file}: ")
    else:
        assert manifest.files  # a manifest that parses lists files


@given(mutated(SIGNATURE) | replaced_field(SIGNATURE), mutated(MANIFEST_BYTES))
def test_a_mutated_signature_never_verifies_and_never_escapes(sig: bytes, body: bytes) -> None:
    with pytest.raises(ArtifactError):  # SignatureError included
        verify_manifest(body, sig, [KEY.public])


# -- desired documents -------------------------------------------------------------------------


@given(mutated(DESIRED) | replaced_field(DESIRED) | st.binary(max_size=300))
def test_a_mutated_desired_document_is_valid_or_a_protocol_error(data: bytes) -> None:
    try:
        DesiredState.from_json(data, channel="fuzz/desired")
    except ProtocolError as exc:
        assert "fuzz/desired" in str(exc)


# -- privacy ledgers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ledger_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from client.privacy.accounting import PrivacyBudget
    from client.privacy.ledger import PrivacyLedger
    from tests.support.privacy import DELTA, ROUNDS

    path = tmp_path_factory.mktemp("ledger") / "ledger.json"
    ledger = PrivacyLedger(path, federation="fuzz", budget=PrivacyBudget(50.0, DELTA))
    for number, (noise, rate, steps) in enumerate(ROUNDS[:2], start=1):
        ledger.record(
            round=number, run_id="r", noise_multiplier=noise, sample_rate=rate, steps=steps
        )
    return path.read_bytes()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_mutated_ledger_parses_or_is_a_ledger_error(ledger_bytes: bytes, data: Any) -> None:
    raw = data.draw(mutated(ledger_bytes) | replaced_field(ledger_bytes))
    try:
        parse_ledger(raw, source="fuzz-ledger.json")
    except LedgerError as exc:
        assert "fuzz-ledger.json" in str(exc)
