"""Why the edge model answered what it did: per-word attributions by occlusion, on the device.

For a text whose predicted class is ``label``, the attribution of word ``i`` is::

    p(label | text) - p(label | text with word i hidden)

positive where the word pushed the model towards its answer, negative where it held it back.

Why occlusion: it needs only forward passes of the model the device already runs, the int8 ONNX
model, so an explanation describes the model that answered, not an fp32 cousin of it (an int8
graph has no gradients to integrate). It costs one inference per word, batched.
``bench/explain_agreement.py`` measures how well it agrees with integrated gradients on the fp32
torch model.

How a word is hidden: its tokens get attention mask 0. It is removal, in effect (no token attends
to the word, and the mean pool the head reads leaves it out), done without changing the sequence:
every other word keeps its position, and all the variants of a text go to ONNX Runtime as one
dense batch of one length. Replacing the word with ``[MASK]`` or ``[UNK]`` was measured and
rejected: a replacement is itself a token the model reads (all-MiniLM-L6-v2 was fine-tuned as a
sentence encoder, and ``[MASK]`` reads to it as content). On 40 held-out demo sentences, function
words (the, was, and, ...) that the answer should not hang on moved it by 0.048 on average as
``[MASK]``, 0.026 as ``[UNK]`` and 0.023 hidden; on an over-confident head trained on skewed data,
``[MASK]`` in place of any word moved some predictions by 0.58. Hiding also needs no special
token in the vocabulary. A model without an ``attention_mask`` input cannot be explained this way
and is refused.

A word is what a reader calls one (the console and the report shade words): the tokens of a
whitespace-free run of text (``don't`` and ``naïve`` are one word each, however many pieces the
tokenizer cut them into), with punctuation at either end of the run split off as a word of its own
(``great!`` is ``great`` and ``!``), so that a sentiment word's attribution is not shared with a
full stop. Each word carries its character offsets into the text.

Bounds, because a device is small and an explanation costs one inference per word
(:class:`ExplainLimits`):

- at most :data:`MAX_WORDS` (64) words, and no more tokens than the model reads (``max_length``
  in ``inference.json``): over either, the text is refused (:class:`TooLongError`), never
  explained in part, since a truncated tail would show as words that do not matter;
- at most :data:`CHUNK` (16) occluded variants per ONNX Runtime call, each call with the whole text
  as its first row: dynamic int8 quantization scales activations per batch, so each variant is
  compared with the whole text quantized in the same batch (64 words: 4 calls of 17 rows);
- a deadline of :data:`DEADLINE_S` (5 s) per request, checked before each call after the first;
  past it the request fails (:class:`DeadlineError`), so one request overruns by at most one call.

The pure part (:func:`word_spans`, :func:`occlusion`) takes token offsets and a predict function
and is tested with a hand-made one; :class:`Explainer` is the thin boundary to the tokenizer and
ONNX Runtime (:class:`~edge_agent.inference.InferenceEngine`). The agent's ``POST /v1/explain``
(edge_agent/http_input.py) and the operator's ``fedge explain`` (server/cli/explain.py) both run
:class:`Explainer`, so the two cannot differ.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from edge_agent.inference import InferenceEngine
from fedge.errors import EdgeError

__all__ = [
    "CHUNK",
    "DEADLINE_S",
    "MAX_WORDS",
    "METHOD",
    "DeadlineError",
    "ExplainLimits",
    "Explainer",
    "Explanation",
    "Occlusion",
    "Predict",
    "Span",
    "TooLongError",
    "WordAttribution",
    "occlusion",
    "word_spans",
]

MAX_WORDS: Final = 64
CHUNK: Final = 16
DEADLINE_S: Final = 5.0
METHOD: Final = "occlusion"

IntArray = npt.NDArray[np.int64]
Predict = Callable[[IntArray, IntArray], npt.NDArray[Any]]
"""``(input_ids, attention_mask)``, both ``[rows, seq]`` -> probabilities ``[rows, labels]``."""


class TooLongError(EdgeError):
    """The text has more words or tokens than an explanation covers; ``limit`` is the bound and
    ``unit`` what it counts (``words`` or ``tokens``). The message names no field: the caller
    prefixes the one it read the text from."""

    def __init__(self, message: str, *, limit: int, unit: str) -> None:
        self.limit = limit
        self.unit = unit
        super().__init__(message)


class DeadlineError(EdgeError):
    """The explanation did not finish within the request's deadline."""


