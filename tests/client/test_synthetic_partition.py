"""Splitting data among simulated clients, and the synthetic non-IID data set of the demo."""

from __future__ import annotations

import math
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.contract.labelled import LabelledData, load_labelled
from client.data.partition import (
    Partition,
    apportion,
    client_file_name,
    partition_file,
    partition_indices,
    sample_dirichlet,
    write_partition,
)
from client.data.synthetic import (
    MAX_LABELS,
    SyntheticSplit,
    class_vocabularies,
    generate,
    write_synthetic,
)
from fedge.errors import DataError, UsageError
from tests.conftest import REPO

# --------------------------------------------------------------------------------------------
# Helpers


def _entropy(labels: list[int]) -> float:
    counts = Counter(labels)
    total = len(labels)
    return -sum(c / total * math.log(c / total) for c in counts.values())


def _mean_client_entropy(labels: list[int], partition: Partition) -> float:
    return float(np.mean([_entropy([labels[i] for i in c]) for c in partition.clients]))


def _share_of(label: int, data: LabelledData) -> float:
    return data.labels.count(label) / len(data)


# --------------------------------------------------------------------------------------------
# The pure partitioner


@settings(max_examples=150, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=300),
    num_clients=st.integers(1, 20),
    alpha=st.none() | st.floats(0.001, 1000.0),
    seed=st.integers(0, 2**32),
    heldout_fraction=st.sampled_from([0.0, 0.1, 0.3]),
)
def test_every_example_goes_to_exactly_one_place(
    labels: list[int],
    num_clients: int,
    alpha: float | None,
    seed: int,
    heldout_fraction: float,
) -> None:
    wanted_heldout = max(1, round(heldout_fraction * len(labels))) if heldout_fraction else 0
    if len(labels) - wanted_heldout < num_clients:
        with pytest.raises(UsageError, match="each client needs at least one"):
            partition_indices(
                labels, num_clients, alpha=alpha, seed=seed, heldout_fraction=heldout_fraction
            )
        return
    partition = partition_indices(
        labels, num_clients, alpha=alpha, seed=seed, heldout_fraction=heldout_fraction
    )
    placed = [i for client in partition.clients for i in client] + list(partition.heldout)
    assert sorted(placed) == list(range(len(labels)))
    assert len(partition.clients) == num_clients
    assert all(partition.sizes)
    assert sum(partition.sizes) + len(partition.heldout) == len(labels)
    assert len(partition.heldout) == wanted_heldout
    assert all(list(client) == sorted(client) for client in partition.clients)
    again = partition_indices(
        labels, num_clients, alpha=alpha, seed=seed, heldout_fraction=heldout_fraction
    )
    assert again == partition
    if alpha is None:
        assert max(partition.sizes) - min(partition.sizes) <= 1


def test_the_seed_decides_the_split() -> None:
    labels = [i % 3 for i in range(120)]
    first = partition_indices(labels, 4, alpha=0.5, seed=1)
    assert partition_indices(labels, 4, alpha=0.5, seed=1) == first
    assert partition_indices(labels, 4, alpha=0.5, seed=2) != first
    assert partition_indices(labels, 4, seed=1) != partition_indices(labels, 4, seed=2)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_small_alpha_skews_labels_and_large_alpha_does_not(seed: int) -> None:
    labels = [i % 4 for i in range(2000)]
    iid = _mean_client_entropy(labels, partition_indices(labels, 10, seed=seed))
    skewed = _mean_client_entropy(labels, partition_indices(labels, 10, alpha=0.1, seed=seed))
    near_iid = _mean_client_entropy(labels, partition_indices(labels, 10, alpha=1000, seed=seed))
    assert iid > 0.95 * math.log(4)
    assert skewed < 0.6 * iid
    assert near_iid > 0.95 * iid


def test_a_tiny_alpha_still_leaves_no_client_empty() -> None:
    labels = [0] * 10 + [1] * 2
    partition = partition_indices(labels, 12, alpha=1e-6, seed=3)
    assert partition.sizes == (1,) * 12


def test_the_heldout_set_mirrors_the_label_mix() -> None:
    labels = [0] * 800 + [1] * 200
    partition = partition_indices(labels, 5, alpha=0.3, seed=0, heldout_fraction=0.2)
    held = Counter(labels[i] for i in partition.heldout)
    assert held == {0: 160, 1: 40}


