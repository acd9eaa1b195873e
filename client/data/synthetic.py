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
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Final, TypeAlias

from client.contract.labelled import DataFormat, LabelledData, write_labelled
from client.data.partition import apportion, client_file_name, sample_dirichlet
from fedge.errors import UsageError

__all__ = ["MAX_LABELS", "SyntheticSplit", "class_vocabularies", "generate", "write_synthetic"]

MAX_LABELS: Final = 1000

# --------------------------------------------------------------------------------------------
# Two labels: reviews. Words are grouped by polarity (index = label: 0 negative, 1 positive) and
# by what they can describe, so that no nurse is "spacious" and no waiting time is "rude".

_ADJECTIVES: Final[tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]] = (
    {
        "any": (
            "awful", "terrible", "horrible", "dreadful", "disappointing", "poor", "useless",
            "unreliable", "appalling", "abysmal", "mediocre", "frustrating", "shocking",
            "pathetic", "unacceptable", "inconsistent", "bad", "hopeless", "atrocious", "woeful",
        ),
        "person": (
            "rude", "unhelpful", "dismissive", "unprofessional", "careless", "grumpy",
            "incompetent", "impatient", "arrogant", "lazy", "clueless", "inattentive",
            "condescending", "disrespectful", "unfriendly", "sloppy", "curt", "indifferent",
            "abrupt", "hostile",
        ),
        "thing": (
            "slow", "broken", "dirty", "noisy", "confusing", "chaotic", "messy", "faulty",
            "filthy", "shabby", "crowded", "outdated", "cramped", "overpriced", "stressful",
            "tedious", "cold", "smelly", "complicated", "disorganised",
        ),
    },
    {
        "any": (
            "excellent", "great", "wonderful", "superb", "fantastic", "brilliant", "outstanding",
            "impressive", "lovely", "pleasant", "perfect", "reliable", "efficient", "first-class",
            "amazing", "terrific", "faultless", "good", "decent", "exceptional", "marvellous",
        ),
        "person": (
            "friendly", "helpful", "polite", "attentive", "professional", "courteous", "patient",
            "kind", "welcoming", "cheerful", "caring", "competent", "knowledgeable", "respectful",
            "thoughtful", "considerate", "approachable", "reassuring", "prompt", "warm",
        ),
        "thing": (
            "clean", "fast", "quick", "smooth", "spotless", "tidy", "comfortable", "quiet",
            "simple", "clear", "spacious", "modern", "affordable", "convenient", "accurate",
            "hassle-free", "well organised", "bright", "fresh", "seamless",
        ),
    },
)  # fmt: skip

# Predicates after "was" that take no intensifier ("very on time" is not English).
_PHRASES: Final[tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]] = (
    {
        "any": ("a nightmare", "a joke", "worse than I expected", "a real letdown"),
        "person": ("hard to deal with", "a pain to deal with", "out of their depth"),
        "thing": (
            "a complete mess", "a waste of time", "out of order", "behind schedule",
            "a total shambles", "hard to use", "poor value", "in a sorry state",
        ),
    },
    {
        "any": ("spot on", "second to none", "a real highlight", "better than I expected"),
        "person": ("a pleasure to deal with", "a credit to the place", "always there for us"),
        "thing": (
            "on time", "worth every penny", "easy to use", "good value", "in perfect condition",
            "up to date", "a joy to use", "exactly what we needed",
        ),
    },
)  # fmt: skip

# Verb phrases as "past|base": "never <past>" and "did not <base>" negate them.
_VERBS: Final[tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]] = (
    {
        "person": (
            "ignored our questions|ignore our questions",
            "lost my paperwork|lose my paperwork",
            "kept us waiting for ages|keep us waiting for ages",
            "let us down|let us down",
            "turned a short job into an afternoon|turn a short job into an afternoon",
            "got the details wrong|get the details wrong",
            "gave me the wrong information|give me the wrong information",
            "talked down to us|talk down to us",
            "forgot about us|forget about us",
            "blamed everyone else|blame everyone else",
            "rushed us out|rush us out",
        ),
        "thing": (
            "broke down twice|break down",
            "kept failing|keep failing",
            "took forever|take forever",
            "caused endless delays|cause endless delays",
            "fell apart|fall apart",
            "ruined the day|ruin the day",
            "cost far too much|cost far too much",
        ),
    },
    {
        "person": (
            "explained everything clearly|explain everything clearly",
            "sorted out the problem quickly|sort out the problem quickly",
            "went out of their way to help|go out of their way to help",
            "kept us informed|keep us informed",
            "listened carefully|listen carefully",
            "made the whole thing easy|make the whole thing easy",
            "answered every question|answer every question",
            "treated us with respect|treat us with respect",
            "followed up the next day|follow up the next day",
            "put us at ease|put us at ease",
            "got everything right|get everything right",
        ),
        "thing": (
            "worked perfectly|work perfectly",
            "ran like clockwork|run like clockwork",
            "saved us a lot of time|save us a lot of time",
            "exceeded my expectations|exceed my expectations",
            "made life easier|make life easier",
            "impressed everyone|impress anyone",
            "held up well|hold up well",
        ),
    },
)

