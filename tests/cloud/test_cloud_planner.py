"""The placement planner as a pure function: decisions, reasons, cost, failover, determinism."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_adapters.placement.planner import GIB, plan_placement
from fedge.manifest import FileEntry, Manifest
from policies.documents import CloudInventory, PlacementPolicy
from tests.support.cloud_servers import inventory_document, placement_document


def manifest(size: int = GIB, labels: dict[str, str] | None = None) -> Manifest:
    return Manifest.create(
        name="sentiment",
        version="1.0",
        format="onnx-int8",
        files=[FileEntry("model.onnx", "0" * 64, size)],
        labels={"app": "sentiment"} if labels is None else labels,
        created="2026-01-01T00:00:00Z",
    )


def target(name: str, provider: str, residency: str, price: float, **more: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "provider": provider,
        "region": more.pop("region", f"{residency}-1"),
        "residency": residency,
        "pricing": {"storagePerGBMonth": price},
    }
    if provider == "local":
        spec["path"] = f"/srv/{name}"
    else:
        spec["container"] = "artifacts"
        spec["credentials"] = {"keyRef": {"env": "K"}, "secretRef": {"env": "S"}}
    spec.update(more)
    return spec


TARGETS = [
    target("eu-s3", "s3", "eu", 0.023),
    target("eu-azure", "azure-blob", "eu", 0.020),
    target("eu-local", "local", "eu", 0.010),
    target("us-s3", "s3", "us", 0.005),
    target("ch-s3", "s3", "ch", 0.030),
]


def inventory(targets: list[dict[str, Any]] = TARGETS) -> CloudInventory:
    return CloudInventory.model_validate(inventory_document(targets))


def policy(**spec: Any) -> PlacementPolicy:
    base: dict[str, Any] = {
        "artifacts": {"matchLabels": {"app": "sentiment"}},
        "residency": ["eu"],
        "replicas": {"min": 2, "max": 2},
        "strategy": {"type": "ordered", "preference": ["eu-s3", "eu-azure"]},
    }
    base.update(spec)
    return PlacementPolicy.model_validate(placement_document(base))


def test_every_rejected_target_gets_its_reason_and_the_cost_is_estimated() -> None:
    plan = plan_placement(
        policy(providers=["s3", "azure-blob"], regions=["eu-1", "us-1"]), inventory(), manifest()
    )
    assert plan.selected == ("eu-s3", "eu-azure")
    reasons = {d.target: (d.decision, d.reason) for d in plan.decisions}
    assert reasons["eu-local"] == (
        "rejected",
        "provider local not allowed (allowed: s3, azure-blob)",
    )
    assert reasons["ch-s3"][1] == "region ch-1 not allowed (allowed: eu-1, us-1)"
    assert reasons["us-s3"][1] == "residency us not allowed (allowed: eu)"
    assert plan.monthly_usd == pytest.approx(0.023 + 0.020)
    assert [d.target for d in plan.decisions][:2] == ["eu-s3", "eu-azure"]
    assert not plan.refused and not plan.degraded


def test_any_of_takes_the_cheapest_allowed_targets() -> None:
    plan = plan_placement(policy(strategy={"type": "anyOf"}), inventory(), manifest())
    assert plan.selected == ("eu-local", "eu-azure")
    assert plan.decision("eu-s3").decision == "spare"
    assert "replicas.max (2)" in plan.decision("eu-s3").reason


def test_a_target_over_the_cost_ceiling_is_rejected_with_the_numbers() -> None:
    plan = plan_placement(
        policy(replicas={"min": 1, "max": 2}, costCeiling={"monthlyUSD": 0.03}),
        inventory(),
        manifest(),
    )
    assert plan.selected == ("eu-s3",)
    rejected = plan.decision("eu-azure")
    assert rejected.decision == "rejected"
    assert rejected.reason == "over the cost ceiling: $0.0430/month with it, ceiling $0.0300"
    assert plan.decision("eu-local").reason.startswith("over the cost ceiling: $0.0330")
    assert plan.monthly_usd == pytest.approx(0.023)


def test_an_unsatisfiable_policy_is_refused_under_enforce_and_warned_under_audit() -> None:
    strict = plan_placement(policy(replicas={"min": 4, "max": 4}), inventory(), manifest())
    assert strict.refused
    assert strict.policy_violations == ("only 3 target(s) can hold a replica, replicas.min is 4",)
    lenient = plan_placement(
        policy(replicas={"min": 4, "max": 4}, enforcement="Audit"), inventory(), manifest()
    )
    assert not lenient.refused
    assert lenient.selected == ("eu-s3", "eu-azure", "eu-local")
    assert any("Audit: placed anyway" in w for w in lenient.warnings)
    # Audit never bends the hard rules: residency still holds.
    assert "us-s3" not in lenient.selected and "ch-s3" not in lenient.selected


def test_an_artifact_the_policy_does_not_select_is_refused() -> None:
    plan = plan_placement(policy(), inventory(), manifest(labels={"app": "other"}))
    assert plan.refused and plan.selected == ()
    assert "does not select this artifact (needs app=sentiment)" in plan.policy_violations[0]


def test_a_down_target_hands_its_replica_to_the_next_allowed_one() -> None:
    plan = plan_placement(policy(), inventory(), manifest(), down={"eu-s3": "timed out"})
    assert plan.preferred == ("eu-s3", "eu-azure")
    assert plan.selected == ("eu-azure", "eu-local")
    assert plan.degraded and not plan.short and not plan.refused
    assert plan.decision("eu-s3").reason == "unhealthy: timed out"


def test_without_failover_a_down_target_leaves_the_plan_short() -> None:
    plan = plan_placement(
        policy(failover={"enabled": False}), inventory(), manifest(), down={"eu-s3": "timed out"}
    )
    assert plan.selected == ("eu-azure",)
    assert plan.short and not plan.refused
    assert "eu-s3 is down and failover is disabled" in plan.violations


def test_spread_keeps_room_for_another_provider_and_caps_each_provider() -> None:
    targets = [
        target("a-s3", "s3", "eu", 0.01),
        target("b-s3", "s3", "eu", 0.02),
        target("c-azure", "azure-blob", "eu", 0.05),
    ]
    plan = plan_placement(
        policy(strategy={"type": "anyOf"}, spread={"minProviders": 2}),
        inventory(targets),
        manifest(),
    )
    assert plan.selected == ("a-s3", "c-azure")
    assert "minProviders 2" in plan.decision("b-s3").reason
    capped = plan_placement(
        policy(
            strategy={"type": "anyOf"},
            replicas={"min": 1, "max": 3},
            spread={"maxPerProvider": 1},
        ),
        inventory(targets),
        manifest(),
    )
    assert capped.selected == ("a-s3", "c-azure")
    assert "maxPerProvider" in capped.decision("b-s3").reason


@settings(max_examples=60, deadline=None)
@given(
    residencies=st.lists(st.sampled_from(["eu", "us", "ch"]), min_size=1, max_size=8),
    prices=st.lists(st.floats(0, 1), min_size=8, max_size=8),
    down=st.sets(st.integers(0, 7)),
    seed=st.integers(0, 1000),
)
def test_residency_always_holds_and_the_plan_does_not_depend_on_inventory_order(
    residencies: list[str], prices: list[float], down: set[int], seed: int
) -> None:
    targets = [
        target(f"t{i}", ["s3", "azure-blob", "local"][i % 3], where, prices[i])
        for i, where in enumerate(residencies)
    ]
    shuffled = list(targets)
    random.Random(seed).shuffle(shuffled)
    rules = policy(strategy={"type": "anyOf"}, replicas={"min": 1, "max": 3}, enforcement="Audit")
    unhealthy = {f"t{i}": "down" for i in down}
    first = plan_placement(rules, inventory(targets), manifest(), down=unhealthy)
    second = plan_placement(rules, inventory(shuffled), manifest(), down=unhealthy)
    assert first == second
    chosen = {t["name"]: t["residency"] for t in targets if t["name"] in first.selected}
    assert set(chosen.values()) <= {"eu"}
    assert not set(first.selected) & set(unhealthy)
    assert len(first.decisions) == len(targets)
