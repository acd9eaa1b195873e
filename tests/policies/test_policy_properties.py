"""Property tests: no input makes validation raise anything but the documented PolicyError."""

from __future__ import annotations

import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedge.errors import PolicyError, Problem
from policies import KINDS, check_text
from policies.validation import _field_names

_FIELD_WORDS = sorted(
    {"apiVersion", "kind", "metadata", "spec", "name", "labels", "fedge/v1", *KINDS}
    | {name for model in KINDS.values() for name in _field_names(model, ())}
    | {name for model in KINDS.values() for name in _field_names(model, ("spec",))}
)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(_FIELD_WORDS),
    st.text(max_size=12),
)
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(_FIELD_WORDS) | st.text(max_size=6), children, max_size=5),
    ),
    max_leaves=25,
)
_documents = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from(["fedge/v1", "fedge/v2", 1]),
        "kind": st.sampled_from([*KINDS, "Nope"]),
    },
    optional={"metadata": _values, "spec": _values},
)


def _check_problems(problems: list[Problem]) -> None:
    for problem in problems:
        assert problem.line >= 1 and problem.column >= 1
        assert problem.message
        assert "\n" not in problem.path


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=string.printable + "é\u00a0\ufeff", max_size=300))
def test_arbitrary_text_never_raises(text: str) -> None:
    report = check_text(text, name="fuzz.yaml")
    _check_problems(report.problems)
    try:
        report.raise_for_problems()
    except PolicyError as exc:
        assert exc.problems == tuple(report.problems)
        assert exc.exit_code == 2


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_documents, min_size=1, max_size=3))
def test_structured_documents_never_raise(documents: list[dict[str, object]]) -> None:
    text = yaml.safe_dump_all(documents, allow_unicode=True)
    report = check_text(text, name="fuzz.yaml")
    _check_problems(report.problems)
    assert len(report.documents) <= len(documents)


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_in_a_file_never_raise(tmp_path_factory, data: bytes) -> None:
    from policies import check_files

    path = tmp_path_factory.mktemp("fuzz") / "f.yaml"
    path.write_bytes(data)
    report = check_files([path])
    _check_problems(report.problems)
    assert report.documents or report.problems


def test_alias_bomb_is_one_problem() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    report = check_text(bomb, name="bomb.yaml")
    assert [p.message for p in report.problems] == [
        "the document expands to more than 200000 nodes (alias bomb?)"
    ]