@pytest.mark.parametrize(
    ("labels", "clients", "options", "message"),
    [
        ([0, 1, 0], 4, {}, "cannot split 3 examples among 4 clients"),
        ([0, 1, 0, 1], 4, {"heldout_fraction": 0.25}, "after holding out 1 of 4 examples"),
        ([0, 1], 0, {}, "num_clients must be at least 1"),
        ([0, 1], 1, {"alpha": 0.0}, "alpha must be a positive number"),
        ([0, 1], 1, {"alpha": math.inf}, "alpha must be a positive number"),
        ([0, 1], 1, {"heldout_fraction": 1.0}, r"heldout_fraction must be in \[0, 1\)"),
    ],
)
def test_impossible_splits_are_usage_errors(
    labels: list[int], clients: int, options: dict[str, float], message: str
) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        partition_indices(labels, clients, **options)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


@given(
    total=st.integers(0, 10_000),
    weights=st.lists(st.floats(0.0, 1e6), min_size=1, max_size=30).filter(lambda w: sum(w) > 0),
)
def test_apportion_sums_exactly_and_stays_within_one_of_the_exact_share(
    total: int, weights: list[float]
) -> None:
    counts = apportion(total, weights)
    assert sum(counts) == total
    weight_sum = math.fsum(weights)
    for count, weight in zip(counts, weights, strict=True):
        assert abs(count - total * weight / weight_sum) < 1 + 1e-9


@given(alpha=st.floats(1e-300, 1e3), size=st.integers(1, 50), seed=st.integers())
def test_dirichlet_draws_are_distributions_even_when_gamma_underflows(
    alpha: float, size: int, seed: int
) -> None:
    draw = sample_dirichlet(random.Random(seed), alpha, size)
    assert len(draw) == size
    assert all(p >= 0 for p in draw)
    assert math.isclose(math.fsum(draw), 1.0)


def test_client_files_sort_in_client_order() -> None:
    names = [client_file_name(i, 12, "csv") for i in range(12)]
    assert names[0] == "client-00.csv"
    assert names == sorted(names)
    assert client_file_name(3, 4, "jsonl") == "client-3.jsonl"


# --------------------------------------------------------------------------------------------
# Splitting a file


def test_partition_file_writes_one_file_per_client_in_the_same_format(tmp_path: Path) -> None:
    rows = [f"review number {i},{'pos' if i % 3 else 'neg'}" for i in range(60)]
    source = tmp_path / "reviews.csv"
    source.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    result = partition_file(
        source, tmp_path / "out", num_clients=3, alpha=0.5, seed=7, heldout_fraction=0.1
    )
    assert [p.name for p in result.files] == [
        "client-0.csv",
        "client-1.csv",
        "client-2.csv",
        "heldout.csv",
    ]
    texts: list[str] = []
    for path, indices in zip(
        result.files, [*result.partition.clients, result.partition.heldout], strict=True
    ):
        part = load_labelled(path, label_names=result.data.label_names)
        assert part.texts == tuple(result.data.texts[i] for i in indices)
        assert part.labels == tuple(result.data.labels[i] for i in indices)
        assert path.read_text(encoding="utf-8").splitlines()[1].endswith((",pos", ",neg"))
        texts.extend(part.texts)
    assert sorted(texts) == sorted(result.data.texts)
    again = partition_file(
        source, tmp_path / "again", num_clients=3, alpha=0.5, seed=7, heldout_fraction=0.1
    )
    for first, second in zip(result.files, again.files, strict=True):
        assert first.read_bytes() == second.read_bytes()


def test_write_partition_can_change_the_format(tmp_path: Path) -> None:
    data = LabelledData(("a", "b", "c"), (0, 1, 1), ("0", "1"), "memory")
    files = write_partition(data, Partition(((0, 2), (1,))), tmp_path, format="jsonl")
    assert [p.name for p in files] == ["client-0.jsonl", "client-1.jsonl"]
    assert load_labelled(files[0]).texts == ("a", "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client-0.jsonl", "client-1.jsonl"]


