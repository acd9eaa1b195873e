"""The one bounded reader: files that are not small regular files, and JSON that is too deep.

Each case here once escaped as a hang, a traceback or a process growing to gigabytes: a FIFO given
as a policy hung every command, ``--policy /dev/zero`` grew without end, a link to a large file
was read whole before its size was checked, deep JSON raised RecursionError, and ``fedge train``
read policies by another path than ``fedge policy validate``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.cli import app as client_app
from fedge.bounded import InputError, load_json, read_capped, read_capped_text
from server.cli.app import app as fedge_app
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.timeout(30)  # a hang is a failure, not a stuck suite


def special(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.yaml"
    if kind == "fifo":
        os.mkfifo(path)  # nobody writes: a blocking open would never return
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    elif kind == "big-link":
        big = tmp_path / "big.bin"
        with big.open("wb") as handle:
            handle.truncate(64 << 20)  # sparse: large to stat, cheap to make
        path.symlink_to(big)
    return path


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("fifo", "named pipe"),
        ("device", "is a device"),
        ("folder", "is a folder"),
        ("big-link", "over the 1 MiB limit"),
    ],
)
def test_what_is_not_a_small_regular_file_is_refused_without_reading(
    tmp_path: Path, kind: str, reason: str
) -> None:
    path = special(tmp_path, kind)
    with pytest.raises(InputError, match=reason) as info:
        read_capped(path, limit=1 << 20, what="a test file")
    assert info.value.source == str(path)
    assert info.value.exit_code == 2


def test_a_small_file_and_a_link_to_one_are_read(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("héllo", encoding="utf-8")
    (tmp_path / "link.txt").symlink_to(target)
    assert read_capped_text(tmp_path / "link.txt", limit=100) == "héllo"
    with pytest.raises(InputError, match="does not exist"):
        read_capped(tmp_path / "nope", limit=10)
    target.write_bytes(b"\xff\xfe")
    with pytest.raises(InputError, match="invalid byte at offset 0"):
        read_capped_text(target, limit=10)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested"),
        (b"[" * 70 + b"]" * 70, "nested more than 64 levels"),
        (b'{"a": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b'{"a": 1', "not valid JSON"),
    ],
)
def test_json_that_crosses_a_trust_boundary_fails_as_one_error(data: bytes, reason: str) -> None:
    with pytest.raises(InputError, match=reason):
        load_json(data, source="body")


def test_constants_can_be_refused_and_size_is_capped() -> None:
    assert load_json(b'{"x": NaN}', source="m")["x"] != 0
    with pytest.raises(InputError, match="NaN is not a JSON number"):
        load_json(b'{"x": NaN}', source="m", allow_constants=False)
    with pytest.raises(InputError, match="over the 1 KiB limit"):
        load_json(b"[" + b"1," * 600 + b"1]", source="m", limit=1024)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_load_json_never_raises_anything_but_input_error(data: bytes) -> None:
    try:
        load_json(data, source="fuzz", max_depth=8)
    except InputError as exc:
        assert exc.source == "fuzz"


@pytest.mark.parametrize("kind", ["fifo", "device", "folder", "not-utf8", "huge-int"])
def test_validate_and_train_refuse_the_same_policy_files_the_same_way(
    cli, tmp_path: Path, kind: str
) -> None:
    if kind == "not-utf8":
        path = tmp_path / "latin1.yaml"
        path.write_bytes("# café\n".encode("latin-1") + b"kind: FederationPolicy\n")
    elif kind == "huge-int":
        text = (EXAMPLES / "federation.yaml").read_text(encoding="utf-8")
        path = tmp_path / "huge.yaml"
        path.write_text(text.replace("rounds: ", "rounds: " + "9" * 5000 + " #", 1))
    else:
        path = special(tmp_path, kind)
    validate = cli(fedge_app, "policy", "validate", str(path))
    train = cli(
        fedge_app, "train", "--policy", str(path), "--simulate", "1", "--workdir", str(tmp_path)
    )
    assert validate.code == train.code == 2, (validate, train)
    first = validate.err.strip().splitlines()[0]
    assert first.startswith(str(path)), first
    assert first in train.err, (first, train.err)
    assert "Traceback" not in validate.err + train.err


def test_the_client_refuses_a_fifo_policy_too(cli, tmp_path: Path) -> None:
    path = special(tmp_path, "fifo")
    result = cli(client_app, "budget", "--policy", str(path), "--state-dir", str(tmp_path / "s"))
    assert result.code == 2 and "named pipe" in result.err, result


def test_a_deep_manifest_is_an_artifact_error(tmp_path: Path) -> None:
    from fedge.errors import ArtifactError
    from fedge.manifest import Manifest

    with pytest.raises(ArtifactError, match="manifest.json: malformed manifest"):
        Manifest.from_bytes(json.dumps({"schema": [[[[[[[[[[1]]]]]]]]]]}).encode())
