"""Rules that span several fields or documents, as pure functions over validated documents.

Field-level checks (types, ranges, unknown fields) live in the pydantic models; what is here needs
two or more values at once. Every rule yields findings instead of raising, so that one run reports
every problem.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from policies.documents import (
    AgentConfig,
    CloudInventory,
    FederationPolicy,
    PlacementPolicy,
    PolicyDocument,
)
from policies.federation import ROBUST_STRATEGIES

__all__ = ["Finding", "check_document", "check_set", "is_loopback_host"]

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Finding:
    index: int  # which document of the set
    path: Loc
    message: str
    hint: str = ""


def is_loopback_host(host: str) -> bool:
    """Plain-text sockets are tolerated only when they never leave the machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _federation(doc: FederationPolicy) -> Iterator[tuple[Loc, str, str]]:
    clients = doc.spec.clients
    if clients.minimum > clients.per_round:
        yield (
            ("spec", "clients", "minimum"),
            f"minimum ({clients.minimum}) exceeds perRound ({clients.per_round})",
            "a round could never gather enough replies",
        )
    yield from _aggregation(doc)
    yield from _user_privacy(doc)
    training = doc.spec.training
    if training.batch_size is not None and training.max_physical_batch_size > max(
        64, training.batch_size * 4
    ):
        yield (
            ("spec", "training", "maxPhysicalBatchSize"),
            "maxPhysicalBatchSize is far above batchSize",
            "it only caps memory; keep it at or below a few times batchSize",
        )


def _aggregation(doc: FederationPolicy) -> Iterator[tuple[Loc, str, str]]:
    spec = doc.spec
    agg = spec.aggregation
    where: Loc = ("spec", "aggregation", "strategy")
    if agg.strategy in ROBUST_STRATEGIES and spec.protection != "none":
        yield (
            where,
            f"strategy {agg.strategy} cannot run with protection {spec.protection}: the "
            "coordinator sees only the sum of updates, so a robust rule cannot look at each one",
            "use fedavg with secagg or he, or protection none with a robust strategy",
        )
        return
    if spec.protection == "he" and agg.strategy != "fedavg":
        yield (
            where,
            f"protection he needs strategy fedavg, not {agg.strategy}",
            "the coordinator only adds ciphertexts; a server optimizer would need the plaintext",
        )
    minimum, f = spec.clients.minimum, agg.byzantine
    if agg.strategy == "krum" and minimum <= 2 * f + 2:
        yield (
            ("spec", "clients", "minimum"),
            f"krum with byzantine {f} needs minimum above {2 * f + 2} (2f + 2), not {minimum}",
            "Krum scores each update by its n - f - 2 nearest neighbours",
        )
    if agg.strategy == "bulyan" and minimum < 4 * f + 3:
        yield (
            ("spec", "clients", "minimum"),
            f"bulyan with byzantine {f} needs minimum of at least {4 * f + 3} (4f + 3), "
            f"not {minimum}",
            "a round with fewer updates could not be aggregated",
        )
    if agg.krum_select is not None:
        if agg.strategy != "krum":
            yield (
                ("spec", "aggregation", "krumSelect"),
                f"krumSelect is only used with strategy krum, not {agg.strategy}",
                "",
            )
        elif agg.krum_select > minimum - f:
            yield (
                ("spec", "aggregation", "krumSelect"),
                f"krumSelect ({agg.krum_select}) exceeds minimum - byzantine ({minimum - f})",
                "Multi-Krum would average in updates it cannot tell from the byzantine ones",
            )


def _user_privacy(doc: FederationPolicy) -> Iterator[tuple[Loc, str, str]]:
    """User-level DP holds only where the coordinator clips each update and noises a mean."""
    spec = doc.spec
    privacy, user = spec.privacy, spec.privacy.user
    where: Loc = ("spec", "privacy", "level")
    if privacy.level == "sample":
        if user is not None:
            yield (
                ("spec", "privacy", "user"),
                "privacy.user is set but level is sample, so it would not be used",
                "set level user or both, or remove privacy.user",
            )
        return
    if user is None:
        yield (
            ("spec", "privacy", "user"),
            f"level {privacy.level} needs privacy.user (clippingNorm and noiseMultiplier or "
            "targetEpsilon)",
            "",
        )
        return
    if spec.protection != "none":
        yield (
            where,
            f"level {privacy.level} cannot hold with protection {spec.protection}: the "
            "coordinator sees only the sum, and user-level DP clips each holder's update",
            "use protection none (updates stay sample-level private with level both)",
        )
    if spec.aggregation.strategy != "fedavg":
        yield (
            ("spec", "aggregation", "strategy"),
            f"level {privacy.level} needs strategy fedavg, not {spec.aggregation.strategy}: "
            "the noise is calibrated to a plain mean of clipped updates",
            "",
        )
    located: Loc = ("spec", "privacy", "user")
    if (user.noise_multiplier is None) == (user.target_epsilon is None):
        yield (
            (*located, "noiseMultiplier"),
            "give exactly one of noiseMultiplier and targetEpsilon",
            "noise fixes the price; a target derives the noise for all rounds",
        )
    if user.population is not None and user.population < spec.clients.per_round:
        yield (
            (*located, "population"),
            f"population ({user.population}) is below perRound ({spec.clients.per_round})",
            "a round cannot sample more holders than the federation has",
        )


