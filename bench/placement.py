"""Placement: planner speed, and upload throughput to three clouds at once next to one alone.

Planner: ``plan_placement`` (pure) for 1,000 artifacts over an inventory of 50 targets (mixed
providers, residencies and prices; an ``anyOf`` policy with residency, spread and a cost ceiling),
once with every target healthy and once with a fifth of them down (failover path).

Upload: one signed artifact holding a single 200 MB file, applied by the reconciler (upload,
read-back of size and hash, state in SQLite) to each target alone, one after the other (S3 API on
moto's server, Azure Blob on Azurite, a LOCAL folder), then to all three in parallel, side by side
in one run. Both servers run on loopback on this machine, so the figures compare fedge's paths
(parallel vs alone, multipart S3 vs block-blob Azure vs file copy), not any cloud's network.
``parallel / sum(alone)`` below 1 is what uploading the replicas concurrently saves.

Run: ``.venv/bin/python bench/placement.py [--quick] [--json PATH]``. The defaults take about
15 s on a 2-core machine (most of it writing and uploading the 200 MB); ``--quick`` (200
artifacts, 20 MB) about 4 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cloud_adapters.placement.local_artifact import load_local_artifact  # noqa: E402
from cloud_adapters.placement.planner import plan_placement  # noqa: E402
from cloud_adapters.placement.reconciler import Reconciler  # noqa: E402
from cloud_adapters.placement.state import PlacementState  # noqa: E402
from cloud_adapters.stores.factory import open_store  # noqa: E402
from cloud_adapters.stores.retry import RetryPolicy  # noqa: E402
from fedge.artifact import sign_artifact  # noqa: E402
from fedge.manifest import FileEntry, Manifest  # noqa: E402
from fedge.signing import generate_keypair  # noqa: E402
from policies.documents import CloudInventory, PlacementPolicy  # noqa: E402
from tests.support.cloud_servers import (  # noqa: E402
    azure_target,
    azurite_server,
    inventory_document,
    local_target,
    moto_server,
    placement_document,
    s3_target,
    unique,
)

MB = 1_000_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 artifacts, a 20 MB artifact")
    parser.add_argument("--artifacts", type=int, default=None, help="planner artifacts (1000)")
    parser.add_argument("--targets", type=int, default=50, help="inventory targets (50)")
    parser.add_argument("--size-mb", type=int, default=None, help="upload artifact size (200)")
    parser.add_argument("--repeats", type=int, default=None, help="planner repetitions (3)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = parser.parse_args(argv)
    args.artifacts = args.artifacts or (200 if args.quick else 1000)
    args.size_mb = args.size_mb or (20 if args.quick else 200)
    args.repeats = args.repeats or (2 if args.quick else 3)
    if min(args.artifacts, args.targets, args.size_mb, args.repeats) < 1:
        parser.error("counts and sizes must be at least 1")
    return args


# -- planner ----------------------------------------------------------------------------------


def planner_inventory(count: int, rng: random.Random) -> CloudInventory:
    targets = []
    for index in range(count):
        provider = ("s3", "azure-blob", "local")[index % 3]
        residency = rng.choice(["eu", "eu", "us", "ch", "ap"])
        target: dict[str, Any] = {
            "name": f"t{index:03d}",
            "provider": provider,
            "region": f"{residency}-{index % 4}",
            "residency": residency,
            "pricing": {"storagePerGBMonth": round(rng.uniform(0.005, 0.03), 4)},
        }
        if provider == "local":
            target["path"] = f"/srv/store-{index}"
        else:
            target["container"] = "artifacts"
            target["credentials"] = {"keyRef": {"env": "K"}, "secretRef": {"env": "S"}}
        targets.append(target)
    return CloudInventory.model_validate(inventory_document(targets))


def planner_policy() -> PlacementPolicy:
    return PlacementPolicy.model_validate(
        placement_document(
            {
                "residency": ["eu", "ch"],
                "replicas": {"min": 2, "max": 3},
                "spread": {"minProviders": 2, "maxPerProvider": 2},
                "costCeiling": {"monthlyUSD": 50.0},
                "strategy": {"type": "anyOf"},
            }
        )
    )


def bench_planner(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(7)
    inventory = planner_inventory(args.targets, rng)
    policy = planner_policy()
    manifests = [
        Manifest.create(
            name=f"model-{index}",
            version="1.0",
            format="onnx-int8",
            files=[FileEntry("model.onnx", "0" * 64, rng.randint(10 * MB, 2000 * MB))],
            created="2026-01-01T00:00:00Z",
        )
        for index in range(args.artifacts)
    ]
    names = [t.name for t in inventory.spec.targets]
    down = {name: "down" for name in rng.sample(names, len(names) // 5)}
    results: dict[str, Any] = {}
    for label, health in (("healthy", {}), ("20% down", down)):
        runs = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            plans = [plan_placement(policy, inventory, m, down=health) for m in manifests]
            runs.append(time.perf_counter() - started)
        assert all(plan.selected for plan in plans)
        best = min(runs)
        results[label] = {
            "seconds": best,
            "median_seconds": statistics.median(runs),
            "per_plan_ms": best / len(manifests) * 1000,
            "plans_per_second": len(manifests) / best,
        }
    return results


# -- uploads ----------------------------------------------------------------------------------


def make_artifact(folder: Path, size_mb: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "model.onnx").open("wb") as handle:
        remaining = size_mb * MB
        block = os.urandom(4 * MB)
        while remaining:
            handle.write(block[: min(remaining, len(block))])
            remaining -= min(remaining, len(block))
    sign_artifact(
        folder, generate_keypair(), name="bench", version="1.0", format="onnx-int8",
        labels={"app": "bench"},
    )  # fmt: skip
    return folder


def timed_apply(
    inventory: CloudInventory, targets: list[str], folder: Path, state_path: Path
) -> tuple[float, int]:
    policy = PlacementPolicy.model_validate(
        placement_document(
            {
                "replicas": {"min": len(targets), "max": len(targets)},
                "strategy": {"type": "ordered", "preference": targets},
                "providers": ["s3", "azure-blob", "local"],
            },
            name="bench",
        )
    )
    chosen = CloudInventory.model_validate(
        inventory_document(
            [t.model_dump(by_alias=True, exclude_none=True) for t in inventory.spec.targets
             if t.name in targets]
        )
    )  # fmt: skip
    retry = RetryPolicy(timeout_s=300.0)
    local = load_local_artifact(folder)
    with PlacementState(state_path) as state:
        reconciler = Reconciler(
            policy, chosen, state, open_store=lambda t: open_store(t, retry=retry)
        )
        started = time.perf_counter()
        report = reconciler.apply(local)
        seconds = time.perf_counter() - started
    assert report.objects_uploaded == 3 * len(targets), report
    return seconds, report.bytes_uploaded


def bench_uploads(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    folder = make_artifact(work / "artifact", args.size_mb)
    results: dict[str, Any] = {}
    with moto_server(work) as moto, azurite_server(work) as azurite:
        runs: list[tuple[str, list[str]]] = [
            ("s3 alone", ["eu-s3"]),
            ("azure alone", ["eu-azure"]),
            ("local alone", ["eu-local"]),
            ("all three in parallel", ["eu-s3", "eu-azure", "eu-local"]),
        ]
        for index, (label, targets) in enumerate(runs):
            bucket, container = unique("bench-s3"), unique("bench-az")
            moto.create_bucket(bucket)
            azurite.create_container(container)
            inventory = CloudInventory.model_validate(
                inventory_document(
                    [
                        s3_target(moto, bucket),
                        azure_target(azurite, container),
                        local_target(work / f"local-{index}"),
                    ]
                )
            )
            seconds, sent = timed_apply(inventory, targets, folder, work / f"state-{index}.db")
            results[label] = {
                "seconds": seconds,
                "megabytes": sent / MB,
                "mb_per_second": sent / MB / seconds,
            }
    alone = [results[k]["seconds"] for k in ("s3 alone", "azure alone", "local alone")]
    parallel = results["all three in parallel"]["seconds"]
    results["ratios"] = {
        "parallel / sum(alone)": parallel / sum(alone),
        "parallel / slowest alone": parallel / max(alone),
    }
    return results


def print_tables(
    planner: dict[str, Any], uploads: dict[str, Any], args: argparse.Namespace
) -> None:
    print(
        f"\nplanner: {args.artifacts} artifacts x {args.targets} targets (best of {args.repeats})"
    )
    print(f"{'health':<12}{'total s':>10}{'ms/plan':>10}{'plans/s':>10}")
    for label, row in planner.items():
        print(
            f"{label:<12}{row['seconds']:>10.3f}{row['per_plan_ms']:>10.3f}"
            f"{row['plans_per_second']:>10.0f}"
        )
    print(f"\nupload of a {args.size_mb} MB artifact (apply: upload, read-back, state)")
    print(f"{'run':<24}{'seconds':>9}{'MB sent':>9}{'MB/s':>9}")
    for label, row in uploads.items():
        if label == "ratios":
            continue
        print(
            f"{label:<24}{row['seconds']:>9.2f}{row['megabytes']:>9.0f}{row['mb_per_second']:>9.1f}"
        )
    for label, value in uploads["ratios"].items():
        print(f"{label:<33}{value:>9.2f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    planner = bench_planner(args)
    with tempfile.TemporaryDirectory(prefix="fedge-bench-placement-") as tmp:
        uploads = bench_uploads(args, Path(tmp))
    print_tables(planner, uploads, args)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "planner": planner,
                 "uploads": uploads},
                indent=2,
            )
            + "\n"
        )  # fmt: skip
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
