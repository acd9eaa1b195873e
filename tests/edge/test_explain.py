"""Explanations at the edge: the occlusion math, the bounds, and ``POST /v1/explain`` on a real agent.

The math (edge_agent/explain.py's ``word_spans`` and ``occlusion``) is tested with MiniLM's real
tokenizer and hand-made predict functions whose answer is known; :class:`Explainer` with real ONNX
models (tests/support/edge_artifacts.py: a token-embedding mean and a linear layer, where hiding a
word through the attention mask is exactly removing it); the endpoint on the bounded HTTP server
(a gated explanation for the one-at-a-time rule) and through a real ``fedge-agent`` process behind
mosquitto, whose refusals are JSON 413/422 and which keeps serving after them. That the trained
demo model puts the sentiment word first is tests/server/test_explain.py's (it needs export).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from client.contract.model import builtin_minilm
from edge_agent.explain import (
    DeadlineError,
    Explainer,
    ExplainLimits,
    TooLongError,
    occlusion,
    word_spans,
)
from edge_agent.http_input import MAX_EXPLAIN_BODY, HttpInput
from edge_agent.inference import InferenceEngine
from edge_agent.serving import Classified, Explained, NoModelError, Source
from fedge.errors import EdgeError
from fedge.signing import KeyPair, generate_keypair
from tests.support import edge_agents, http_files, mqtt_broker
from tests.support.edge_agents import AgentProcess, deploy, on_version, start_agent
from tests.support.edge_artifacts import LABELS, make_artifact
from tests.support.http_files import FileServer
from tests.support.mqtt_broker import LOOPBACK, MosquittoBroker

agents = edge_agents.agents
files = http_files.files
broker_certs = mqtt_broker.broker_certs
mosquitto = mqtt_broker.mosquitto

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def minilm() -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(builtin_minilm() / "tokenizer.json"))
    tokenizer.no_padding()
    return tokenizer


def _words(text: str, tokenizer: Tokenizer) -> list[str]:
    encoding = tokenizer.encode(text)
    return [
        text[s.start : s.end]
        for s in word_spans(text, encoding.offsets, encoding.special_tokens_mask)
    ]


# -- the pure part --------------------------------------------------------------------------------


def test_words_are_what_a_reader_sees(minilm: Tokenizer) -> None:
    text = "The staff weren't unhelpful, honestly... a naïve café!"
    encoding = minilm.encode(text)
    spans = word_spans(text, encoding.offsets, encoding.special_tokens_mask)
    assert [text[s.start : s.end] for s in spans] == [
        "The",
        "staff",
        "weren't",  # three tokens (weren ' t), one word
        "unhelpful",  # word pieces un ##hel ##pf ##ul, one word
        ",",  # punctuation at the end of a run is a word of its own
        "honestly",
        "...",  # and a run of it is one word
        "a",
        "naïve",  # offsets are characters of the original text, accents and all
        "café",
        "!",
    ]
    covered = sorted(t for s in spans for t in s.tokens)
    specials = [i for i, m in enumerate(encoding.special_tokens_mask) if m]
    assert covered == [i for i in range(len(encoding.ids)) if i not in specials]
    assert _words("", minilm) == []
    assert _words("  spaced   out  ", minilm) == ["spaced", "out"]


def _bag_of_words(
    weights: dict[int, float], *, calls: list[np.ndarray] | None = None
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """p(positive) = sigmoid(sum of the weights of the visible tokens): a model whose reasons
    are known."""

    def predict(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if calls is not None:
            calls.append(mask.copy())
        score = np.array(
            [
                sum(weights.get(int(t), 0.0) for t, m in zip(row, row_mask, strict=True) if m)
                for row, row_mask in zip(ids, mask, strict=True)
            ]
        )
        positive = 1 / (1 + np.exp(-score))
        return np.stack([1 - positive, positive], axis=1)

    return predict


def test_the_word_that_drives_the_prediction_gets_the_largest_attribution(
    minilm: Tokenizer,
) -> None:
    text = "The porter was terrific but the ward was cramped."
    encoding = minilm.encode(text)
    spans = word_spans(text, encoding.offsets, encoding.special_tokens_mask)
    vocab = minilm.get_vocab()
    weights = {vocab["terrific"]: 3.0, vocab["cramped"]: -1.0, vocab["porter"]: 0.2}
    found = occlusion(encoding.ids, [s.tokens for s in spans], _bag_of_words(weights))
    words = [text[s.start : s.end] for s in spans]
    by_word = dict(zip(words, found.attributions, strict=True))
    assert found.label == 1 and found.calls == 1
    assert max(by_word, key=by_word.__getitem__) == "terrific"
    assert by_word["cramped"] < 0 < by_word["porter"] < by_word["terrific"]
    assert by_word["the"] == by_word["The"] == 0.0  # words the model ignores
    whole, without = 1 / (1 + np.exp(-2.2)), 1 / (1 + np.exp(0.8))
    assert found.probabilities[1] == pytest.approx(whole)
    assert by_word["terrific"] == pytest.approx(whole - without)


def test_variants_go_in_chunks_each_led_by_the_whole_text(minilm: Tokenizer) -> None:
    text = " ".join(["fine"] * 39 + ["awful"])
    encoding = minilm.encode(text)
    spans = word_spans(text, encoding.offsets, encoding.special_tokens_mask)
    vocab = minilm.get_vocab()
    weights = {vocab["awful"]: -2.0, vocab["fine"]: 0.01}
    batches: list[np.ndarray] = []
    chunked = occlusion(
        encoding.ids, [s.tokens for s in spans], _bag_of_words(weights, calls=batches), chunk=16
    )
    assert [len(b) for b in batches] == [17, 17, 9] and chunked.calls == 3
    for batch in batches:
        assert batch[0].all()  # the whole text first
        assert (batch[1:].sum(axis=1) == batch.shape[1] - 1).all()  # one word hidden per row
    whole = occlusion(encoding.ids, [s.tokens for s in spans], _bag_of_words(weights), chunk=64)
    assert whole.calls == 1
    assert chunked.attributions == pytest.approx(whole.attributions)
    assert chunked.label == 0 and int(np.argmax(chunked.attributions)) == 39


def test_the_deadline_stops_between_calls() -> None:
    now = [0.0]

    def clock() -> float:
        return now[0]

    def slow(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        now[0] += 1.0  # each call takes a second
        return np.tile([0.2, 0.8], (len(ids), 1))

    words = [[i] for i in range(1, 6)]
    with pytest.raises(DeadlineError, match=r"after 2 call\(s\) \(2 of 5 words\)"):
        occlusion(list(range(7)), words, slow, chunk=1, deadline=1.5, clock=clock)
    assert now[0] == 2.0  # it stopped before the third call
    done = occlusion(list(range(7)), words, slow, chunk=1, deadline=100.0, clock=clock)
    assert done.calls == 5 and done.attributions == (0.0,) * 5


def test_occlusion_refuses_what_it_cannot_measure() -> None:
    def bad(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.full((len(ids), 2), np.nan)

    with pytest.raises(EdgeError, match="non-finite"):
        occlusion([1, 2, 3], [[1]], bad)
    with pytest.raises(EdgeError, match="word 0 has no tokens"):
        occlusion([1, 2, 3], [[]], bad)
    with pytest.raises(EdgeError, match="non-empty"):
        occlusion([], [], bad)
    with pytest.raises(ValueError, match="unusable"):
        ExplainLimits(max_words=0)


# -- Explainer on real ONNX models -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32, no position embeddings, 128 tokens: hiding a word is exactly removing it."""
    folder = tmp_path_factory.mktemp("explain-tiny") / "model"
    make_artifact(folder, generate_keypair(), max_length=128, embedding_dim=16)
    return folder