def test_a_file_too_small_for_the_clients_is_a_data_error_naming_it(tmp_path: Path) -> None:
    source = tmp_path / "tiny.tsv"
    source.write_text("text\tlabel\na\t0\nb\t1\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        partition_file(source, tmp_path / "out", num_clients=3)
    assert (
        str(caught.value)
        == f"{source}: cannot split 2 examples among 3 clients: each client needs at least one"
    )
    assert not (tmp_path / "out").exists()


def test_a_bad_option_fails_before_the_file_is_read(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="alpha must be a positive number") as caught:
        partition_file(tmp_path / "missing.csv", tmp_path / "out", num_clients=2, alpha=-1.0)
    assert not isinstance(caught.value, DataError)


# --------------------------------------------------------------------------------------------
# The synthetic data set


def _split(**options: object) -> SyntheticSplit:
    settings_: dict[str, object] = {"num_clients": 6, "examples_per_client": 120, "seed": 0}
    settings_.update(options)
    return generate(**settings_)  # type: ignore[arg-type]


def test_the_same_seed_gives_the_same_files(tmp_path: Path) -> None:
    first = write_synthetic(_split(seed=11), tmp_path / "a")
    second = write_synthetic(_split(seed=11), tmp_path / "b")
    other = write_synthetic(_split(seed=12), tmp_path / "c")
    assert [p.name for p in first] == [*(f"client-{i}.tsv" for i in range(6)), "heldout.tsv"]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert [p.read_bytes() for p in first] != [p.read_bytes() for p in other]


def test_written_synthetic_files_load_back(tmp_path: Path) -> None:
    split = _split(num_labels=3, heldout=30)
    for fmt in ("tsv", "csv", "jsonl"):
        files = write_synthetic(split, tmp_path / fmt, format=fmt)
        for path, data in zip(files, [*split.clients, split.heldout], strict=True):
            back = load_labelled(path, num_labels=3)
            assert back.texts == data.texts
            assert back.labels == data.labels
    header = (tmp_path / "tsv" / "client-0.tsv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "text\tlabel"


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_small_alpha_gives_clients_different_label_mixes(seed: int) -> None:
    skewed = _split(num_clients=10, examples_per_client=100, alpha=0.1, seed=seed)
    shares = [_share_of(1, client) for client in skewed.clients]
    assert max(shares) - min(shares) > 0.5
    even = _split(num_clients=10, examples_per_client=100, alpha=1000.0, seed=seed)
    even_shares = [_share_of(1, client) for client in even.clients]
    assert max(even_shares) - min(even_shares) < 0.3


def test_the_heldout_set_is_balanced() -> None:
    split = _split(heldout=400, label_noise=0.0, num_labels=4)
    assert split.heldout.label_counts() == (100, 100, 100, 100)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_two_label_heldout_set_is_balanced_and_mixes_every_clients_style(seed: int) -> None:
    """Clients are skewed (alpha 0.1), the held-out set is not, and it speaks every domain."""
    split = _split(num_clients=2, heldout=200, alpha=0.1, label_noise=0.0, seed=seed)
    assert split.heldout.label_counts() == (100, 100)
    assert min(min(client.label_counts()) for client in split.clients) < 30
    noisy = _split(num_clients=2, heldout=200, alpha=0.1, seed=seed)
    assert abs(noisy.heldout.label_counts()[0] - 100) <= 15
    text = " ".join(split.heldout.texts).lower()
    assert "nurse" in text  # client 0 writes about a hospital
    assert "teller" in text  # client 1 about a bank


def test_clients_write_in_their_own_style() -> None:
    styled = _split(num_clients=2)
    words = [Counter(" ".join(c.texts).lower().split()) for c in styled.clients]
    assert words[0]["ward"] > 0
    assert words[1]["ward"] == 0
    assert words[1]["account"] > 0
    plain = _split(num_clients=2, client_styles=False)
    assert all("ward" not in text.lower() for c in plain.clients for text in c.texts)


def test_two_labels_have_a_large_disjoint_sentiment_vocabulary() -> None:
    vocab = class_vocabularies(2)
    assert list(vocab) == ["negative", "positive"]
    negative, positive = (set(words) for words in vocab.values())
    assert len(negative) >= 40
    assert len(positive) >= 40
    assert not negative & positive


def test_any_label_count_gets_its_own_vocabulary() -> None:
    vocab = class_vocabularies(12)
    assert list(vocab)[:2] == ["sports", "weather"]
    assert list(vocab)[-1] == "topic-11"
    all_words = [word for words in vocab.values() for word in words]
    assert len(all_words) == len(set(all_words))
    assert list(class_vocabularies(2)) == ["negative", "positive"]
    largest = class_vocabularies(MAX_LABELS)
    assert len(largest) == MAX_LABELS
    assert len({word for words in largest.values() for word in words}) == 14 * MAX_LABELS
    assert _split(num_labels=12, heldout=24).label_names == tuple(vocab)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_clients": 0}, "num_clients must be at least 1"),
        ({"examples_per_client": 0}, "examples_per_client must be at least 1"),
        ({"num_labels": 1}, "num_labels must be between 2 and 1000"),
        ({"alpha": 0.0}, "alpha must be a positive number"),
        ({"heldout": -1}, "heldout must be zero or more"),
        ({"label_noise": 1.0}, r"label_noise must be in \[0, 1\)"),
    ],
)
def test_bad_generator_options_are_usage_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        _split(**options)