def _placement(doc: PlacementPolicy) -> Iterator[tuple[Loc, str, str]]:
    spec = doc.spec
    if spec.replicas.min > spec.replicas.max:
        yield (
            ("spec", "replicas", "min"),
            f"min ({spec.replicas.min}) exceeds max ({spec.replicas.max})",
            "",
        )
    if spec.strategy.type == "ordered" and not spec.strategy.preference:
        yield (
            ("spec", "strategy", "preference"),
            "an ordered strategy needs a preference list",
            "list target names, best first",
        )
    if spec.strategy.type == "anyOf" and spec.strategy.preference:
        yield (
            ("spec", "strategy", "preference"),
            "preference is only used with type: ordered",
            "anyOf picks the cheapest allowed targets",
        )
    seen: set[str] = set()
    for index, name in enumerate(spec.strategy.preference):
        if name in seen:
            yield (("spec", "strategy", "preference", index), f"{name!r} is listed twice", "")
        seen.add(name)
    distinct_providers = len(set(spec.providers))
    if spec.spread.min_providers > distinct_providers:
        yield (
            ("spec", "spread", "minProviders"),
            f"minProviders ({spec.spread.min_providers}) exceeds the "
            f"{distinct_providers} allowed provider(s)",
            "",
        )
    if spec.spread.min_providers > spec.replicas.max:
        yield (
            ("spec", "spread", "minProviders"),
            f"minProviders ({spec.spread.min_providers}) exceeds "
            f"replicas.max ({spec.replicas.max})",
            "",
        )


def _inventory(doc: CloudInventory) -> Iterator[tuple[Loc, str, str]]:
    seen: set[str] = set()
    for index, target in enumerate(doc.spec.targets):
        here: Loc = ("spec", "targets", index)
        if target.name in seen:
            yield ((*here, "name"), f"target name {target.name!r} is used twice", "")
        seen.add(target.name)
        if target.provider == "local":
            if target.path is None:
                yield (here, "a local target needs a path", "the folder that holds the store")
            for field, value in (
                ("credentials", target.credentials),
                ("endpoint", target.endpoint),
            ):
                if value is not None:
                    yield ((*here, field), f"a local target takes no {field}", "")
            continue
        if target.container is None:
            yield (here, f"a {target.provider} target needs a container", "the bucket or container")
        if target.credentials is None:
            yield (
                here,
                f"a {target.provider} target needs credentials",
                "credentials: {keyRef: {env: VAR}, secretRef: {env: VAR}}",
            )
        if target.endpoint is not None:
            parts = urlsplit(target.endpoint)
            if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
                yield (
                    (*here, "endpoint"),
                    "plain http to a host off this machine: TLS is required",
                    "use https://",
                )


def _agent(doc: AgentConfig) -> Iterator[tuple[Loc, str, str]]:
    broker = doc.spec.broker
    if not broker.tls.enabled and not is_loopback_host(broker.host):
        yield (
            ("spec", "broker", "tls", "enabled"),
            "TLS is off for a broker off this machine",
            "enable TLS and give caFile",
        )
    if broker.password_ref is not None and broker.username is None:
        yield (("spec", "broker", "username"), "passwordRef is set but username is not", "")
    if (broker.tls.cert_file is None) != (broker.tls.key_file is None):
        yield (("spec", "broker", "tls"), "certFile and keyFile go together", "")
    for index, key in enumerate(doc.spec.trusted_keys):
        if key.startswith("ed25519:"):
            try:
                raw = base64.b64decode(key[len("ed25519:") :], validate=True)
            except (binascii.Error, ValueError):  # ValueError: non-ASCII text (found by fuzzing)
                raw = b""
            if len(raw) != 32:
                yield (
                    ("spec", "trustedKeys", index),
                    "not an Ed25519 public key",
                    "expected ed25519: followed by 44 base64 characters",
                )


def check_document(doc: PolicyDocument) -> Iterator[tuple[Loc, str, str]]:
    """Rules within one document."""
    if isinstance(doc, FederationPolicy):
        yield from _federation(doc)
    elif isinstance(doc, PlacementPolicy):
        yield from _placement(doc)
    elif isinstance(doc, CloudInventory):
        yield from _inventory(doc)
    elif isinstance(doc, AgentConfig):
        yield from _agent(doc)


def check_set(docs: Sequence[PolicyDocument]) -> Iterator[Finding]:
    """Rules within each document, and across the documents validated together."""
    for index, doc in enumerate(docs):
        for path, message, hint in check_document(doc):
            yield Finding(index, path, message, hint)
    names: dict[tuple[str, str], int] = {}
    for index, doc in enumerate(docs):
        key = (doc.kind, doc.metadata.name)
        if key in names:
            yield Finding(
                index, ("metadata", "name"), f"another {doc.kind} is named {key[1]!r}", ""
            )
        names.setdefault(key, index)
    targets = {
        target.name
        for doc in docs
        if isinstance(doc, CloudInventory)
        for target in doc.spec.targets
    }
    if targets:
        for index, doc in enumerate(docs):
            if isinstance(doc, PlacementPolicy):
                for pos, name in enumerate(doc.spec.strategy.preference):
                    if name not in targets:
                        yield Finding(
                            index,
                            ("spec", "strategy", "preference", pos),
                            f"no target named {name!r} in the CloudInventory",
                            f"known targets: {', '.join(sorted(targets))}",
                        )
