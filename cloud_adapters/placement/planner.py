"""The placement planner: policy + inventory + manifest (+ which targets are down) -> a plan.

Pure and deterministic: it reads values and returns a value, touches no network, and the same
inputs give the same plan whatever order the inventory lists its targets in (ties are broken by
target name). Every target gets a decision with a reason:

- ``replica``: it holds a replica;
- ``spare``: allowed but not needed (``replicas.max`` reached, or spread rules), a failover
  candidate in this order;
- ``rejected``: it may not hold one: provider not allowed, region not allowed, residency not
  allowed, over the cost ceiling, or unhealthy (down).

Order of preference: ``ordered`` takes the preference list first, then every other allowed target
cheapest first; ``anyOf`` takes cheapest first (storage price, then egress price, then name).
Failover is that order with the down targets skipped, so a down target's replica goes to the next
allowed target and comes back when it returns.

Hard rules (provider, region, residency, health) hold under either enforcement. The soft ones
(``replicas.min``, ``spread.minProviders``, the cost ceiling) refuse the plan under ``Enforce``
and become warnings under ``Audit``. ``violations`` are judged with the health given;
``policy_violations`` with every target healthy, which is what makes a plan refused before any
upload, as opposed to short of replicas because some target is down.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from fedge.manifest import Manifest
from policies.documents import CloudInventory, PlacementPolicy
from policies.inventory import Target

__all__ = ["GIB", "Decision", "Plan", "TargetDecision", "plan_placement", "replica_cost"]

GIB = 1024**3
Decision = Literal["replica", "spare", "rejected"]


@dataclass(frozen=True, slots=True)
class TargetDecision:
    target: str
    provider: str
    region: str
    residency: str
    decision: Decision
    reason: str
    monthly_usd: float  # what a replica of this artifact costs there per month


@dataclass(frozen=True, slots=True)
class Plan:
    policy: str
    artifact: str
    version: str
    size_bytes: int
    enforcement: str
    selected: tuple[str, ...]  # targets that get a replica, best first
    preferred: tuple[str, ...]  # what would be selected with every target healthy
    decisions: tuple[TargetDecision, ...]  # one per inventory target, in preference order
    monthly_usd: float  # estimated storage cost of the selected replicas
    violations: tuple[str, ...]  # soft rules broken with the health given
    policy_violations: tuple[str, ...]  # soft rules broken even with every target healthy
    warnings: tuple[str, ...]
    down: tuple[tuple[str, str], ...] = ()  # (target, why) taken as unhealthy

    @property
    def refused(self) -> bool:
        """The policy itself cannot be met by this inventory (Enforce): upload nothing."""
        return self.enforcement == "Enforce" and bool(self.policy_violations)

    @property
    def short(self) -> bool:
        """Fewer replicas than the policy asks, because targets are down."""
        return self.enforcement == "Enforce" and bool(self.violations)

    @property
    def degraded(self) -> bool:
        """Failover is in effect: the replicas are not where the policy prefers them."""
        return self.selected != self.preferred

    def decision(self, target: str) -> TargetDecision:
        for item in self.decisions:
            if item.target == target:
                return item
        raise KeyError(target)


def replica_cost(target: Target, size_bytes: int) -> float:
    return size_bytes / GIB * target.pricing.storage_per_gb_month


def _static_reason(policy: PlacementPolicy, target: Target) -> str | None:
    spec = policy.spec
    if target.provider not in spec.providers:
        return f"provider {target.provider} not allowed (allowed: {', '.join(spec.providers)})"
    if spec.regions and target.region not in spec.regions:
        return f"region {target.region} not allowed (allowed: {', '.join(spec.regions)})"
    if spec.residency and target.residency not in spec.residency:
        return f"residency {target.residency} not allowed (allowed: {', '.join(spec.residency)})"
    return None


def _price_key(target: Target) -> tuple[float, float, str]:
    return (target.pricing.storage_per_gb_month, target.pricing.egress_per_gb, target.name)


def _order(policy: PlacementPolicy, eligible: Sequence[Target]) -> list[Target]:
    by_price = sorted(eligible, key=_price_key)
    if policy.spec.strategy.type != "ordered":
        return by_price
    rank = {name: index for index, name in enumerate(policy.spec.strategy.preference)}
    listed = sorted((t for t in eligible if t.name in rank), key=lambda t: rank[t.name])
    return listed + [t for t in by_price if t.name not in rank]


def _why_chosen(policy: PlacementPolicy, target: Target, rank: int) -> str:
    strategy = policy.spec.strategy
    if strategy.type == "ordered" and target.name in strategy.preference:
        return f"replica {rank}: preference {strategy.preference.index(target.name) + 1}"
    if strategy.type == "ordered":
        return f"replica {rank}: next allowed, cheapest first (not in the preference list)"
    return f"replica {rank}: cheapest allowed (anyOf)"


@dataclass(frozen=True, slots=True)
class _Selection:
    chosen: tuple[str, ...]
    decisions: dict[str, tuple[Decision, str]]
    cost: float
    violations: tuple[str, ...]
    warnings: tuple[str, ...]


def _select(
    policy: PlacementPolicy,
    order: Sequence[Target],
    size_bytes: int,
    down: Mapping[str, str],
) -> _Selection:
    spec = policy.spec
    audit = spec.enforcement == "Audit"
    ceiling = spec.cost_ceiling.monthly_usd if spec.cost_ceiling is not None else None
    chosen: list[Target] = []
    decisions: dict[str, tuple[Decision, str]] = {}
    warnings: list[str] = []
    per_provider: dict[str, int] = {}
    total = 0.0
    for target in order:
        providers = {t.provider for t in chosen}
        cost = replica_cost(target, size_bytes)
        if target.name in down:
            decisions[target.name] = ("rejected", f"unhealthy: {down[target.name]}")
            continue
        if len(chosen) >= spec.replicas.max:
            decisions[target.name] = ("spare", f"not needed: replicas.max ({spec.replicas.max})")
            continue
        cap = spec.spread.max_per_provider
        if cap is not None and per_provider.get(target.provider, 0) >= cap:
            decisions[target.name] = (
                "spare",
                f"spread: {cap} replica(s) on {target.provider} already (maxPerProvider)",
            )
            continue
        still_needed = spec.spread.min_providers - len(providers | {target.provider})
        if still_needed > spec.replicas.max - len(chosen) - 1:
            decisions[target.name] = (
                "spare",
                "spread: slot kept for another provider "
                f"(minProviders {spec.spread.min_providers})",
            )
            continue
        if ceiling is not None and total + cost > ceiling + 1e-12:
            message = (
                f"over the cost ceiling: ${total + cost:.4f}/month with it, ceiling ${ceiling:.4f}"
            )
            if not audit:
                decisions[target.name] = ("rejected", message)
                continue
            warnings.append(f"{target.name}: {message} (Audit: placed anyway)")
        chosen.append(target)
        per_provider[target.provider] = per_provider.get(target.provider, 0) + 1
        total += cost
        decisions[target.name] = ("replica", _why_chosen(policy, target, len(chosen)))
    violations: list[str] = []
    if len(chosen) < spec.replicas.min:
        violations.append(
            f"only {len(chosen)} target(s) can hold a replica, replicas.min is {spec.replicas.min}"
        )
    spanned = len({t.provider for t in chosen})
    if chosen and spanned < spec.spread.min_providers:
        violations.append(
            f"replicas span {spanned} provider(s), spread.minProviders is "
            f"{spec.spread.min_providers}"
        )
    if audit:
        warnings.extend(f"{v} (Audit: placed anyway)" for v in violations)
    return _Selection(
        tuple(t.name for t in chosen), decisions, total, tuple(violations), tuple(warnings)
    )


def plan_placement(
    policy: PlacementPolicy,
    inventory: CloudInventory,
    manifest: Manifest,
    *,
    down: Mapping[str, str] | None = None,
    size_bytes: int | None = None,
) -> Plan:
    """Plan where ``manifest``'s artifact goes; ``down`` maps unhealthy targets to the reason."""
    spec = policy.spec
    size = manifest.total_size if size_bytes is None else size_bytes
    unhealthy = dict(down or {})
    targets = sorted(inventory.spec.targets, key=lambda t: t.name)
    labels = dict(manifest.labels)
    if not spec.artifacts.matches(labels):
        wanted = ", ".join(f"{k}={v}" for k, v in sorted(spec.artifacts.match_labels.items()))
        reason = f"policy {policy.metadata.name} does not select this artifact (needs {wanted})"
        return Plan(
            policy=policy.metadata.name,
            artifact=manifest.name,
            version=manifest.version,
            size_bytes=size,
            enforcement="Enforce",
            selected=(),
            preferred=(),
            decisions=tuple(
                TargetDecision(
                    t.name,
                    t.provider,
                    t.region,
                    t.residency,
                    "rejected",
                    reason,
                    replica_cost(t, size),
                )
                for t in targets
            ),
            monthly_usd=0.0,
            violations=(reason,),
            policy_violations=(reason,),
            warnings=(),
        )
    rejected: dict[str, str] = {}
    eligible: list[Target] = []
    for target in targets:
        why_not = _static_reason(policy, target)
        if why_not is None:
            eligible.append(target)
        else:
            rejected[target.name] = why_not
    order = _order(policy, eligible)
    ideal = _select(policy, order, size, {})
    actual = _select(policy, order, size, unhealthy) if unhealthy else ideal
    if unhealthy and not spec.failover.enabled:
        # Without failover a down target keeps its place: the plan is short instead of moved.
        kept = tuple(name for name in ideal.chosen if name not in unhealthy)
        missing = [name for name in ideal.chosen if name in unhealthy]
        decisions = dict(ideal.decisions)
        for name in missing:
            decisions[name] = ("rejected", f"unhealthy: {unhealthy[name]} (failover disabled)")
        violations = ideal.violations + tuple(
            f"{name} is down and failover is disabled" for name in missing
        )
        actual = _Selection(kept, decisions, ideal.cost, violations, ideal.warnings)
    ranked = list(order) + sorted((t for t in targets if t.name in rejected), key=lambda t: t.name)
    decisions_out = []
    for target in ranked:
        if target.name in rejected:
            decision: Decision = "rejected"
            because = rejected[target.name]
        else:
            decision, because = actual.decisions[target.name]
        decisions_out.append(
            TargetDecision(
                target=target.name,
                provider=target.provider,
                region=target.region,
                residency=target.residency,
                decision=decision,
                reason=because,
                monthly_usd=replica_cost(target, size),
            )
        )
    by_name = {t.name: t for t in targets}
    return Plan(
        policy=policy.metadata.name,
        artifact=manifest.name,
        version=manifest.version,
        size_bytes=size,
        enforcement=spec.enforcement,
        selected=actual.chosen,
        preferred=ideal.chosen,
        decisions=tuple(decisions_out),
        monthly_usd=sum(replica_cost(by_name[name], size) for name in actual.chosen),
        violations=actual.violations,
        policy_violations=ideal.violations,
        warnings=actual.warnings,
        down=tuple(sorted(unhealthy.items())),
    )