_INTENSIFIERS: Final = (
    (
        "very", "really", "extremely", "incredibly", "so", "truly", "quite", "pretty",
        "a bit", "rather", "somewhat", "slightly", "a little", "surprisingly",
    ),
    (
        "very", "really", "extremely", "incredibly", "so", "truly", "quite", "pretty",
        "genuinely", "remarkably", "exceptionally", "fairly", "reasonably", "surprisingly",
    ),
)  # fmt: skip
_NEGATED_INTENSIFIERS: Final = ("very", "particularly", "exactly", "especially", "that")
_NEUTRAL: Final = (
    "okay", "fine", "average", "acceptable", "about what I expected", "nothing out of the ordinary",
    "much the same as last time", "as expected", "standard", "neither here nor there",
)  # fmt: skip
# Copulas for singular and plural subjects: affirmative, "not", contracted, "never".
_COPULAS: Final = (
    (
        ("was", "was not", "wasn't", "was never"),
        ("is", "is not", "isn't", "is never"),
        ("has been", "has not been", "hasn't been", "has never been"),
    ),
    (
        ("were", "were not", "weren't", "were never"),
        ("are", "are not", "aren't", "are never"),
        ("have been", "have not been", "haven't been", "have never been"),
    ),
)
_OPENERS: Final = ("Overall, ", "Honestly, ", "On the whole, ", "In short, ", "To be honest, ")
# Closing verdicts; some positive ones carry a negation ("I can't fault it") to trip word counts.
_ENDINGS: Final = (
    (
        "I will not be back.", "I would not recommend it.", "Avoid if you can.", "One star.",
        "Never again.", "I want my money back.", "I expected much better.",
        "I have made a complaint.",
    ),
    (
        "I would recommend it to anyone.", "I will definitely be back.", "Five stars.",
        "Highly recommended.", "I can't fault it.", "I could not be happier.",
        "I would never go anywhere else.", "Thank you to everyone involved.",
    ),
)  # fmt: skip
_CONTRASTS: Final = (  # {a}: the clause the label does not follow; {b}: the one it does
    "{A}, but {b}.", "{A}; however, {b}.", "{A}. However, {b}.", "Although {a}, {b}.",
    "Even though {a}, {b}.", "While {a}, {b}.", "{B}, although {a}.", "{B}, even though {a}.",
    "{A}, yet {b}.", "{A}. That said, {b}.", "{A}, but overall {b}.",
)  # fmt: skip
# "could not have been more X" keeps X's polarity: a negation that does not flip. Long words
# only, since "more fast" is not English.
_EMPHATIC: Final = (
    ("unhelpful", "disorganised", "frustrating", "confusing", "unprofessional", "disappointing",
     "stressful", "complicated", "dismissive", "careless"),
    ("helpful", "welcoming", "professional", "pleasant", "efficient", "reassuring", "attentive",
     "comfortable", "convenient", "organised"),
)  # fmt: skip
_PAIRS: Final = ("{A} and {b}.", "{A}, and {b} too.", "{A}. {B} as well.", "{A}; {b}.")

_VERDICT_NOUNS: Final = ("service", "experience", "visit", "place", "overall", "all round")

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


@dataclass(frozen=True, slots=True)
class _Subject:
    text: str
    plural: bool
    person: bool


@dataclass(frozen=True, slots=True)
class _Domain:
    """A client's world: ``words`` feed the many-label sentences, the rest the reviews."""

    words: tuple[str, ...]
    people: tuple[_Subject, ...]
    things: tuple[_Subject, ...]
    context: tuple[str, ...]


def _domain(words: tuple[str, ...], people: str, things: str, context: tuple[str, ...]) -> _Domain:
    """Subjects are ``;``-separated; a leading ``+`` marks a plural ("+the nurses")."""

    def subjects(spec: str, person: bool) -> tuple[_Subject, ...]:
        parts = [part.strip() for part in spec.split(";")]
        return tuple(_Subject(p.lstrip("+"), p.startswith("+"), person) for p in parts)

    return _Domain(words, subjects(people, True), subjects(things, False), context)


