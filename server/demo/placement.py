"""The placement stage: three local "clouds", a residency policy, and ``fedge place``.

The inventory and policy are written here; placing and the replica URLs are ``fedge place``
processes; the planner's decisions (and why each other target was not used) go into the summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from server.demo.context import DemoContext
from server.demo.processes import fedge_bin, run_tool

__all__ = ["place"]


def place(ctx: DemoContext, artifact: Path) -> Path:
    from cloud_adapters.placement.planner import plan_placement
    from fedge.manifest import Manifest
    from policies import CloudInventory, PlacementPolicy, load_one

    clouds = ctx.w / "clouds"
    inventory, placement = ctx.w / "clouds.yaml", ctx.w / "placement.yaml"
    targets = [("eu-west", "eu", 0.020), ("eu-central", "eu", 0.023), ("us-east", "us", 0.010)]
    inventory.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "fedge/v1",
                "kind": "CloudInventory",
                "metadata": {"name": "demo-clouds"},
                "spec": {
                    "targets": [
                        {
                            "name": name,
                            "provider": "local",
                            "path": str(clouds / name),
                            "region": name,
                            "residency": tag,
                            "pricing": {"storagePerGBMonth": price},
                        }
                        for name, tag, price in targets
                    ]
                },
            },
            sort_keys=False,
        ),
        encoding="utf-8",
    )
    placement.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "fedge/v1",
                "kind": "PlacementPolicy",
                "metadata": {"name": "eu-only"},
                "spec": {
                    "artifacts": {"matchLabels": {"app": "sentiment"}},
                    "providers": ["local"],
                    "residency": ["eu"],
                    "replicas": {"min": 2, "max": 2},
                    "strategy": {"type": "ordered", "preference": ["eu-west", "eu-central"]},
                    "retention": {"keepVersions": 3},
                },
            },
            sort_keys=False,
        ),
        encoding="utf-8",
    )
    for name, _, _ in targets:
        (clouds / name).mkdir(parents=True, exist_ok=True)
    state, urls = ctx.w / "placement.sqlite", ctx.w / "urls.json"
    common = ["--policy", str(placement), "--inventory", str(inventory)]
    with ctx.stage("place", "three local 'clouds', residency eu only"):
        run_tool(
            [
                fedge_bin("fedge"),
                "place",
                "apply",
                *common,
                "--artifact",
                str(artifact),
                "--state",
                str(state),
            ],
            what="fedge place apply",
        )
        run_tool(
            [
                fedge_bin("fedge"),
                "place",
                "urls",
                "--inventory",
                str(inventory),
                "--artifact",
                str(artifact),
                "--state",
                str(state),
                "--out",
                str(urls),
            ],
            what="fedge place urls",
        )
        plan = plan_placement(
            load_one(placement, PlacementPolicy),
            load_one(inventory, CloudInventory),
            Manifest.from_bytes((artifact / "manifest.json").read_bytes()),
        )
        placed = {r["target"] for r in json.loads(urls.read_text())["replicas"]}
        ctx.state.summary["placement"] = {
            "policy": plan.policy,
            "enforcement": plan.enforcement,
            "health": "degraded" if plan.degraded else "ok",
            "rows": [
                {
                    "target": d.target,
                    "provider": d.provider,
                    "region": d.region,
                    "residency": d.residency,
                    "decision": d.decision,
                    "reason": d.reason,
                    "monthly_usd": d.monthly_usd,
                    "replica": "intact" if d.target in placed else "",
                    "url_host": "file (local store)" if d.target in placed else "",
                }
                for d in plan.decisions
            ],
            "warnings": list(plan.warnings),
        }
    return urls
