"""A data holder's labelled files: every bad file is one DataError line, good files round-trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.contract.data_format import detect_format
from client.contract.labelled import (
    LabelledData,
    format_labelled,
    load_labelled,
    write_labelled,
)
from fedge.errors import DataError, UsageError
from tests.conftest import REPO


def _file(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def _single_line(exc: DataError, path: Path) -> str:
    message = str(exc)
    assert "\n" not in message
    assert "\r" not in message
    assert message.startswith(f"{path}: ")
    assert exc.path == str(path)
    return message


# --------------------------------------------------------------------------------------------
# Every way a file can be bad


BAD_FILES: list[tuple[str, str, str | bytes, dict[str, object], list[str], str | None]] = [
    # (case id, file name, content, load options, fragments of the message, field)
    ("empty csv", "d.csv", b"", {}, ["file is empty"], None),
    ("empty jsonl", "d.jsonl", b"", {}, ["file is empty"], None),
    ("blank lines only", "d.csv", "\n\n  \n", {}, ["no header row"], None),
    ("header only", "d.csv", "text,label\n", {}, ["no data rows, only a header"], None),
    ("header only tsv", "d.tsv", "text\tlabel\n\n", {}, ["no data rows, only a header"], None),
    ("jsonl blank", "d.jsonl", "\n \n", {}, ["no data rows, only blank lines"], None),
    (
        "binary",
        "d.csv",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        {},
        ["line 1", "not UTF-8", "binary"],
        None,
    ),
    ("nul byte", "d.csv", b"text,label\nab\x00c,1\n", {}, ["line 2", "NUL byte", "binary"], None),
    (
        "latin-1",
        "d.tsv",
        "text\tlabel\nok\t1\ncaf\xe9\t0\n".encode("latin-1"),
        {},
        ["line 3", "not UTF-8", "0xe9", "column 4"],
        None,
    ),
    ("utf-16", "d.csv", "text,label\nhi,1\n".encode("utf-16"), {}, ["UTF-16"], None),
    (
        "too many fields",
        "d.csv",
        "text,label\nfine,1\nnot, fine,0\n",
        {},
        ["line 3", "3 fields, but the header has 2"],
        None,
    ),
    (
        "too few fields",
        "d.tsv",
        "text\tlabel\nfine\t1\nnolabel\n",
        {},
        ["line 3", "1 field, but the header has 2"],
        None,
    ),
    (
        "unclosed quote",
        "d.csv",
        'text,label\nfine,1\n"never closed,0\nmore,1\n',
        {},
        ["line 3", "never closed"],
        None,
    ),
    (
        "text after closing quote",
        "d.csv",
        'text,label\n"quoted"tail,1\n',
        {},
        ["line 2", "closing '\"'"],
        None,
    ),
    (
        "bare carriage return",
        "d.csv",
        "text,label\nsplit\rhere,1\n",
        {},
        ["line 2", "carriage return"],
        None,
    ),
    (
        "invalid json",
        "d.jsonl",
        '{"text": "a", "label": 1}\n{"text": "b", label: 0}\n',
        {},
        ["line 2", "invalid JSON", "column"],
        None,
    ),
    (
        "json not an object",
        "d.jsonl",
        '{"text": "a", "label": 1}\n\n["b", 0]\n',
        {},
        ["line 3", "expected a JSON object, found an array"],
        None,
    ),
    (
        "missing label column",
        "d.csv",
        "text,y\nhello,1\n",
        {},
        ["no label column 'label'", "columns: 'text', 'y'"],
        "label",
    ),
    (
        "missing text column",
        "d.tsv",
        "sentence\tlabel\nhello\t1\n",
        {},
        ["no text column 'text'", "columns: 'sentence', 'label'"],
        "text",
    ),
    (
        "jsonl missing label field",
        "d.jsonl",
        '{"text": "a", "label": 1}\n{"text": "b", "y": 0}\n',
        {},
        ["line 2", "no field 'label'", "fields: 'text', 'y'"],
        "label",
    ),
    (
        "custom column missing",
        "d.csv",
        "text,label\nhello,1\n",
        {"label_column": "sentiment"},
        ["no label column 'sentiment'"],
        "sentiment",
    ),
    (
        "jsonl empty text",
        "d.jsonl",
        '{"text": "a", "label": 1}\n{"text": " ", "label": 0}\n',
        {},
        ["line 2: field 'text': empty text"],
        "text",
    ),
    ("empty text", "d.csv", "text,label\nfine,1\n  ,0\n", {}, ["line 3", "empty text"], "text"),
    ("empty label", "d.csv", "text,label\nfine,1\nmore,\n", {}, ["line 3", "empty label"], "label"),
    (
        "jsonl text not a string",
        "d.jsonl",
        '{"text": 12, "label": 1}\n',
        {},
        ["line 1", "field 'text': expected a string, found a number"],
        "text",
    ),
    (
        "jsonl label a float",
        "d.jsonl",
        '{"text": "a", "label": 1.0}\n',
        {},
        ["line 1", "expected an integer or a string, found a number"],
        "label",
    ),
    (
        "jsonl label a boolean",
        "d.jsonl",
        '{"text": "a", "label": true}\n',
        {},
        ["line 1", "found a boolean"],
        "label",
    ),
    (
        "label out of range",
        "d.csv",
        "text,label\na,0\nb,1\nc,2\n",
        {"num_labels": 2},
        ["line 4", "label 2 is out of range 0..1", "num_labels=2"],
        "label",
    ),
    (
        "negative label",
        "d.tsv",
        "text\tlabel\na\t0\nb\t-1\n",
        {},
        ["line 3", "label -1 is negative"],
        "label",
    ),
    (
        "mixed labels",
        "d.csv",
        "text,label\na,1\nb,spam\n",
        {},
        ["mix integers ('1' on line 2) and names ('spam' on line 3)"],
        "label",
    ),
    (
        "names against num_labels",
        "d.csv",
        "text,label\na,pos\nb,pos\n",
        {"num_labels": 2},
        ["column 'label': 1 distinct label name ('pos')", "num_labels=2", "label_names"],
        "label",
    ),
    (
        "name not declared",
        "d.jsonl",
        '{"text": "a", "label": "pos"}\n{"text": "b", "label": "meh"}\n',
        {"label_names": ["neg", "pos"]},
        ["line 2: field 'label': label 'meh' is neither one of the label names ('neg', 'pos')"],
        "label",
    ),
    (
        "duplicate header",
        "d.csv",
        "text,label,text\na,1,b\n",
        {},
        ["header names column 'text' more than once"],
        "text",
    ),
    (
        "huge integer label",
        "d.csv",
        "text,label\na,0\nb,123456789012\n",
        {},
        ["line 3: column 'label': label 123456789012 is too large for a class index"],
        "label",
    ),
    ("too large", "d.csv", "text,label\n" + "a,1\n" * 10, {"max_bytes": 20}, ["larger"], None),
    ("unknown extension", "d.txt", "text,label\na,1\n", {}, ["extension '.txt'", "format="], None),
]


@pytest.mark.parametrize(
    ("name", "content", "options", "fragments", "field"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_FILES],
)
def test_every_bad_file_is_one_data_error_line(
    tmp_path: Path,
    name: str,
    content: str | bytes,
    options: dict[str, object],
    fragments: list[str],
    field: str | None,
) -> None:
    path = _file(tmp_path, name, content)
    with pytest.raises(DataError) as caught:
        load_labelled(path, **options)  # type: ignore[arg-type]
    message = _single_line(caught.value, path)
    for fragment in fragments:
        assert fragment in message
    assert caught.value.field == field
    assert caught.value.exit_code == 2


def test_a_missing_file_and_a_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="no such file") as caught:
        load_labelled(missing)
    _single_line(caught.value, missing)
    folder = tmp_path / "data.jsonl"
    folder.mkdir()
    with pytest.raises(DataError, match="is a directory") as caught:
        load_labelled(folder)
    _single_line(caught.value, folder)


def test_the_size_limit_is_stated_and_can_be_lifted(tmp_path: Path) -> None:
    path = _file(tmp_path, "d.csv", "text,label\n" + "hello there,1\n" * 200)
    with pytest.raises(DataError, match=r"file is 2\.7 KiB, larger than the 1\.0 KiB limit"):
        load_labelled(path, max_bytes=1024)
    assert len(load_labelled(path, max_bytes=None)) == 200


def test_line_numbers_count_physical_lines_across_quoted_newlines(tmp_path: Path) -> None:
    content = 'text,label\n"first\nspans\nthree lines",1\n\nsecond,0\nthird,\n'
    path = _file(tmp_path, "d.csv", content)
    with pytest.raises(DataError, match="line 7: column 'label': empty label"):
        load_labelled(path)


def test_bad_option_values_are_usage_errors(tmp_path: Path) -> None:
    path = _file(tmp_path, "d.csv", "text,label\na,1\n")
    with pytest.raises(UsageError, match="unknown data format 'xml'"):
        load_labelled(path, format="xml")
    with pytest.raises(UsageError, match="num_labels=3 but 2 label_names"):
        load_labelled(path, num_labels=3, label_names=["a", "b"])
    with pytest.raises(UsageError, match="distinct"):
        load_labelled(path, label_names=["a", "a"])
    with pytest.raises(UsageError, match="on_bad_row"):
        load_labelled(path, on_bad_row="ignore")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Skipping, only when asked, and counted


def test_skipping_bad_rows_is_explicit_and_counted(tmp_path: Path) -> None:
    content = (
        '{"text": "good one", "label": 1}\n'
        "not json\n"
        '{"text": "", "label": 0}\n'
        '{"text": "good two", "label": 0}\n'
        '{"sentence": "x", "label": 0}\n'
    )
    path = _file(tmp_path, "d.jsonl", content)
    with pytest.raises(DataError, match="line 2: invalid JSON"):
        load_labelled(path)
    data = load_labelled(path, on_bad_row="skip")
    assert data.texts == ("good one", "good two")
    assert data.labels == (1, 0)
    assert data.skipped == 3
    assert [reason.split(":")[0] for reason in data.skip_reasons] == ["line 2", "line 3", "line 5"]


def test_skipping_never_hides_a_problem_of_the_whole_file(tmp_path: Path) -> None:
    unclosed = _file(tmp_path, "a.csv", 'text,label\nok,1\n"open,0\n')
    with pytest.raises(DataError, match="never closed"):
        load_labelled(unclosed, on_bad_row="skip")
    wrong_column = _file(tmp_path, "b.csv", "text,y\nok,1\n")
    with pytest.raises(DataError, match="no label column"):
        load_labelled(wrong_column, on_bad_row="skip")
    out_of_range = _file(tmp_path, "c.csv", "text,label\nok,1\nno,5\n")
    with pytest.raises(DataError, match="line 3: column 'label': label 5 is out of range"):
        load_labelled(out_of_range, on_bad_row="skip", num_labels=2)


def test_when_every_row_is_skipped_the_error_says_so(tmp_path: Path) -> None:
    path = _file(tmp_path, "d.csv", "text,label\n,1\nx,y,z\n")
    with pytest.raises(DataError) as caught:
        load_labelled(path, on_bad_row="skip")
    message = _single_line(caught.value, path)
    assert "no usable rows: all 2 skipped (first: line 2: column 'text': empty text)" in message


# --------------------------------------------------------------------------------------------
# Good files


def test_the_three_formats_read_the_same_data(tmp_path: Path) -> None:
    csv_path = _file(tmp_path, "d.csv", 'id,text,label\n7,"Hello, world",1\n8,"Say ""hi""",0\n')
    tsv_path = _file(tmp_path, "d.tsv", 'text\tid\tlabel\nHello, world\t7\t1\n"Say ""hi"""\t8\t0\n')
    jsonl_path = _file(
        tmp_path,
        "d.jsonl",
        '{"text": "Hello, world", "label": 1, "id": 7}\n{"label": "0", "text": "Say \\"hi\\""}\n',
    )
    loaded = [load_labelled(path) for path in (csv_path, tsv_path, jsonl_path)]
    for data in loaded:
        assert data.texts == ("Hello, world", 'Say "hi"')
        assert data.labels == (1, 0)
        assert data.label_names == ("0", "1")
        assert not data.named_labels
        assert data.skipped == 0


