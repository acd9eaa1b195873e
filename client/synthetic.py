"""A made-up, non-IID text-classification data set for demos and tests.

The demo needs data holders whose data differ the way real ones do, without shipping or
downloading any real data. Each sentence mixes words that carry its class (sentiment words for two
labels, topic words for more), words that belong to another class, and neutral filler; a share of
the labels is then flipped. A small model learns it well above chance but cannot reach 100%, so a
demo shows real learning curves.

Clients differ in two ways, as data holders do:

- **label skew**: each client's label mix is drawn from ``Dirichlet(alpha)`` (small ``alpha``:
  most clients hold one or two labels; large ``alpha``: close to balanced);
- **style** (``client_styles=True``): each client favours its own words for each class and uses
  words of its own domain (a hospital says "ward", a bank says "account").

The held-out set is balanced across labels and mixes every client's style: it stands for the
population the federated model will serve.

Everything is drawn from Python's own Mersenne Twister seeded from strings, so a seed gives the
same data on any machine and Python version, independent of ``PYTHONHASHSEED``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from client.data import DataFormat, LabelledData, write_labelled
from client.partition import apportion, client_file_name, sample_dirichlet
from fedge.errors import UsageError

__all__ = ["MAX_LABELS", "SyntheticSplit", "class_vocabularies", "generate", "write_synthetic"]

MAX_LABELS: Final = 1000

_SENTIMENT: Final[dict[str, tuple[str, ...]]] = {
    "negative": (
        "awful", "terrible", "broken", "slow", "rude", "disappointing", "useless",
        "dirty", "poor", "worst", "annoying", "faulty", "late", "noisy",
    ),
    "positive": (
        "excellent", "great", "friendly", "fast", "helpful", "wonderful", "clean",
        "reliable", "best", "pleasant", "superb", "smooth", "delightful", "perfect",
    ),
}  # fmt: skip

_TOPICS: Final[dict[str, tuple[str, ...]]] = {
    "sports": (
        "match", "goal", "team", "coach", "league", "score", "stadium",
        "player", "season", "referee", "tournament", "striker", "penalty", "champion",
    ),
    "weather": (
        "rain", "storm", "sunny", "forecast", "wind", "cloudy", "temperature",
        "snow", "humid", "thunder", "fog", "drizzle", "heatwave", "frost",
    ),
    "food": (
        "recipe", "soup", "bread", "spicy", "dessert", "kitchen", "flavour",
        "cheese", "salad", "baked", "sauce", "noodles", "chef", "tasty",
    ),
    "music": (
        "guitar", "concert", "album", "melody", "drummer", "song", "lyrics",
        "chorus", "band", "piano", "rhythm", "singer", "vinyl", "orchestra",
    ),
    "travel": (
        "flight", "passport", "luggage", "beach", "itinerary", "tourist", "train",
        "island", "museum", "suitcase", "cruise", "visa", "souvenir", "journey",
    ),
    "finance": (
        "stocks", "interest", "loan", "budget", "dividend", "inflation", "savings",
        "market", "mortgage", "invoice", "portfolio", "tax", "pension", "bond",
    ),
    "health": (
        "doctor", "fever", "vaccine", "therapy", "symptom", "diagnosis", "medicine",
        "allergy", "injury", "surgery", "recovery", "vitamin", "infection", "dose",
    ),
    "science": (
        "experiment", "molecule", "telescope", "theory", "laboratory", "physics", "genome",
        "hypothesis", "particle", "microscope", "chemistry", "orbit", "fossil", "neuron",
    ),
}  # fmt: skip

_FILLER: Final = (
    "the", "a", "and", "was", "is", "it", "this", "that", "with", "for", "very", "really",
    "quite", "today", "again", "just", "our", "my", "we", "they", "had", "so", "about",
    "after", "before", "there", "then", "also", "still", "some", "of", "on", "in", "at",
)  # fmt: skip

_DOMAINS: Final = (
    ("ward", "nurse", "clinic", "patient", "appointment", "shift"),
    ("account", "branch", "transfer", "card", "teller", "statement"),
    ("assembly", "line", "machine", "shipment", "warehouse", "operator"),
    ("classroom", "teacher", "homework", "lecture", "campus", "exam"),
    ("checkout", "shelf", "cashier", "aisle", "receipt", "store"),
    ("room", "lobby", "reception", "booking", "breakfast", "suite"),
)

_SYLLABLES: Final = (
    "ka", "lo", "mi", "ru", "te", "va", "zo", "ne", "pi", "sa", "du", "fe", "go", "hu", "ji", "bo",
)  # fmt: skip

_MIN_WORDS: Final = 6
_MAX_WORDS: Final = 12
_CLASS_WORD: Final = 0.40  # chance that a word carries the sentence's class
_OTHER_CLASS_WORD: Final = 0.05  # chance that it belongs to another class (a distractor)
_DOMAIN_WORD: Final = 0.12  # chance that it is one of the client's own domain words


def _rng(*parts: object) -> random.Random:
    """A stream named by ``parts``: string seeds hash with SHA-512, stable across machines."""
    name = ":".join(["fedge-synthetic", *map(str, parts)])
    return random.Random(name)


@dataclass(frozen=True, slots=True)
class SyntheticSplit:
    """One data set per client, and a balanced held-out set drawn from all their styles."""

    clients: tuple[LabelledData, ...]
    heldout: LabelledData
    seed: int
    alpha: float

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.heldout.label_names


@dataclass(frozen=True, slots=True)
class _Style:
    """How one client writes: its weight on each class word, and its own domain words."""

    word_weights: tuple[tuple[float, ...], ...]
    domain_words: tuple[str, ...]


def _pseudo_words(label: int, taken: set[str]) -> tuple[str, ...]:
    """Fourteen made-up words no other class uses: 16**4 syllable strings leave room for
    :data:`MAX_LABELS` classes, so the draw never runs out."""
    rng = _rng("vocabulary", label)
    words: list[str] = []
    while len(words) < 14:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(4))
        if word not in taken:
            taken.add(word)
            words.append(word)
    return tuple(words)


def class_vocabularies(num_labels: int) -> dict[str, tuple[str, ...]]:
    """Label name to the words that signal it: sentiment for 2 labels, then topics, then made-up
    words (``topic-08`` onwards), so any label count up to :data:`MAX_LABELS` works."""
    if num_labels == 2:
        return dict(_SENTIMENT)
    vocab = dict(list(_TOPICS.items())[:num_labels])
    taken = {word for words in (*_TOPICS.values(), _FILLER, *_DOMAINS) for word in words}
    for label in range(len(vocab), num_labels):
        vocab[f"topic-{label:02d}"] = _pseudo_words(label, taken)
    return vocab


def _style(seed: int, client: int, vocab: list[tuple[str, ...]], styled: bool) -> _Style:
    if not styled:
        return _Style(tuple(tuple(1.0 for _ in words) for words in vocab), ())
    rng = _rng(seed, "style", client)
    weights: list[tuple[float, ...]] = []
    for words in vocab:
        ranks = list(range(len(words)))
        rng.shuffle(ranks)
        weights.append(tuple(1.0 / (rank + 1) for rank in ranks))  # Zipf over its own order
    return _Style(tuple(weights), _DOMAINS[client % len(_DOMAINS)])


def _word(rng: random.Random, label: int, style: _Style, vocab: list[tuple[str, ...]]) -> str:
    draw = rng.random()
    if draw < _CLASS_WORD:
        return rng.choices(vocab[label], weights=style.word_weights[label])[0]
    draw -= _CLASS_WORD
    if draw < _OTHER_CLASS_WORD:
        other = rng.choice([k for k in range(len(vocab)) if k != label])
        return rng.choice(vocab[other])
    draw -= _OTHER_CLASS_WORD
    if style.domain_words and draw < _DOMAIN_WORD:
        return rng.choice(style.domain_words)
    return rng.choice(_FILLER)


def _example(
    rng: random.Random,
    label: int,
    style: _Style,
    vocab: list[tuple[str, ...]],
    label_noise: float,
) -> tuple[str, int]:
    """A sentence written for ``label``, and the label it is given (flipped at ``label_noise``)."""
    words = [_word(rng, label, style, vocab) for _ in range(rng.randint(_MIN_WORDS, _MAX_WORDS))]
    text = " ".join([words[0].capitalize(), *words[1:]]) + "."
    if rng.random() < label_noise:
        label = rng.choice([k for k in range(len(vocab)) if k != label])
    return text, label


def _dataset(
    rng: random.Random,
    plan: list[tuple[int, _Style]],
    *,
    vocab: list[tuple[str, ...]],
    names: tuple[str, ...],
    label_noise: float,
    path: str,
) -> LabelledData:
    rng.shuffle(plan)
    examples = [_example(rng, label, style, vocab, label_noise) for label, style in plan]
    return LabelledData(
        texts=tuple(text for text, _ in examples),
        labels=tuple(label for _, label in examples),
        label_names=names,
        path=path,
    )


def _check(
    *,
    num_clients: int,
    examples_per_client: int,
    num_labels: int,
    alpha: float,
    heldout: int,
    label_noise: float,
) -> None:
    if num_clients < 1:
        raise UsageError(f"num_clients must be at least 1, got {num_clients}")
    if examples_per_client < 1:
        raise UsageError(f"examples_per_client must be at least 1, got {examples_per_client}")
    if not 2 <= num_labels <= MAX_LABELS:
        raise UsageError(f"num_labels must be between 2 and {MAX_LABELS}, got {num_labels}")
    if not (alpha > 0.0 and math.isfinite(alpha)):
        raise UsageError(f"alpha must be a positive number, got {alpha}")
    if heldout < 0:
        raise UsageError(f"heldout must be zero or more examples, got {heldout}")
    if not 0.0 <= label_noise < 1.0:
        raise UsageError(f"label_noise must be in [0, 1), got {label_noise}")


def generate(
    *,
    num_clients: int,
    examples_per_client: int,
    num_labels: int = 2,
    alpha: float = 0.5,
    seed: int = 0,
    heldout: int = 200,
    label_noise: float = 0.1,
    client_styles: bool = True,
) -> SyntheticSplit:
    """Generate ``num_clients`` skewed client data sets and a balanced held-out set of ``heldout``
    examples. The same arguments give the same data, byte for byte."""
    _check(
        num_clients=num_clients,
        examples_per_client=examples_per_client,
        num_labels=num_labels,
        alpha=alpha,
        heldout=heldout,
        label_noise=label_noise,
    )
    vocabularies = class_vocabularies(num_labels)
    names = tuple(vocabularies)
    vocab = list(vocabularies.values())
    styles = [_style(seed, client, vocab, client_styles) for client in range(num_clients)]
    label_rng = _rng(seed, "labels")
    clients: list[LabelledData] = []
    for client, style in enumerate(styles):
        shares = sample_dirichlet(label_rng, alpha, num_labels)
        counts = apportion(examples_per_client, shares)
        plan = [(label, style) for label, count in enumerate(counts) for _ in range(count)]
        rng = _rng(seed, "client", client)
        path = f"synthetic:client-{client}"
        clients.append(
            _dataset(rng, plan, vocab=vocab, names=names, label_noise=label_noise, path=path)
        )
    rng = _rng(seed, "heldout")
    balanced = apportion(heldout, [1.0] * num_labels) if heldout else [0] * num_labels
    plan = [
        (label, rng.choice(styles)) for label, count in enumerate(balanced) for _ in range(count)
    ]
    test = _dataset(
        rng, plan, vocab=vocab, names=names, label_noise=label_noise, path="synthetic:heldout"
    )
    return SyntheticSplit(clients=tuple(clients), heldout=test, seed=seed, alpha=alpha)


def write_synthetic(
    split: SyntheticSplit, out_dir: str | Path, *, format: DataFormat = "tsv"
) -> tuple[Path, ...]:
    """Write ``client-NN.<format>`` per client and ``heldout.<format>``, each atomically.

    Columns are ``text`` and ``label``; labels are written as indices (``label_names`` order).
    An empty held-out set writes no file, since a file with no rows would not load.
    """
    folder = Path(out_dir)
    count = len(split.clients)
    written = [
        write_labelled(folder / client_file_name(i, count, format), data, format=format)
        for i, data in enumerate(split.clients)
    ]
    if split.heldout.texts:
        written.append(write_labelled(folder / f"heldout.{format}", split.heldout, format=format))
    return tuple(written)
