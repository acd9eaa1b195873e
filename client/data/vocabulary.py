"""The words of the synthetic data set (client/data/synthetic.py): data only, no logic.

This module does one thing, hold the vocabulary tables, which is why it is long: sentiment
adjectives, phrases and verbs by polarity and by what they can describe, the sentence frames
reviews are built from (copulas, contrasts, pairs, openers, verdicts), each client's domain (its
people, things and context sentences), and the topic words and filler of the many-label task.
Editing a table changes every data set a seed gives, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "ADJECTIVES",
    "CONTRASTS",
    "COPULAS",
    "DOMAINS",
    "EMPHATIC",
    "ENDINGS",
    "FILLER",
    "INTENSIFIERS",
    "NEGATED_INTENSIFIERS",
    "NEUTRAL",
    "OPENERS",
    "PAIRS",
    "PHRASES",
    "PLAIN_DOMAIN",
    "SYLLABLES",
    "TOPICS",
    "VERBS",
    "VERDICT_NOUNS",
    "Domain",
    "Subject",
]

# --------------------------------------------------------------------------------------------
# Two labels: reviews. Words are grouped by polarity (index = label: 0 negative, 1 positive) and
# by what they can describe, so that no nurse is "spacious" and no waiting time is "rude".

ADJECTIVES: Final[tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]] = (
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
PHRASES: Final[tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]] = (
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
VERBS: Final[tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]] = (
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

INTENSIFIERS: Final = (
    (
        "very", "really", "extremely", "incredibly", "so", "truly", "quite", "pretty",
        "a bit", "rather", "somewhat", "slightly", "a little", "surprisingly",
    ),
    (
        "very", "really", "extremely", "incredibly", "so", "truly", "quite", "pretty",
        "genuinely", "remarkably", "exceptionally", "fairly", "reasonably", "surprisingly",
    ),
)  # fmt: skip
NEGATED_INTENSIFIERS: Final = ("very", "particularly", "exactly", "especially", "that")
NEUTRAL: Final = (
    "okay", "fine", "average", "acceptable", "about what I expected", "nothing out of the ordinary",
    "much the same as last time", "as expected", "standard", "neither here nor there",
)  # fmt: skip
# Copulas for singular and plural subjects: affirmative, "not", contracted, "never".
COPULAS: Final = (
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
OPENERS: Final = ("Overall, ", "Honestly, ", "On the whole, ", "In short, ", "To be honest, ")
# Closing verdicts; some positive ones carry a negation ("I can't fault it") to trip word counts.
ENDINGS: Final = (
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
CONTRASTS: Final = (  # {a}: the clause the label does not follow; {b}: the one it does
    "{A}, but {b}.", "{A}; however, {b}.", "{A}. However, {b}.", "Although {a}, {b}.",
    "Even though {a}, {b}.", "While {a}, {b}.", "{B}, although {a}.", "{B}, even though {a}.",
    "{A}, yet {b}.", "{A}. That said, {b}.", "{A}, but overall {b}.",
)  # fmt: skip
# "could not have been more X" keeps X's polarity: a negation that does not flip. Long words
# only, since "more fast" is not English.
EMPHATIC: Final = (
    ("unhelpful", "disorganised", "frustrating", "confusing", "unprofessional", "disappointing",
     "stressful", "complicated", "dismissive", "careless"),
    ("helpful", "welcoming", "professional", "pleasant", "efficient", "reassuring", "attentive",
     "comfortable", "convenient", "organised"),
)  # fmt: skip
PAIRS: Final = ("{A} and {b}.", "{A}, and {b} too.", "{A}. {B} as well.", "{A}; {b}.")

VERDICT_NOUNS: Final = ("service", "experience", "visit", "place", "overall", "all round")


@dataclass(frozen=True, slots=True)
class Subject:
    text: str
    plural: bool
    person: bool


@dataclass(frozen=True, slots=True)
class Domain:
    """A client's world: ``words`` feed the many-label sentences, the rest the reviews."""

    words: tuple[str, ...]
    people: tuple[Subject, ...]
    things: tuple[Subject, ...]
    context: tuple[str, ...]


def _domain(words: tuple[str, ...], people: str, things: str, context: tuple[str, ...]) -> Domain:
    """Subjects are ``;``-separated; a leading ``+`` marks a plural ("+the nurses")."""

    def subjects(spec: str, person: bool) -> tuple[Subject, ...]:
        parts = [part.strip() for part in spec.split(";")]
        return tuple(Subject(p.lstrip("+"), p.startswith("+"), person) for p in parts)

    return Domain(words, subjects(people, True), subjects(things, False), context)


DOMAINS: Final = (
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
PLAIN_DOMAIN: Final = _domain(
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


# --------------------------------------------------------------------------------------------
# More labels: topic words among filler.

TOPICS: Final[dict[str, tuple[str, ...]]] = {
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

FILLER: Final = (
    "the", "a", "and", "was", "is", "it", "this", "that", "with", "for", "very", "really",
    "quite", "today", "again", "just", "our", "my", "we", "they", "had", "so", "about",
    "after", "before", "there", "then", "also", "still", "some", "of", "on", "in", "at",
)  # fmt: skip

SYLLABLES: Final = (
    "ka", "lo", "mi", "ru", "te", "va", "zo", "ne", "pi", "sa", "du", "fe", "go", "hu", "ji", "bo",
)  # fmt: skip