def test_windows_line_endings_and_a_byte_order_mark(tmp_path: Path) -> None:
    path = _file(tmp_path, "d.csv", b'\xef\xbb\xbftext,label\r\n"two\r\nlines",1\r\nok,0\r\n')
    data = load_labelled(path)
    assert data.texts == ("two\r\nlines", "ok")
    assert data.labels == (1, 0)


def test_format_can_be_named_and_columns_renamed(tmp_path: Path) -> None:
    path = _file(tmp_path, "export.txt", "review\tstars\ngood\t4\nbad\t1\n")
    data = load_labelled(path, format="tsv", text_column="review", label_column="stars")
    assert data.texts == ("good", "bad")
    assert data.labels == (4, 1)
    assert detect_format("X.JSONL") == "jsonl"
    assert detect_format("x.ndjson") == "jsonl"
    assert detect_format("x.tab") == "tsv"


def test_string_labels_are_numbered_in_sorted_order(tmp_path: Path) -> None:
    path = _file(tmp_path, "d.csv", "text,label\na,pos\nb,neg\nc,neutral\nd, pos \n")
    data = load_labelled(path)
    assert data.label_names == ("neg", "neutral", "pos")
    assert data.labels == (2, 0, 1, 2)
    assert data.named_labels
    assert data.label_counts() == (1, 1, 2)


