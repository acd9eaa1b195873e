"""A made-up, non-IID text-classification data set for demos and tests.

The demo needs data holders whose data differ the way real ones do, without shipping or
downloading any real data. It also needs a task that a frozen sentence encoder with a small head
learns well but not perfectly, or a demo shows nothing: a bag of sentiment words is learnt from
one word, and a bag of random words is not English, so a pretrained encoder barely helps.

With two labels (the default) each example is therefore a short review that reads like one: a
client's own people and things ("the nurse", "the waiting time") with one of many positive or
negative adjectives, phrases or verbs. What makes it hard is what makes real reviews hard for a
mean-pooled encoder: negation flips a phrase ("was never rude"), contrast puts the verdict after
"but" or outside an "although" clause ("the room was tiny, but the staff were lovely"), mild
wording ("a bit slow"), neutral context and verdicts that read the other way ("I can't fault
it"). A share of labels is flipped, as annotators do. With more labels, each sentence mixes topic
words, other topics' words and filler: many-class demos need a label space, not prose.

Clients differ in two ways, as data holders do:

- **label skew**: each client's label mix is drawn from ``Dirichlet(alpha)`` (small ``alpha``:
  most clients hold one or two labels; large ``alpha``: close to balanced);
- **style** (``client_styles=True``): each client writes about its own domain (a hospital says
  "ward", a bank says "account") and favours its own words for each class.

The held-out set is balanced across labels and mixes every client's style: it stands for the
population the federated model will serve.

Everything is drawn from Python's own Mersenne Twister seeded from strings, so a seed gives the
same data on any machine and Python version, independent of ``PYTHONHASHSEED``. Label noise has
a stream of its own, so changing ``label_noise`` changes labels only, never the texts.

This module is the generator alone, one job at some length; its words (tables only) are in
client/data/vocabulary.py.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Final, TypeAlias

from client.contract.data_format import DataFormat
from client.contract.labelled import LabelledData, write_labelled
from client.data.partition import apportion, client_file_name, sample_dirichlet
from client.data.vocabulary import (
    ADJECTIVES,
    CONTRASTS,
    COPULAS,
    DOMAINS,
    EMPHATIC,
    ENDINGS,
    FILLER,
    INTENSIFIERS,
    NEGATED_INTENSIFIERS,
    NEUTRAL,
    OPENERS,
    PAIRS,
    PHRASES,
    PLAIN_DOMAIN,
    SYLLABLES,
    TOPICS,
    VERBS,
    VERDICT_NOUNS,
    Domain,
    Subject,
)
from fedge.errors import UsageError

__all__ = ["MAX_LABELS", "SyntheticSplit", "class_vocabularies", "generate", "write_synthetic"]

MAX_LABELS: Final = 1000

# --------------------------------------------------------------------------------------------
# Two labels: reviews, from the words and frames in client/data/vocabulary.py.

_MAX_REVIEW_WORDS: Final = 30
# How hard the task is. Measured with frozen all-MiniLM-L6-v2 (mean pooling) and a logistic
# regression on 2 clients x 200 examples: negation and contrast read, to a mean-pooled encoder,
# much like label noise, so every point of their share costs about half a point of held-out
# accuracy; the redundancy below (a second adjective, a closing fragment) is what real reviews
# have and what keeps the task learnable from a few hundred examples.
_SINGLE: Final = 0.59  # one plain clause
_PAIRED: Final = 0.20  # two clauses of the same polarity
_NEGATED: Final = 0.08  # a clause whose opposite-polarity phrase is negated
_CONTRAST: Final = 0.08  # opposite (or neutral) clause, then the verdict clause
# The rest (5%): "could not have been more X", a negation that keeps the polarity.
_SUPPORTED: Final = 0.7  # a negated or contrasted verdict is backed by a stressed plain clause
_NEUTRAL_FIRST: Final = 0.30  # a contrast's first clause is neutral rather than opposite
_NEGATE_IN_CONTRAST: Final = 0.15  # a contrast's clause is itself negated
_DOUBLE: Final = 0.6  # a plain clause says two things ("was friendly and helpful")
_INTENSIFY: Final = 0.15  # "very", or a softener ("a bit slow") that blurs the verdict
_PHRASE_WEIGHT: Final = 0.5  # phrases and verbs, relative to adjectives: weaker signals
_SHARED: Final = 0.7  # a subject every domain has ("the staff"): the rest name the domain
_ZIPF: Final = 1.2  # how strongly a client favours its own words
_CONTEXT: Final = 0.10  # a neutral sentence of the client's domain before or after
_SUPPORT: Final = 1.0  # a closing fragment that agrees with the label ("Terrible service.")
_ENDING_SHARE: Final = 0.05  # of those, a stock verdict, some negated ("I can't fault it")
_OPENER: Final = 0.10  # "Honestly, ..."


@dataclass(frozen=True, slots=True)
class _Predicate:
    """What is said about a subject. ``base`` is the verb's base form ("" for "was ..." ones)."""

    text: str
    base: str
    polarity: int
    gradable: bool


