"""The five document kinds: one envelope (apiVersion, kind, metadata) around each spec."""

from __future__ import annotations

from typing import Literal

from policies.agent import AgentSpec
from policies.common import Metadata, Spec
from policies.federation import FederationSpec
from policies.inventory import InventorySpec
from policies.placement import PlacementSpec
from policies.rollout import RolloutSpec

__all__ = [
    "KINDS",
    "AgentConfig",
    "CloudInventory",
    "FederationPolicy",
    "PlacementPolicy",
    "PolicyDocument",
    "RolloutPolicy",
]


class _Document(Spec):
    api_version: Literal["fedge/v1"]
    metadata: Metadata


class FederationPolicy(_Document):
    kind: Literal["FederationPolicy"]
    spec: FederationSpec


class PlacementPolicy(_Document):
    kind: Literal["PlacementPolicy"]
    spec: PlacementSpec


class RolloutPolicy(_Document):
    kind: Literal["RolloutPolicy"]
    spec: RolloutSpec


class CloudInventory(_Document):
    kind: Literal["CloudInventory"]
    spec: InventorySpec


class AgentConfig(_Document):
    kind: Literal["AgentConfig"]
    spec: AgentSpec


PolicyDocument = FederationPolicy | PlacementPolicy | RolloutPolicy | CloudInventory | AgentConfig

KINDS: dict[str, type[PolicyDocument]] = {
    cls.__name__: cls
    for cls in (FederationPolicy, PlacementPolicy, RolloutPolicy, CloudInventory, AgentConfig)
}