def test_label_names_fix_the_numbering_for_every_client(tmp_path: Path) -> None:
    """A client holding only positives must still call them 1, as every other client does."""
    only_positive = _file(tmp_path, "d.jsonl", '{"text": "a", "label": "positive"}\n')
    data = load_labelled(only_positive, label_names=["negative", "positive"])
    assert data.labels == (1,)
    assert data.label_names == ("negative", "positive")
    indices = _file(tmp_path, "e.csv", "text,label\na,1\nb,negative\n")
    assert load_labelled(indices, label_names=["negative", "positive"]).labels == (1, 0)


def test_integer_labels_are_class_indices_never_renumbered(tmp_path: Path) -> None:
    path = _file(tmp_path, "d.tsv", "text\tlabel\na\t3\nb\t1\nc\t+3\n")
    data = load_labelled(path)
    assert data.labels == (3, 1, 3)
    assert data.label_names == ("0", "1", "2", "3")
    assert load_labelled(path, num_labels=6).num_labels == 6


def test_subset_keeps_the_label_space(tmp_path: Path) -> None:
    path = _file(tmp_path, "d.csv", "text,label\na,x\nb,y\nc,z\n")
    part = load_labelled(path).subset([2, 0])
    assert part.texts == ("c", "a")
    assert part.labels == (2, 0)
    assert part.label_names == ("x", "y", "z")
    assert part.named_labels