def _predicates(polarity: int) -> dict[str, tuple[_Predicate, ...]]:
    """Every predicate of ``polarity``, by what it may describe ("person" or "thing")."""
    out: dict[str, tuple[_Predicate, ...]] = {}
    for who in ("person", "thing"):
        adjectives = (*ADJECTIVES[polarity]["any"], *ADJECTIVES[polarity][who])
        phrases = (*PHRASES[polarity]["any"], *PHRASES[polarity][who])
        verbs = [verb.split("|") for verb in VERBS[polarity][who]]
        out[who] = (
            *(_Predicate(word, "", polarity, True) for word in adjectives),
            *(_Predicate(phrase, "", polarity, False) for phrase in phrases),
            *(_Predicate(past, base, polarity, False) for past, base in verbs),
        )
    return out


_PREDICATES: Final = (_predicates(0), _predicates(1))


@dataclass(frozen=True, slots=True)
class _Voice:
    """How one client writes reviews: its domain, and a cumulative weight for each predicate
    in ``_PREDICATES[polarity][who]``, so each client leans on its own favourite words."""

    domain: Domain
    cum_weights: tuple[dict[str, tuple[float, ...]], dict[str, tuple[float, ...]]]


def _voice(seed: int, client: int, styled: bool) -> _Voice:
    """A client's own domain and a Zipf weighting over a shuffled order of the words; without
    a style, the shared place and even weights."""
    rng = _rng(seed, "voice", client)
    weights: list[dict[str, tuple[float, ...]]] = []
    for by_who in _PREDICATES:
        per_who: dict[str, tuple[float, ...]] = {}
        for who, predicates in by_who.items():
            ranks = list(range(len(predicates)))
            if styled:
                rng.shuffle(ranks)
            zipf = _ZIPF if styled else 0.0
            per_who[who] = tuple(
                accumulate(
                    (1.0 if said.gradable else _PHRASE_WEIGHT) / (rank + 1) ** zipf
                    for said, rank in zip(predicates, ranks, strict=True)
                )
            )
        weights.append(per_who)
    domain = DOMAINS[client % len(DOMAINS)] if styled else PLAIN_DOMAIN
    return _Voice(domain, (weights[0], weights[1]))


def _subject(rng: random.Random, voice: _Voice, avoid: Subject | None = None) -> Subject:
    domain = PLAIN_DOMAIN if rng.random() < _SHARED else voice.domain
    pool = domain.people if rng.random() < 0.5 else domain.things
    while True:
        subject = rng.choice(pool)
        if subject is not avoid:
            return subject


def _predicate(rng: random.Random, voice: _Voice, polarity: int, subject: Subject) -> _Predicate:
    who = "person" if subject.person else "thing"
    return rng.choices(_PREDICATES[polarity][who], cum_weights=voice.cum_weights[polarity][who])[0]


def _clause(
    rng: random.Random,
    voice: _Voice,
    polarity: int,
    subject: Subject,
    *,
    negated: bool,
    stressed: bool = False,
) -> str:
    """``subject`` said to be of ``polarity``: plainly, or by negating the opposite.
    ``stressed`` says it twice ("was friendly and helpful"), as people do for what matters."""
    said = _predicate(rng, voice, 1 - polarity if negated else polarity, subject)
    name = subject.text
    if said.base:
        if not negated:
            return f"{name} {said.text}"
        verb = (f"did not {said.base}", f"didn't {said.base}", f"never {said.text}")
        return f"{name} {rng.choice(verb)}"
    copula = rng.choice(COPULAS[subject.plural])
    if negated:
        return f"{name} {_negated(rng, copula, said)}"
    text = said.text
    if stressed or (said.gradable and rng.random() < _DOUBLE):
        for _ in range(4):
            also = _predicate(rng, voice, said.polarity, subject)
            if also.gradable and also is not said:
                text = f"{text} and {also.text}"
                break
    if said.gradable and rng.random() < _INTENSIFY:
        return f"{name} {copula[0]} {rng.choice(INTENSIFIERS[said.polarity])} {text}"
    return f"{name} {copula[0]} {text}"