def test_no_heldout_writes_no_heldout_file(tmp_path: Path) -> None:
    files = write_synthetic(_split(num_clients=2, heldout=0), tmp_path)
    assert [p.name for p in files] == ["client-0.tsv", "client-1.tsv"]


def _bag_of_words(texts: tuple[str, ...], vocab: dict[str, int]) -> np.ndarray:
    counts = np.zeros((len(texts), len(vocab)))
    for row, text in enumerate(texts):
        for word in re.findall(r"[a-z0-9-]+", text.lower()):
            column = vocab.get(word)
            if column is not None:
                counts[row, column] += 1
    normalised: np.ndarray = counts / (np.linalg.norm(counts, axis=1, keepdims=True) + 1e-12)
    return normalised


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_tiny_model_learns_it_well_above_chance_but_not_perfectly(seed: int) -> None:
    """Nearest centroid over bag-of-words, trained on the union of the clients' data."""
    split = _split(num_clients=5, examples_per_client=200, alpha=0.5, heldout=400, seed=seed)
    texts = tuple(text for client in split.clients for text in client.texts)
    labels = np.array([label for client in split.clients for label in client.labels])
    vocab: dict[str, int] = {}
    for text in texts:
        for word in re.findall(r"[a-z0-9-]+", text.lower()):
            vocab.setdefault(word, len(vocab))
    train = _bag_of_words(texts, vocab)
    centroids = np.stack([train[labels == k].mean(axis=0) for k in range(2)])
    predicted = (_bag_of_words(split.heldout.texts, vocab) @ centroids.T).argmax(axis=1)
    accuracy = float((predicted == np.array(split.heldout.labels)).mean())
    assert 0.75 <= accuracy < 0.97


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    num_clients=st.integers(1, 8),
    examples=st.integers(1, 30),
    num_labels=st.integers(2, 12),
    alpha=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**32),
)
def test_every_client_gets_exactly_its_examples(
    num_clients: int, examples: int, num_labels: int, alpha: float, seed: int
) -> None:
    split = generate(
        num_clients=num_clients,
        examples_per_client=examples,
        num_labels=num_labels,
        alpha=alpha,
        seed=seed,
        heldout=num_labels,
    )
    assert [len(client) for client in split.clients] == [examples] * num_clients
    assert len(split.heldout) == num_labels
    assert all(client.label_names == split.label_names for client in split.clients)
    assert all(text.strip() and "\t" not in text for c in split.clients for text in c.texts)


# --------------------------------------------------------------------------------------------
# The two-label reviews: what makes them read like text, and what makes them hard

_NEGATORS = {"not", "never", "hardly", "from"}  # "far from"; "anything but" is handled below
_CONTRAST = re.compile(
    r"\b(however|although|though|while|yet|said)\b|(?<!anything )\bbut\b", re.IGNORECASE
)


def _polarity_of_words() -> dict[str, int]:
    """Each single-word sentiment adjective and its label."""
    return {
        word: label
        for label, words in enumerate(class_vocabularies(2).values())
        for word in words
        if " " not in word
    }


def _is_negator(token: str, before: str) -> bool:
    return token in _NEGATORS or token.endswith("n't") or (token == "but" and before == "anything")


def _said(segment: str, polarity: dict[str, int]) -> list[tuple[int, bool]]:
    """The sentiment words of one clause, each with whether a negation comes just before it."""
    tokens = re.findall(r"[a-z'-]+", segment.lower())
    found: list[tuple[int, bool]] = []
    for i, token in enumerate(tokens):
        if token in polarity:
            window = range(max(0, i - 3), i)
            negated = any(_is_negator(tokens[j], tokens[j - 1] if j else "") for j in window)
            found.append((polarity[token], negated))
    return found