_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
    min_size=1,
    max_size=40,
).filter(lambda text: text.strip() != "")


_NAME = _TEXT.filter(lambda name: name == name.strip() and not name.lstrip("+-").isdigit())


@st.composite
def labelled_data(draw: st.DrawFn) -> LabelledData:
    """Data whose every label occurs, so that the label space read back is the same."""
    count = draw(st.integers(min_value=1, max_value=4))
    named = draw(st.booleans())
    if named:
        names = tuple(sorted(draw(st.sets(_NAME, min_size=count, max_size=count))))
    else:
        names = tuple(str(i) for i in range(count))
    extra = draw(st.lists(st.integers(0, count - 1), max_size=8))
    labels = draw(st.permutations([*range(count), *extra]))
    texts = draw(st.lists(_TEXT, min_size=len(labels), max_size=len(labels)))
    return LabelledData(tuple(texts), tuple(labels), names, "memory", named_labels=named)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=labelled_data(), fmt=st.sampled_from(["csv", "tsv", "jsonl"]))
def test_written_files_read_back_the_same(tmp_path: Path, data: LabelledData, fmt: str) -> None:
    path = tmp_path / f"round.{fmt}"
    write_labelled(path, data)
    back = load_labelled(path)
    assert back.texts == data.texts
    assert back.labels == data.labels
    assert back.label_names == data.label_names
    assert back.named_labels == data.named_labels


def test_jsonl_writes_indices_as_numbers_and_names_as_strings() -> None:
    indices = LabelledData(("a",), (1,), ("0", "1"), "memory")
    names = LabelledData(("a",), (1,), ("neg", "pos"), "memory", named_labels=True)
    assert json.loads(format_labelled(indices, "jsonl")) == {"text": "a", "label": 1}
    assert json.loads(format_labelled(names, "jsonl")) == {"text": "a", "label": "pos"}


# --------------------------------------------------------------------------------------------
# No input makes the reader fail any other way


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    head=st.sampled_from([b"", b"text,label\n", b"text\tlabel\n", b'{"text": "a", "label": 0}\n']),
    body=st.binary(max_size=200)
    | st.text(alphabet='ab,\t"\n\r{}[]:01 \\', max_size=80).map(str.encode),
    suffix=st.sampled_from([".csv", ".tsv", ".jsonl"]),
)
def test_any_bytes_give_data_or_one_data_error_line(
    tmp_path: Path, head: bytes, body: bytes, suffix: str
) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(head + body)
    try:
        data = load_labelled(path)
    except DataError as exc:
        _single_line(exc, path)
    else:
        assert len(data) >= 1
        assert all(text.strip() for text in data.texts)


def test_the_data_modules_import_without_heavy_libraries() -> None:
    """The loaders run before any model is built, e.g. in ``fedge-client`` checks."""
    code = (
        "import sys, client.contract.labelled, client.data.partition, client.data.synthetic\n"
        "heavy = {'torch', 'transformers', 'flwr', 'numpy', 'opacus', 'peft', 'tenseal'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