def _negated(rng: random.Random, copula: tuple[str, str, str, str], said: _Predicate) -> str:
    """``said`` negated after the copula, the many ways people do it."""
    affirmative, plain_not, contracted, never = copula
    form = rng.random()
    if form < 0.55:
        head = plain_not if form < 0.3 else contracted
        if said.gradable and rng.random() < 0.25:
            return f"{head} {rng.choice(NEGATED_INTENSIFIERS)} {said.text}"
        tail = rng.choice((" at all", " in the slightest")) if rng.random() < 0.3 else ""
        return f"{head} {said.text}{tail}"
    if form < 0.75:
        return f"{never} {said.text}"
    hedge = rng.choice(("far from", "anything but", "hardly") if said.gradable else ("hardly",))
    return f"{affirmative} {hedge} {said.text}"


def _neutral_clause(rng: random.Random, subject: Subject) -> str:
    affirmative = rng.choice(COPULAS[subject.plural])[0]
    return f"{subject.text} {affirmative} {rng.choice(NEUTRAL)}"


def _fill(template: str, a: str, b: str) -> str:
    """Fill ``{a}``/``{b}`` (or capitalised ``{A}``/``{B}``) and capitalise the sentence."""
    text = template.format(a=a, b=b, A=_capital(a), B=_capital(b))
    return _capital(text)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _core(rng: random.Random, label: int, voice: _Voice) -> str:
    """The sentence that carries the verdict: plain, paired, negated, contrasted or emphatic."""
    first = _subject(rng, voice)
    second = _subject(rng, voice, avoid=first)
    kind = rng.random()
    if kind < _SINGLE:
        return _capital(_clause(rng, voice, label, first, negated=False)) + "."
    kind -= _SINGLE
    if kind < _PAIRED:
        a = _clause(rng, voice, label, first, negated=False)
        return _fill(rng.choice(PAIRS), a, _clause(rng, voice, label, second, negated=False))
    kind -= _PAIRED
    if kind < _NEGATED:
        a = _clause(rng, voice, label, first, negated=True)
        if rng.random() >= _SUPPORTED:
            return _capital(a) + "."
        b = _clause(rng, voice, label, second, negated=False, stressed=True)
        return _fill(rng.choice(PAIRS), *((a, b) if rng.random() < 0.5 else (b, a)))
    kind -= _NEGATED
    if kind < _CONTRAST:
        if rng.random() < _NEUTRAL_FIRST:
            a = _neutral_clause(rng, first)
        else:
            a = _clause(rng, voice, 1 - label, first, negated=rng.random() < _NEGATE_IN_CONTRAST)
        stressed = rng.random() < _SUPPORTED
        negated = not stressed and rng.random() < _NEGATE_IN_CONTRAST
        b = _clause(rng, voice, label, second, negated=negated, stressed=stressed)
        return _fill(rng.choice(CONTRASTS), a, b)
    could = rng.choice(("could not", "couldn't"))
    return _capital(f"{first.text} {could} have been more {rng.choice(EMPHATIC[label])}") + "."


def _support(rng: random.Random, label: int) -> str:
    """A closing verdict of the label's polarity, as reviews end: a stock phrase, or a
    fragment in the plainest words ("Terrible experience.", "Great and efficient.")."""
    if rng.random() < _ENDING_SHARE:
        return rng.choice(ENDINGS[label])
    first, second = rng.sample(ADJECTIVES[label]["any"], 2)
    form = rng.random()
    if form < 0.5:
        return _capital(f"{first} {rng.choice(VERDICT_NOUNS)}") + "."
    if form < 0.75:
        return _capital(f"{rng.choice(INTENSIFIERS[label])} {first}") + "."
    return _capital(f"{first} and {second}") + "."