@dataclass(frozen=True, slots=True)
class ExplainLimits:
    """The bounds of one explanation (module docstring); the defaults suit a device."""

    max_words: int = MAX_WORDS
    chunk: int = CHUNK
    deadline_s: float = DEADLINE_S

    def __post_init__(self) -> None:
        if self.max_words < 1 or self.chunk < 1 or not self.deadline_s > 0:
            raise ValueError(f"unusable explanation limits: {self}")


@dataclass(frozen=True, slots=True)
class Span:
    """One word: its characters ``[start, end)`` in the text and its token positions."""

    start: int
    end: int
    tokens: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class WordAttribution:
    word: str
    start: int
    end: int
    attribution: float


@dataclass(frozen=True, slots=True)
class Occlusion:
    """What :func:`occlusion` measured: the class predicted for the whole text (an index), its
    probabilities, one attribution per word, and how many predict calls it took."""

    label: int
    probabilities: tuple[float, ...]
    attributions: tuple[float, ...]
    calls: int


@dataclass(frozen=True, slots=True)
class Explanation:
    label: str
    score: float
    scores: dict[str, float]
    words: tuple[WordAttribution, ...]
    ms: float
    calls: int

    def word_items(self) -> list[dict[str, Any]]:
        """The words as JSON objects (the agent's answer, ``fedge explain -o json``)."""
        return [
            {"word": w.word, "start": w.start, "end": w.end, "attribution": w.attribution}
            for w in self.words
        ]

    def top(self) -> WordAttribution | None:
        """The word with the largest attribution (the first of equals), if there is a word."""
        return max(self.words, key=lambda w: w.attribution, default=None)


# -- the pure part ------------------------------------------------------------------------------


def _punctuation(text: str, start: int, end: int) -> bool:
    piece = text[start:end]
    return bool(piece) and not any(char.isalnum() for char in piece)


def word_spans(text: str, offsets: Sequence[tuple[int, int]], special: Sequence[int]) -> list[Span]:
    """Group a tokenizer's tokens into the words a reader sees (module docstring).

    ``offsets`` are each token's ``(start, end)`` characters in ``text`` and ``special`` marks the
    tokens the tokenizer added (``[CLS]``, ``[SEP]``), which belong to no word.
    """
    runs: list[list[int]] = []
    run_end = -1
    for index, ((start, end), added) in enumerate(zip(offsets, special, strict=True)):
        if added:
            continue
        if runs and start <= run_end:  # touches (or overlaps) the run so far: no space between
            runs[-1].append(index)
            run_end = max(run_end, end)
        else:
            runs.append([index])
            run_end = end
    spans: list[Span] = []
    for run in runs:
        marks = [_punctuation(text, *offsets[token]) for token in run]
        if all(marks):
            pieces = [run]
        else:
            first = marks.index(False)
            last = len(marks) - marks[::-1].index(False)
            pieces = [run[:first], run[first:last], run[last:]]
        for piece in pieces:
            if piece:
                start = offsets[piece[0]][0]
                end = max(offsets[token][1] for token in piece)
                spans.append(Span(start=start, end=end, tokens=tuple(piece)))
    return spans


