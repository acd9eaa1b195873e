"""The synthetic data set, pinned byte for byte.

A seed must give the same files on every machine and in every fedge version that does not mean to
change them: benchmarks and demos quote figures measured on them. These digests were taken before
the word tables moved to client/data/vocabulary.py; a change to a table, a frame or the order of
random draws changes them, and then the change must say so and update them here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from client.data.synthetic import class_vocabularies, generate, write_synthetic

# (generate's arguments, file format, sha256 over each written file's name, NUL, bytes)
PINNED: list[tuple[dict[str, Any], str, str]] = [
    (
        {"num_clients": 3, "examples_per_client": 60, "seed": 0},
        "tsv",
        "31b5dfc297f67ebcd259d617b08b1e55e69766c2012c024d5821ac843fa6acfb",
    ),
    (
        {"num_clients": 5, "examples_per_client": 30, "seed": 7, "alpha": 0.1, "heldout": 50},
        "jsonl",
        "b17ce9d744bed9a1420f524b9f603b9e1753e5e2dec19395b913dfb13b529a0e",
    ),
    (
        {
            "num_clients": 4,
            "examples_per_client": 50,
            "seed": 3,
            "client_styles": False,
            "label_noise": 0.0,
        },
        "csv",
        "bb7463f44ee783c88db00b519254030e736da0fede47bb670d792c7a6449312f",
    ),
    (
        {"num_clients": 3, "examples_per_client": 40, "num_labels": 4, "seed": 1},
        "tsv",
        "1524ec0d46d4a76a69179e15c01cffde44653a57c92d708ec512ec7e5dfa264a",
    ),
    (
        {
            "num_clients": 2,
            "examples_per_client": 30,
            "num_labels": 12,
            "seed": 5,
            "client_styles": False,
        },
        "jsonl",
        "df7b5f3cdd1178e7fd54db0b1fc0699d75fd38159ac7383978ab2a768dc0aa5b",
    ),
]

VOCABULARIES = {
    2: "211f635d5a90258ca76b014c68bbfaf34e217906af3296466b0c4be2d3d48103",
    9: "ad41308ccb5dc86c7c76054dd95802431b306590eae403141101f31f22fe3c52",
    1000: "11fbfaaa6c8de1806401fbcbd5e03f1b119f475ec56fc11881b9faa669da7416",
}


@pytest.mark.parametrize(("options", "fmt", "digest"), PINNED)
def test_a_seed_writes_the_same_files_byte_for_byte(
    tmp_path: Path, options: dict[str, Any], fmt: str, digest: str
) -> None:
    files = write_synthetic(generate(**options), tmp_path, format=fmt)  # type: ignore[arg-type]
    found = hashlib.sha256()
    for file in files:
        found.update(file.name.encode() + b"\0" + file.read_bytes())
    assert found.hexdigest() == digest


@pytest.mark.parametrize(("num_labels", "digest"), sorted(VOCABULARIES.items()))
def test_the_class_vocabularies_are_pinned(num_labels: int, digest: str) -> None:
    text = json.dumps(class_vocabularies(num_labels))
    assert hashlib.sha256(text.encode()).hexdigest() == digest