def _reviews(**options: object) -> tuple[list[str], list[int]]:
    split = _split(num_clients=6, examples_per_client=200, label_noise=0.0, **options)
    texts = [text for client in split.clients for text in client.texts]
    labels = [label for client in split.clients for label in client.labels]
    return texts, labels


def test_reviews_read_like_short_sentences() -> None:
    texts, _ = _reviews()
    assert all(len(text.split()) <= 30 for text in texts)
    assert all(re.fullmatch(r"[A-Z][A-Za-z' ,;.-]+\.", text) for text in texts)
    assert all("  " not in text and ".." not in text for text in texts)
    assert len(set(texts)) > 0.95 * len(texts)  # varied, not a handful of templates
    words = Counter(word for text in texts for word in re.findall(r"[a-z'-]+", text.lower()))
    polarity = _polarity_of_words()
    assert sum(1 for word in polarity if words[word]) >= 60  # most of the vocabulary is used


def test_negation_and_contrast_occur_for_both_labels() -> None:
    texts, labels = _reviews()
    polarity = _polarity_of_words()
    negated = [
        label
        for text, label in zip(texts, labels, strict=True)
        if any(flag for segment in re.split(r"[.,;]", text) for _, flag in _said(segment, polarity))
    ]
    contrasted = [
        label for text, label in zip(texts, labels, strict=True) if _CONTRAST.search(text)
    ]
    for kind in (negated, contrasted):
        assert len(kind) > 0.05 * len(texts)
        assert min(Counter(kind)[0], Counter(kind)[1]) > 0.15 * len(kind)


def test_a_negation_flips_the_polarity_of_what_it_negates() -> None:
    """Without a contrast every clause agrees with the label, so a negated negative word
    ("was never rude") appears only in positive reviews, and the other way round."""
    texts, labels = _reviews()
    polarity = _polarity_of_words()
    checked = {False: 0, True: 0}
    for text, label in zip(texts, labels, strict=True):
        if _CONTRAST.search(text):
            continue
        for segment in re.split(r"[.,;]", text):
            for word_label, negated in _said(segment, polarity):
                assert (1 - word_label if negated else word_label) == label, text
                checked[negated] += 1
    assert checked[True] > 50
    assert checked[False] > 1000


def test_after_but_or_however_the_clause_carries_the_label() -> None:
    texts, labels = _reviews()
    polarity = _polarity_of_words()
    checked = 0
    for text, label in zip(texts, labels, strict=True):
        match = re.search(r"(?:, but|[;.] [Hh]owever,) ([^.]*)\.", text)
        if match is None:
            continue
        said = _said(match.group(1), polarity)
        if said and not any(negated for _, negated in said):
            assert all(word_label == label for word_label, _ in said), text
            checked += 1
    assert checked > 20


def test_noise_flips_about_the_share_asked_and_leaves_the_texts_alone() -> None:
    options: dict[str, object] = {"num_clients": 6, "examples_per_client": 200, "heldout": 400}
    clean = _split(label_noise=0.0, **options)
    for rate in (0.05, 0.2):
        noisy = _split(label_noise=rate, **options)
        flipped = total = 0
        for ours, theirs in zip(
            (*noisy.clients, noisy.heldout), (*clean.clients, clean.heldout), strict=True
        ):
            assert ours.texts == theirs.texts
            flipped += sum(a != b for a, b in zip(ours.labels, theirs.labels, strict=True))
            total += len(ours)
        assert abs(flipped / total - rate) < 0.3 * rate + 0.01
    assert _split().clients[0].labels != clean.clients[0].labels  # the default adds some noise


def test_two_calls_give_identical_reviews() -> None:
    first = generate(num_clients=3, examples_per_client=50, seed=4)
    again = generate(num_clients=3, examples_per_client=50, seed=4)
    other = generate(num_clients=3, examples_per_client=50, seed=5)
    assert first == again
    assert first.heldout.texts != other.heldout.texts
    assert [c.texts for c in first.clients] != [c.texts for c in other.clients]


def test_reviews_do_not_depend_on_the_hash_seed() -> None:
    code = (
        "import hashlib\nfrom client.data.synthetic import generate\n"
        "s = generate(num_clients=2, examples_per_client=40, seed=9)\n"
        "rows = [t + str(l) for c in (*s.clients, s.heldout) for t, l in zip(c.texts, c.labels)]\n"
        "print(hashlib.sha256('|'.join(rows).encode()).hexdigest())\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for hash_seed in ("0", "12345")
    }
    assert len(digests) == 1
    assert len(next(iter(digests))) == 64
