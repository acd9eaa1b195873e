"""User-level DP at the coordinator: validation, Opacus's price, and the noise Flower adds.

The aggregation tests drive Flower's own DP wrapper through fedge's :class:`UserLevelDP` with
real Flower messages (no transport is involved in aggregation, so none is faked).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    FedAvg,
    Strategy,
)
from opacus.accountants import PRVAccountant, RDPAccountant

from client.federation.transaction import sample_level
from fedge import messages as m
from fedge.errors import FederationError
from policies import FederationPolicy, check_text
from policies.federation import FederationSpec
from server.federation.user_dp import (
    UNIT_WEIGHT,
    UserLevelDP,
    user_epsilon,
    user_noise_for_target,
)


def _policy(privacy: str, *, strategy: str = "fedavg", protection: str = "none") -> str:
    return f"""apiVersion: fedge/v1
kind: FederationPolicy
metadata: {{name: user-dp}}
spec:
  rounds: 4
  protection: {protection}
  clients: {{perRound: 4, minimum: 3}}
  aggregation: {{strategy: {strategy}}}
  privacy: {privacy}
"""


def _spec(privacy: str) -> FederationSpec:
    report = check_text(_policy(privacy))
    assert report.ok, [str(p) for p in report.problems]
    document = report.documents[0].document
    assert isinstance(document, FederationPolicy)
    return document.spec


def _problems(text: str) -> list[str]:
    return [f"{p.path}: {p.message}" for p in check_text(text).problems]


USER = "{level: user, user: {clippingNorm: 0.5, noiseMultiplier: 1.2, population: 10}}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_policy(USER, protection="secagg"), "level user cannot hold with protection secagg"),
        (_policy(USER, protection="he"), "level user cannot hold with protection he"),
        (_policy(USER, strategy="krum"), "level user needs strategy fedavg, not krum"),
        (_policy(USER, strategy="fedadam"), "level user needs strategy fedavg, not fedadam"),
        (_policy("{level: both}"), "level both needs privacy.user"),
        (
            _policy("{level: user, user: {noiseMultiplier: 1.0, targetEpsilon: 4}}"),
            "give exactly one of noiseMultiplier and targetEpsilon",
        ),
        (_policy("{level: user, user: {clippingNorm: 1}}"), "give exactly one of"),
        (
            _policy("{level: user, user: {noiseMultiplier: 1.0, population: 2}}"),
            "population (2) is below perRound (4)",
        ),
        (
            _policy("{level: sample, user: {noiseMultiplier: 1.0}}"),
            "privacy.user is set but level is sample",
        ),
    ],
)
def test_validation_refuses_what_cannot_hold(text: str, expected: str) -> None:
    problems = _problems(text)
    assert any(expected in p for p in problems), problems


def test_a_sound_user_level_policy_validates() -> None:
    assert _problems(_policy(USER)) == []
    assert _problems(_policy(USER.replace("level: user", "level: both"))) == []


@pytest.mark.parametrize(
    ("own", "coordinator", "dp_sgd"),
    [
        ("sample", "user", True),
        ("user", "user", False),
        ("both", "user", True),
        ("user", "both", True),
    ],
)
def test_a_holder_keeps_dp_sgd_unless_both_sides_say_user(
    own: str, coordinator: str, dp_sgd: bool
) -> None:
    def policy(level: str) -> FederationPolicy:
        doc = check_text(_policy(USER.replace("level: user", f"level: {level}"))).documents[0]
        assert isinstance(doc.document, FederationPolicy)
        return doc.document

    assert sample_level(policy(own), policy(coordinator)) is dp_sgd


def test_the_price_is_opacus_for_the_same_noise_rates_and_rounds() -> None:
    rounds = [(1.1, 0.4)] * 3 + [(1.1, 0.5)] * 2
    for accountant, kind in ((RDPAccountant(), "rdp"), (PRVAccountant(), "prv")):
        for noise, rate in rounds:
            accountant.step(noise_multiplier=noise, sample_rate=rate)
        expected = accountant.get_epsilon(delta=1e-5)
        assert user_epsilon(rounds, delta=1e-5, accountant=kind) == pytest.approx(expected)  # type: ignore[arg-type]
    assert user_epsilon([], delta=1e-5) == 0.0


def test_a_target_gives_the_noise_that_spends_it() -> None:
    noise = user_noise_for_target(target_epsilon=4.0, delta=1e-5, sample_rate=0.3, rounds=20)
    spent = user_epsilon([(noise, 0.3)] * 20, delta=1e-5)
    assert 3.8 < spent <= 4.0 + 1e-6
    spec = _spec("{level: user, user: {targetEpsilon: 4.0, population: 10}}")
    dp = UserLevelDP.for_spec(spec)
    assert dp is not None
    # rounds 4 at perRound 4 of 10 holders
    assert dp.noise_multiplier == pytest.approx(
        user_noise_for_target(target_epsilon=4.0, delta=1e-5, sample_rate=0.4, rounds=4)
    )
    for _ in range(4):
        dp.record(dp.admit(sampled=4, connected=10))
    assert dp.spent() <= 4.0 + 1e-6
    with pytest.raises(FederationError, match="past privacy.user.targetEpsilon 4"):
        dp.admit(sampled=4, connected=10)


def test_sample_level_needs_no_coordinator_mechanism() -> None:
    assert UserLevelDP.for_spec(_spec("{level: sample}")) is None


def _reply(update: dict[str, np.ndarray], *, examples: int) -> Message:
    content = RecordDict(
        {
            m.ARRAYS: ArrayRecord({k: Array(v) for k, v in update.items()}),
            m.METRICS: MetricRecord({m.NUM_EXAMPLES: examples, m.TRAIN_LOSS: 0.5}),
        }
    )
    # a reply as the Grid hands it over (no run is active here to stamp a new message's run id)
    metadata = Metadata(
        run_id=1,
        message_id="",
        src_node_id=2,
        dst_node_id=0,
        reply_to_message_id="sent",
        group_id="1",
        created_at=0.0,
        ttl=600.0,
        message_type="train",
    )
    reply: Message = Message(content, metadata=metadata)  # type: ignore[call-overload]
    return reply


def _clip(update: np.ndarray, norm: float) -> np.ndarray:
    return update * min(1.0, norm / float(np.linalg.norm(update)))


def test_the_noise_has_the_expected_scale_around_the_mean_of_clipped_updates() -> None:
    """Over repetitions, aggregate - (current + mean of clipped updates) is N(0, (zC/m)^2)."""
    noise, norm, minimum = 1.2, 0.5, 3
    spec = _spec(
        f"{{level: user, user: {{clippingNorm: {norm}, noiseMultiplier: {noise}, population: 10}}}}"
    )
    rng = np.random.default_rng(7)
    current = {"a": rng.normal(size=40).astype(np.float64), "b": rng.normal(size=10)}
    flat_current = np.concatenate([current["a"], current["b"]])
    # four updates: two far over the norm, two under it; unequal num-examples must not matter
    deltas = [rng.normal(size=50) * scale for scale in (2.0, 0.01, 3.0, 0.02)]
    expected_mean = np.mean([_clip(d, norm) for d in deltas], axis=0)
    residuals = []
    np.random.seed(11)  # Flower draws its noise from numpy's global generator
    for _ in range(200):
        dp = UserLevelDP.for_spec(spec)
        assert dp is not None
        strategy = dp.wrap(FedAvg(weighted_by_key=m.NUM_EXAMPLES))
        replies = [
            _reply(
                {"a": flat_current[:40] + d[:40], "b": flat_current[40:] + d[40:]},
                examples=examples,
            )
            for d, examples in zip(deltas, (10, 1000, 50, 5), strict=True)
        ]
        dp.prepare(current, replies)
        aggregated, _metrics = strategy.aggregate_train(1, replies)
        assert aggregated is not None
        out = aggregated.to_numpy_ndarrays()
        residuals.append(np.concatenate(out) - flat_current - expected_mean)
    sample = np.concatenate(residuals)
    sigma = noise * norm / minimum
    n = sample.size  # 10,000 draws: the sample std is within 3% of sigma with p > 0.997
    assert abs(float(np.mean(sample))) < 4 * sigma / math.sqrt(n)
    assert float(np.std(sample)) == pytest.approx(sigma, rel=0.03)
    # the clipping mattered: the unclipped mean lies far outside the noise's error
    unclipped = np.mean(deltas, axis=0)
    assert float(np.linalg.norm(unclipped - expected_mean)) > 10 * sigma / math.sqrt(200)


def test_the_history_survives_a_checkpoint() -> None:
    spec = _spec(USER)
    first = UserLevelDP.for_spec(spec)
    assert first is not None
    first.wrap(FedAvg())
    for _ in range(2):
        first.record(first.admit(sampled=4, connected=10))
    state = first.state()
    second = UserLevelDP.for_spec(spec)
    assert second is not None
    second.wrap(FedAvg())
    second.restore(state)
    assert second.record(0.4) == pytest.approx(user_epsilon([(1.2, 0.4)] * 3, delta=1e-5))
    with pytest.raises(FederationError, match="unreadable user-level DP state"):
        second.restore({"history": "nonsense"})


def _adaptive_norms(dp: UserLevelDP, strategy: Strategy, rounds: int) -> list[float]:
    """The clipping norm after each of ``rounds`` rounds in which every update is over it."""
    rng = np.random.default_rng(3)
    np.random.seed(5)  # Flower's noisy count of clipped updates
    norms = []
    for _ in range(rounds):
        replies = [_reply({"w": rng.normal(size=8) * 5}, examples=10) for _ in range(4)]
        dp.prepare({"w": np.zeros(8)}, replies)
        aggregated, _metrics = strategy.aggregate_train(1, replies)
        assert aggregated is not None
        norms.append(dp.clipping_norm)
    return norms


ADAPTIVE = (
    "{level: user, user: {clipping: adaptive, clippingNorm: 0.1, targetQuantile: 0.5, "
    "noiseMultiplier: 1.0, population: 10}}"
)


def test_adaptive_clipping_grows_a_norm_every_update_is_over() -> None:
    """Andrew et al.: with all updates clipped the norm grows; Flower 1.41's own rule shrinks it
    (it counts the clipped share), which user_dp.py corrects."""
    spec = _spec(ADAPTIVE)
    dp = UserLevelDP.for_spec(spec)
    assert dp is not None
    norms = _adaptive_norms(dp, dp.wrap(FedAvg()), rounds=10)
    assert norms[-1] > 0.1 * 1.5, norms
    assert dp.clipping_norm == norms[-1]
    flower = UserLevelDP.for_spec(spec)
    assert flower is not None
    flower.wrap(FedAvg())
    raw = DifferentialPrivacyServerSideAdaptiveClipping(
        FedAvg(weighted_by_key=UNIT_WEIGHT),
        noise_multiplier=1.0,
        num_sampled_clients=3,
        initial_clipping_norm=0.1,
        clipped_count_stddev=1.0,
    )
    flower.wrapper = raw
    assert _adaptive_norms(flower, raw, rounds=10)[-1] < 0.1, "Flower's rule was fixed upstream"
    resumed = UserLevelDP.for_spec(spec)
    assert resumed is not None
    resumed.wrap(FedAvg())
    resumed.restore(dp.state())
    assert resumed.clipping_norm == pytest.approx(norms[-1])