def test_an_attribution_is_the_drop_when_the_word_is_gone(tiny: Path) -> None:
    engine = InferenceEngine(tiny, threads=1)
    explanation = Explainer(engine).explain("the acting was awful , really bad")
    whole = engine.classify(["the acting was awful , really bad"])[0]
    assert (explanation.label, explanation.calls) == (whole.label, 1)
    assert explanation.score == pytest.approx(whole.score, abs=1e-6)
    assert explanation.scores == pytest.approx(whole.scores, abs=1e-6)
    words = [w.word for w in explanation.words]
    assert words == ["the", "acting", "was", "awful", ",", "really", "bad"]
    for index, word in enumerate(explanation.words):
        rest = " ".join(words[:index] + words[index + 1 :])
        without = engine.classify([rest])[0].scores[explanation.label]
        assert word.attribution == pytest.approx(whole.score - without, abs=1e-5), word
    assert explanation.ms > 0
    assert explanation.word_items()[3] == {
        "word": "awful",
        "start": 15,
        "end": 20,
        "attribution": explanation.words[3].attribution,
    }


def test_the_explainer_refuses_over_long_texts(tiny: Path) -> None:
    explainer = Explainer(InferenceEngine(tiny, threads=1), limits=ExplainLimits(max_words=3))
    assert len(explainer.explain("a good film").words) == 3
    with pytest.raises(TooLongError, match="4 words, over the limit of 3 words") as words:
        explainer.explain("a good film indeed")
    assert (words.value.limit, words.value.unit) == (3, "words")
    with pytest.raises(TooLongError, match="longer than the 128 tokens") as tokens:
        Explainer(InferenceEngine(tiny, threads=1)).explain("good " * 127)
    assert (tokens.value.limit, tokens.value.unit) == (128, "tokens")
    assert len(Explainer(InferenceEngine(tiny, threads=1)).explain("good " * 64).words) == 64
    with pytest.raises(TooLongError, match="65 words, over the limit of 64"):
        Explainer(InferenceEngine(tiny, threads=1)).explain("good " * 65)