def occlusion(
    input_ids: Sequence[int],
    words: Sequence[Sequence[int]],
    predict: Predict,
    *,
    attention_mask: Sequence[int] | None = None,
    chunk: int = CHUNK,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Occlusion:
    """Attribution of each word (its token positions in ``words``) by hiding it (attention mask
    0), in calls of at most ``chunk`` variants, each call led by the whole text.

    The label is the one the first call's whole-text row predicts; each later call measures its
    variants against its own whole-text row (see the module docstring on int8 batches).
    ``deadline`` (a ``clock()`` value) is checked before every call but the first.
    """
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise EdgeError("occlusion needs a non-empty sequence of token ids")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int64)
    if mask.shape != ids.shape:
        raise EdgeError("the attention mask must be as long as the token ids")
    hidden = np.repeat(mask[None, :], len(words), axis=0)
    for row, tokens in enumerate(words):
        if not tokens:
            raise EdgeError(f"word {row} has no tokens to hide")
        hidden[row, list(tokens)] = 0
    label = -1  # decided by the first call
    probabilities: tuple[float, ...] = ()
    attributions: list[float] = []
    calls = 0
    for begin in range(0, max(1, len(words)), chunk):
        if deadline is not None and calls and clock() > deadline:
            raise DeadlineError(
                f"the explanation ran past its deadline after {calls} call(s) "
                f"({len(attributions)} of {len(words)} words)"
            )
        masks = np.concatenate([mask[None, :], hidden[begin : begin + chunk]])
        rows = np.asarray(predict(np.repeat(ids[None, :], len(masks), axis=0), masks))
        calls += 1
        if rows.ndim != 2 or rows.shape[0] != len(masks) or rows.shape[1] < 1:
            raise EdgeError(f"predict returned shape {list(rows.shape)} for {len(masks)} rows")
        if not np.all(np.isfinite(rows)):
            raise EdgeError("predict returned non-finite probabilities")
        if label < 0:
            label = int(np.argmax(rows[0]))
            probabilities = tuple(float(value) for value in rows[0])
        reference = float(rows[0, label])
        attributions.extend(reference - float(value) for value in rows[1:, label])
    return Occlusion(
        label=label, probabilities=probabilities, attributions=tuple(attributions), calls=calls
    )


# -- the boundary: tokenizer and ONNX Runtime ------------------------------------------------


class Explainer:
    """Explanations from one loaded model (:class:`InferenceEngine`); thread-safe as it is."""

    def __init__(self, engine: InferenceEngine, *, limits: ExplainLimits | None = None) -> None:
        if "attention_mask" not in engine.inputs:
            raise EdgeError(
                "the model takes no attention_mask input, which occlusion hides words with"
            )
        self.engine = engine
        self.limits = limits or ExplainLimits()

    @classmethod
    def open(
        cls,
        directory: str | Path,
        *,
        threads: int | None = None,
        limits: ExplainLimits | None = None,
    ) -> Explainer:
        """Load a model folder. The caller verifies the artifact first (fedge explain does)."""
        return cls(InferenceEngine(directory, threads=threads), limits=limits)

    def explain(self, text: str, *, clock: Callable[[], float] = time.monotonic) -> Explanation:
        """Per-word attributions for the class the model predicts for ``text``.

        :class:`TooLongError` past the word or token limit, :class:`DeadlineError` past the
        deadline, :class:`EdgeError` if the model fails.
        """
        started = clock()
        limits = self.limits
        encoding = self.engine.tokenizer.encode(text)
        max_length = self.engine.config.max_length
        if encoding.overflowing:
            raise TooLongError(
                f"longer than the {max_length} tokens the model reads (max_length); "
                "an explanation covers whole texts only",
                limit=max_length,
                unit="tokens",
            )
        spans = word_spans(text, encoding.offsets, encoding.special_tokens_mask)
        if len(spans) > limits.max_words:
            raise TooLongError(
                f"{len(spans)} words, over the limit of {limits.max_words} words per explanation",
                limit=limits.max_words,
                unit="words",
            )
        types = np.asarray(encoding.type_ids, dtype=np.int64)

        def predict(ids: IntArray, mask: IntArray) -> npt.NDArray[Any]:
            return self.engine.probabilities(ids, mask, np.repeat(types[None, :], len(ids), 0))

        found = occlusion(
            encoding.ids,
            [span.tokens for span in spans],
            predict,
            attention_mask=encoding.attention_mask,
            chunk=limits.chunk,
            deadline=started + limits.deadline_s,
            clock=clock,
        )
        labels = self.engine.labels
        words = tuple(
            WordAttribution(
                word=text[span.start : span.end],
                start=span.start,
                end=span.end,
                attribution=round(value, 6),
            )
            for span, value in zip(spans, found.attributions, strict=True)
        )
        return Explanation(
            label=labels[found.label],
            score=found.probabilities[found.label],
            scores=dict(zip(labels, found.probabilities, strict=True)),
            words=words,
            ms=(clock() - started) * 1000,
            calls=found.calls,
        )
