"""The export stage: ``fedge export`` merges, quantizes and signs the trained model.

It runs as its own process, as an operator would run it; the artifact's identity and its
accuracy go into the summary.
"""

from __future__ import annotations

import json
from pathlib import Path

from server.demo.context import DemoContext
from server.demo.processes import fedge_bin, run_tool

__all__ = ["export", "label_names_option"]


def export(ctx: DemoContext, data: Path, policy: Path) -> Path:
    from fedge.signing import generate_keypair

    artifact = ctx.w / "artifact"
    with ctx.stage("export", "merged, ONNX int8, signed"):
        keys = generate_keypair()
        keys.save(ctx.w / "keys")
        run_tool(
            [
                fedge_bin("fedge"),
                "export",
                "--policy",
                str(policy),
                "--workdir",
                str(ctx.run_dir),
                "--heldout",
                str(data / "heldout.tsv"),
                "--key",
                str(ctx.w / "keys" / "signing.key"),
                "--out",
                str(artifact),
                "--label",
                "app=sentiment",
                "--version",
                "1.0.0",
                "--max-length",
                str(ctx.o.max_length),
                *label_names_option(data / "heldout.tsv"),
                "--force",
            ],
            what="fedge export",
        )
        manifest = json.loads((artifact / "manifest.json").read_text(encoding="utf-8"))
        metrics = manifest.get("metrics", {})
        ctx.state.summary["artifact"] = {
            "name": manifest["name"],
            "version": manifest["version"],
            "format": manifest.get("format", ""),
            "digest": manifest.get("contentDigest", ""),
            "size_bytes": sum(int(f["size"]) for f in manifest.get("files", [])),
            "accuracy_fp32": metrics.get("accuracy_fp32"),
            "accuracy_int8": metrics.get("accuracy_int8"),
            "signed_by": keys.public.key_id,
        }
    return artifact


def label_names_option(heldout: Path) -> list[str]:
    """Names for a two-label set written as 0/1 (the synthetic data and SST-2 are both
    0 = negative, 1 = positive), so predictions read as words, not indices."""
    with heldout.open(encoding="utf-8") as handle:
        labels = {line.rstrip("\n").rsplit("\t", 1)[-1] for line in list(handle)[1:]}
    return ["--label-names", "negative,positive"] if labels <= {"0", "1"} else []