# -- the endpoint -------------------------------------------------------------------------------


class ServedExplainer:
    """The agent's side of the endpoint over a real model: classify, and explain through a real
    :class:`Explainer`, optionally held at ``gate`` (to find the endpoint busy)."""

    def __init__(self, engine: InferenceEngine, limits: ExplainLimits | None = None) -> None:
        self.explainer = Explainer(engine, limits=limits)
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def classify(
        self, texts: Sequence[str], *, source: Source, input_ids: Sequence[str]
    ) -> Classified:
        predictions = self.explainer.engine.classify(texts)
        return Classified("tiny-cls", "1.0.0", predictions, 0.0)

    def explain(self, text: str) -> Explained:
        self.entered.set()
        if self.gate is not None and not self.gate.wait(timeout=30):
            raise NoModelError("gate never opened")
        return Explained("tiny-cls", "1.0.0", self.explainer.explain(text))

    def status_document(self) -> bytes:
        return json.dumps({"current": {"name": "tiny-cls", "version": "1.0.0"}}).encode()


def _post(port: int, body: bytes, path: str = "/v1/explain") -> tuple[int, dict[str, Any], Any]:
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{port}{path}",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read()), answer.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def _explain(port: int, text: str) -> tuple[int, dict[str, Any], Any]:
    return _post(port, json.dumps({"text": text}).encode())


@pytest.fixture
def endpoint(tiny: Path) -> Iterator[Callable[..., tuple[int, ServedExplainer]]]:
    started: list[HttpInput] = []

    def start(limits: ExplainLimits | None = None) -> tuple[int, ServedExplainer]:
        served = ServedExplainer(InferenceEngine(tiny, threads=1), limits)
        http = HttpInput(served, port=0, explainer=served)
        started.append(http)
        http.start()
        return http.port, served

    yield start
    for http in started:
        http.stop()