_DOMAINS: Final = (
    _domain(
        ("ward", "nurse", "clinic", "patient", "appointment", "shift"),
        "the nurse; +the nurses; the night nurse; the doctor; the consultant; the ward sister; "
        "the porter; the receptionist; +the junior doctors",
        "the ward; the waiting time; the food; the discharge process; the appointment system; "
        "the clinic; the night shift; +the beds; the parking; the pharmacy; the waiting room",
        (
            "My mother spent three nights on the ward.", "I came in for a routine appointment.",
            "I was at the clinic for a follow-up.", "We arrived just before the shift change.",
            "I stayed in after an operation.", "My appointment was at nine in the morning.",
        ),
    ),
    _domain(
        ("account", "branch", "transfer", "card", "teller", "statement"),
        "the teller; the branch manager; the adviser; +the staff at the branch; "
        "the person on the phone; the mortgage adviser; +the tellers",
        "the account; the app; the transfer; the new card; the statement; the branch; the queue; "
        "the online banking; +the fees; the mortgage process; the phone line",
        (
            "I went in to open a new account.", "I needed to make a large transfer.",
            "My card was due for renewal.", "I called about a line on my statement.",
            "I visited the branch on a Monday.", "I have banked there for ten years.",
        ),
    ),
    _domain(
        ("assembly", "line", "machine", "shipment", "warehouse", "operator"),
        "the operator; the shift supervisor; the foreman; the maintenance crew; "
        "the safety officer; +the operators; the line manager; +the new hires",
        "the assembly line; the machine; the shipment; the warehouse; the new press; "
        "the canteen; the conveyor; the scheduling; the quality check; +the spare parts; "
        "the loading dock",
        (
            "I have worked on the line for two years.", "We had a big shipment due on Friday.",
            "The machine was installed last month.", "I did a week of nights in the warehouse.",
            "I started there as an operator.", "We were running a new product that week.",
        ),
    ),
    _domain(
        ("classroom", "teacher", "homework", "lecture", "campus", "exam"),
        "the teacher; the head teacher; the tutor; the lecturer; the teaching assistant; "
        "+the teachers; the admissions office; the librarian",
        "the classroom; the homework; the lecture; the campus; the exam; the library; "
        "the timetable; the marking; the course material; +the facilities; the feedback",
        (
            "My son started there in September.", "I took the evening course last term.",
            "We had the exam in the main hall.", "I sat in on one lecture.",
            "I visited the campus for an open day.", "Homework was set every Friday.",
        ),
    ),
    _domain(
        ("checkout", "shelf", "cashier", "aisle", "receipt", "store"),
        "the cashier; the shop assistant; the store manager; +the staff on the floor; "
        "the delivery driver; the security guard; +the cashiers",
        "the checkout; +the shelves; the aisle; the receipt; the store; the returns process; "
        "+the prices; the self-service till; the car park; the website; the fruit and veg",
        (
            "I popped in for a few things after work.", "I needed to return a kettle.",
            "I did the weekly shop there on Saturday.", "I kept the receipt just in case.",
            "The store had just reopened after a refit.", "I went to the checkout with a trolley.",
        ),
    ),
    _domain(
        ("room", "lobby", "reception", "booking", "breakfast", "suite"),
        "the receptionist; the concierge; the cleaner; the waiter; the night porter; "
        "the hotel manager; +the staff; +the waiters",
        "the room; the lobby; the reception; the booking; the breakfast; the suite; the bed; "
        "the shower; the wifi; the pool; the view; the check-in",
        (
            "We stayed three nights in May.", "I made the booking online.",
            "We arrived late in the evening.", "We had a suite on the top floor.",
            "Breakfast was served from seven.", "It was a business trip.",
        ),
    ),
)  # fmt: skip

# People and things every place has: styled clients mix them with their own domain's, as real
# reviewers do, so that the domain alone does not give the label away under label skew; clients
# without a style use only these.
_PLAIN_DOMAIN: Final = _domain(
    (),
    "the manager; the person at the desk; the team; the assistant; +the staff; "
    "+the people there",
    "the service; the place; the wait; the process; the website; the building; "
    "the whole experience; the booking system; the communication; +the facilities",
    (
        "I went there last week.", "It was my first visit.", "I had been there once before.",
        "We went in the afternoon.", "It was busier than usual.", "A friend told me about it.",
    ),
)  # fmt: skip


def _predicates(polarity: int) -> dict[str, tuple[_Predicate, ...]]:
    """Every predicate of ``polarity``, by what it may describe ("person" or "thing")."""
    out: dict[str, tuple[_Predicate, ...]] = {}
    for who in ("person", "thing"):
        adjectives = (*_ADJECTIVES[polarity]["any"], *_ADJECTIVES[polarity][who])
        phrases = (*_PHRASES[polarity]["any"], *_PHRASES[polarity][who])
        verbs = [verb.split("|") for verb in _VERBS[polarity][who]]
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

    domain: _Domain
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
    domain = _DOMAINS[client % len(_DOMAINS)] if styled else _PLAIN_DOMAIN
    return _Voice(domain, (weights[0], weights[1]))


