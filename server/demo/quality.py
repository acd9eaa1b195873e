"""The quality stage: the exported model next to the untrained floor and the non-private ceiling.

The reference points come from ``fedge-client baseline`` (which only a demo or a benchmark may
run: the ceiling pools every holder's data); the federated numbers come from the export.
"""

from __future__ import annotations

import json
from pathlib import Path

from server.demo.context import DemoContext, read_metrics
from server.demo.processes import fedge_bin, run_tool

__all__ = ["quality"]


def quality(ctx: DemoContext, data: Path, policy: Path) -> None:
    """The exported model next to the untrained floor and the non-private ceiling."""
    out = ctx.w / "quality.json"
    holders = sorted(data.glob("client-*.tsv"))
    with ctx.stage("quality", "held-out accuracy: floor, federated DP, ceiling"):
        args = [fedge_bin("fedge-client"), "baseline", "--policy", str(policy)]
        for path in holders:
            args += ["--data", str(path)]
        args += ["--heldout", str(data / "heldout.tsv"), "--json", str(out)]
        run_tool(args, what="fedge-client baseline")
        reference = json.loads(out.read_text(encoding="utf-8"))
        artifact = ctx.state.summary.get("artifact", {})
        own = [r.get("eval_accuracy") for r in read_metrics(ctx.run_dir)]
        own = [a for a in own if a is not None]
        manifest = json.loads((ctx.w / "artifact" / "manifest.json").read_text("utf-8"))
        inference = json.loads((ctx.w / "artifact" / "inference.json").read_text("utf-8"))
        ctx.state.summary["quality"] = {
            "heldout": "data/heldout.tsv",
            "examples": int(manifest["metrics"].get("heldout_examples", 0)),
            "federated_int8": artifact.get("accuracy_int8"),
            "federated_fp32": artifact.get("accuracy_fp32"),
            "floor": reference["floor"],
            "majority": reference["majority"],
            "ceiling": reference["ceiling"],
            "holders_own_split": own[-1] if own else None,
            "label_names": inference.get("labels", []),
            "epsilon": ctx.o.epsilon,
        }