def _review(rng: random.Random, label: int, voice: _Voice) -> str:
    """One review whose sentiment is ``label`` (0 negative, 1 positive), with the neutral
    context and verdicts around it that real reviews have, kept within the word limit."""
    core = _core(rng, label, voice)
    if rng.random() < _OPENER:
        core = rng.choice(OPENERS) + core[:1].lower() + core[1:]
    parts = [core]
    if rng.random() < _CONTEXT:
        parts.insert(0 if rng.random() < 0.7 else 1, rng.choice(voice.domain.context))
    if rng.random() < _SUPPORT:
        parts.append(_support(rng, label))
    while len(parts) > 1 and sum(len(part.split()) for part in parts) > _MAX_REVIEW_WORDS:
        parts.remove(next(part for part in parts if part is not core))
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# More labels: topic words among filler.

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
    """How one client writes topic sentences: its weight on each class word, and its own
    domain words."""

    word_weights: tuple[tuple[float, ...], ...]
    domain_words: tuple[str, ...]


def _pseudo_words(label: int, taken: set[str]) -> tuple[str, ...]:
    """Fourteen made-up words no other class uses: 16**4 syllable strings leave room for
    :data:`MAX_LABELS` classes, so the draw never runs out."""
    rng = _rng("vocabulary", label)
    words: list[str] = []
    while len(words) < 14:
        word = "".join(rng.choice(SYLLABLES) for _ in range(4))
        if word not in taken:
            taken.add(word)
            words.append(word)
    return tuple(words)


def class_vocabularies(num_labels: int) -> dict[str, tuple[str, ...]]:
    """Label name to the words that signal it: sentiment adjectives for 2 labels, then topics,
    then made-up words (``topic-08`` onwards), so any label count up to :data:`MAX_LABELS`
    works."""
    if num_labels == 2:
        return {
            name: tuple(word for words in ADJECTIVES[polarity].values() for word in words)
            for polarity, name in enumerate(("negative", "positive"))
        }
    vocab = dict(list(TOPICS.items())[:num_labels])
    domain_words = (domain.words for domain in DOMAINS)
    taken = {word for words in (*TOPICS.values(), FILLER, *domain_words) for word in words}
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
    return _Style(tuple(weights), DOMAINS[client % len(DOMAINS)].words)


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
    return rng.choice(FILLER)


def _topic_sentence(
    rng: random.Random, label: int, style: _Style, vocab: list[tuple[str, ...]]
) -> str:
    words = [_word(rng, label, style, vocab) for _ in range(rng.randint(_MIN_WORDS, _MAX_WORDS))]
    return " ".join([words[0].capitalize(), *words[1:]]) + "."


# --------------------------------------------------------------------------------------------
# Assembling the split

_Writer: TypeAlias = "_Style | _Voice"


def _dataset(
    rng: random.Random,
    plan: list[tuple[int, _Writer]],
    *,
    vocab: list[tuple[str, ...]],
    names: tuple[str, ...],
    label_noise: float,
    seed: int,
    path: str,
) -> LabelledData:
    """Texts written for the planned labels; then each label is flipped with chance
    ``label_noise``, drawn from its own stream so the texts do not depend on it."""
    rng.shuffle(plan)
    texts = tuple(
        _review(rng, label, writer)
        if isinstance(writer, _Voice)
        else _topic_sentence(rng, label, writer, vocab)
        for label, writer in plan
    )
    noise = _rng(seed, "noise", path)
    labels: list[int] = []
    for label, _ in plan:
        flip = noise.random() < label_noise
        other = noise.randrange(len(names) - 1)
        labels.append((other if other < label else other + 1) if flip else label)
    return LabelledData(texts=texts, labels=tuple(labels), label_names=names, path=path)


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
    label_noise: float = 0.05,
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
    writers: list[_Writer] = [
        _voice(seed, client, client_styles)
        if num_labels == 2
        else _style(seed, client, vocab, client_styles)
        for client in range(num_clients)
    ]
    label_rng = _rng(seed, "labels")
    clients: list[LabelledData] = []
    for client, writer in enumerate(writers):
        shares = sample_dirichlet(label_rng, alpha, num_labels)
        counts = apportion(examples_per_client, shares)
        plan = [(label, writer) for label, count in enumerate(counts) for _ in range(count)]
        clients.append(
            _dataset(
                _rng(seed, "client", client),
                plan,
                vocab=vocab,
                names=names,
                label_noise=label_noise,
                seed=seed,
                path=f"synthetic:client-{client}",
            )
        )
    rng = _rng(seed, "heldout")
    balanced = apportion(heldout, [1.0] * num_labels) if heldout else [0] * num_labels
    plan = [
        (label, rng.choice(writers)) for label, count in enumerate(balanced) for _ in range(count)
    ]
    test = _dataset(
        rng,
        plan,
        vocab=vocab,
        names=names,
        label_noise=label_noise,
        seed=seed,
        path="synthetic:heldout",
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