def _subject(rng: random.Random, voice: _Voice, avoid: _Subject | None = None) -> _Subject:
    domain = _PLAIN_DOMAIN if rng.random() < _SHARED else voice.domain
    pool = domain.people if rng.random() < 0.5 else domain.things
    while True:
        subject = rng.choice(pool)
        if subject is not avoid:
            return subject


def _predicate(rng: random.Random, voice: _Voice, polarity: int, subject: _Subject) -> _Predicate:
    who = "person" if subject.person else "thing"
    return rng.choices(_PREDICATES[polarity][who], cum_weights=voice.cum_weights[polarity][who])[0]


def _clause(
    rng: random.Random,
    voice: _Voice,
    polarity: int,
    subject: _Subject,
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
    copula = rng.choice(_COPULAS[subject.plural])
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
        return f"{name} {copula[0]} {rng.choice(_INTENSIFIERS[said.polarity])} {text}"
    return f"{name} {copula[0]} {text}"


def _negated(rng: random.Random, copula: tuple[str, str, str, str], said: _Predicate) -> str:
    """``said`` negated after the copula, the many ways people do it."""
    affirmative, plain_not, contracted, never = copula
    form = rng.random()
    if form < 0.55:
        head = plain_not if form < 0.3 else contracted
        if said.gradable and rng.random() < 0.25:
            return f"{head} {rng.choice(_NEGATED_INTENSIFIERS)} {said.text}"
        tail = rng.choice((" at all", " in the slightest")) if rng.random() < 0.3 else ""
        return f"{head} {said.text}{tail}"
    if form < 0.75:
        return f"{never} {said.text}"
    hedge = rng.choice(("far from", "anything but", "hardly") if said.gradable else ("hardly",))
    return f"{affirmative} {hedge} {said.text}"


def _neutral_clause(rng: random.Random, subject: _Subject) -> str:
    affirmative = rng.choice(_COPULAS[subject.plural])[0]
    return f"{subject.text} {affirmative} {rng.choice(_NEUTRAL)}"


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
        return _fill(rng.choice(_PAIRS), a, _clause(rng, voice, label, second, negated=False))
    kind -= _PAIRED
    if kind < _NEGATED:
        a = _clause(rng, voice, label, first, negated=True)
        if rng.random() >= _SUPPORTED:
            return _capital(a) + "."
        b = _clause(rng, voice, label, second, negated=False, stressed=True)
        return _fill(rng.choice(_PAIRS), *((a, b) if rng.random() < 0.5 else (b, a)))
    kind -= _NEGATED
    if kind < _CONTRAST:
        if rng.random() < _NEUTRAL_FIRST:
            a = _neutral_clause(rng, first)
        else:
            a = _clause(rng, voice, 1 - label, first, negated=rng.random() < _NEGATE_IN_CONTRAST)
        stressed = rng.random() < _SUPPORTED
        negated = not stressed and rng.random() < _NEGATE_IN_CONTRAST
        b = _clause(rng, voice, label, second, negated=negated, stressed=stressed)
        return _fill(rng.choice(_CONTRASTS), a, b)
    could = rng.choice(("could not", "couldn't"))
    return _capital(f"{first.text} {could} have been more {rng.choice(_EMPHATIC[label])}") + "."


def _support(rng: random.Random, label: int) -> str:
    """A closing verdict of the label's polarity, as reviews end: a stock phrase, or a
    fragment in the plainest words ("Terrible experience.", "Great and efficient.")."""
    if rng.random() < _ENDING_SHARE:
        return rng.choice(_ENDINGS[label])
    first, second = rng.sample(_ADJECTIVES[label]["any"], 2)
    form = rng.random()
    if form < 0.5:
        return _capital(f"{first} {rng.choice(_VERDICT_NOUNS)}") + "."
    if form < 0.75:
        return _capital(f"{rng.choice(_INTENSIFIERS[label])} {first}") + "."
    return _capital(f"{first} and {second}") + "."


def _review(rng: random.Random, label: int, voice: _Voice) -> str:
    """One review whose sentiment is ``label`` (0 negative, 1 positive), with the neutral
    context and verdicts around it that real reviews have, kept within the word limit."""
    core = _core(rng, label, voice)
    if rng.random() < _OPENER:
        core = rng.choice(_OPENERS) + core[:1].lower() + core[1:]
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
        word = "".join(rng.choice(_SYLLABLES) for _ in range(4))
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
            name: tuple(word for words in _ADJECTIVES[polarity].values() for word in words)
            for polarity, name in enumerate(("negative", "positive"))
        }
    vocab = dict(list(_TOPICS.items())[:num_labels])
    domain_words = (domain.words for domain in _DOMAINS)
    taken = {word for words in (*_TOPICS.values(), _FILLER, *domain_words) for word in words}
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
    return _Style(tuple(weights), _DOMAINS[client % len(_DOMAINS)].words)


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