def test_one_explanation_at_a_time_and_a_deadline(
    endpoint: Callable[..., tuple[int, ServedExplainer]],
) -> None:
    port, served = endpoint()
    served.gate = threading.Event()
    first: list[tuple[int, dict[str, Any], Any]] = []
    worker = threading.Thread(target=lambda: first.append(_explain(port, "a great film")))
    worker.start()
    try:
        assert served.entered.wait(10), "the first explanation never started"
        status, body, headers = _explain(port, "a bad film")
        assert (status, headers["Retry-After"]) == (503, "1")
        assert "another explanation is running" in body["error"]
        code, _doc, _ = _post(port, json.dumps({"text": "a fine film"}).encode(), "/v1/classify")
        assert code == 200, "classify is not held up by a running explanation"
    finally:
        served.gate.set()
        worker.join(30)
    assert first[0][0] == 200 and [w["word"] for w in first[0][1]["words"]] == [
        "a",
        "great",
        "film",
    ]
    served.gate = None
    assert _explain(port, "a great film")[0] == 200  # free again

    slow_port, _ = endpoint(ExplainLimits(chunk=1, deadline_s=1e-9))
    status, body, _ = _explain(slow_port, "a great film")
    assert status == 503 and "past its deadline" in body["error"], body
    assert _explain(slow_port, "great")[0] == 200  # one word: one call, nothing to stop


# -- a real agent ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> KeyPair:
    return generate_keypair()


def test_a_real_agent_explains_refuses_over_long_input_and_keeps_serving(
    mosquitto: Callable[..., MosquittoBroker],
    files: FileServer,
    agents: list[AgentProcess],
    key: KeyPair,
    tmp_path: Path,
) -> None:
    artifact = tmp_path / "v1"
    make_artifact(artifact, key, version="1.0.0", max_length=128, int8=True)
    broker = mosquitto([(edge_agents.FLEET, "dev-x")])
    agent = start_agent(agents, broker, tmp_path, "dev-x", key)
    port = agent.http_port()
    status, body, _ = _explain(port, "a great film")
    assert status == 503 and body == {"error": "no model is installed yet"}
    with broker.client(*broker.operator) as op:
        deploy(op, ["dev-x"], artifact, files, "dep-x")
        op.wait_reported(edge_agents.FLEET, "dev-x", on_version("1.0.0", "dep-x"))

    status, body, _ = _explain(port, "The acting was awful, the plot was great!")
    assert status == 200, body
    assert (body["artifact"], body["version"], body["method"]) == ("tiny-cls", "1.0.0", "occlusion")
    assert body["label"] in LABELS and body["score"] == body["scores"][body["label"]]
    text = "The acting was awful, the plot was great!"
    words = body["words"]
    assert [w["word"] for w in words] == [
        "The", "acting", "was", "awful", ",", "the", "plot", "was", "great", "!",
    ]  # fmt: skip
    assert all(text[w["start"] : w["end"]] == w["word"] for w in words)
    assert all(isinstance(w["attribution"], float) for w in words) and body["ms"] > 0

    refusals = [
        (_explain(port, " ".join(["good"] * 65)), 422, "65 words, over the limit of 64 words"),
        (_explain(port, "good " * 130), 422, "longer than the 128 tokens"),
        (
            _post(port, json.dumps({"text": "a" * (MAX_EXPLAIN_BODY + 1)}).encode()),
            413,
            f"over the {MAX_EXPLAIN_BODY}-byte limit of an explanation",
        ),
        (_post(port, b'{"texts": ["a", "b"]}'), 400, 'expected {"text": "..."}'),
    ]
    for (status, body, _headers), code, message in refusals:
        assert status == code and message in body["error"], (code, body)
        assert set(body) == {"error"}
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/v1/health", timeout=10) as health:
        assert health.status == 200 and json.loads(health.read())["status"] == "ok"
    again, body, _ = _explain(port, "a great film")
    assert again == 200 and len(body["words"]) == 3
    assert agent.classify("a great film")[0] == 200
    assert agent.alive
    assert "Traceback" not in agent.tail(100_000)
