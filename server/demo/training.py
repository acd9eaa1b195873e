"""The operator's federation: the policy the demo trains under, and the federated DP training.

Training runs in this process on Flower's simulation engine; its rounds land in ``run/`` (the
``metrics.jsonl`` the report reads), and each holder's spent budget goes into the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from server.demo.context import DemoContext, read_metrics

__all__ = ["train", "write_policy"]


def write_policy(ctx: DemoContext) -> Path:
    path = ctx.w / "federation.yaml"
    document = {
        "apiVersion": "fedge/v1",
        "kind": "FederationPolicy",
        "metadata": {"name": "sentiment-demo", "labels": {"app": "sentiment"}},
        "spec": {
            "model": {"source": ctx.o.model, "numLabels": 2, "maxLength": ctx.o.max_length},
            "rounds": ctx.o.rounds,
            "clients": {"perRound": ctx.o.clients, "minimum": ctx.o.clients},
            "roundTimeout": "10m",
            "protection": ctx.o.protection,
            # batch, epochs and learning rate: chosen per holder by the DP-aware plan
            "privacy": {"targetEpsilon": ctx.o.epsilon, "delta": 1.0e-5},
            # no `lora`: only the mean-pooled head trains (a DP linear probe)
        },
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def train(ctx: DemoContext, data: Path, policy: Path) -> None:
    from server.federation.rounds import RoundReport
    from server.federation.train import load_plan, train_simulated

    plan = load_plan(policy, workdir=ctx.run_dir, run_id="demo")
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with (
        ctx.stage("train", f"{ctx.o.rounds} rounds, DP epsilon {ctx.o.epsilon:g}"),
        Progress(*columns, console=ctx.console) as progress,
    ):
        task = progress.add_task("federated rounds", total=ctx.o.rounds)

        def advance(report: RoundReport) -> None:
            accuracy = report.eval_accuracy
            progress.update(
                task,
                completed=report.round,
                description=f"round {report.round}: accuracy "
                + (f"{accuracy:.3f}" if accuracy is not None else "-"),
            )

        train_simulated(plan, num_clients=ctx.o.clients, data_dir=data, progress=advance)
    # the run's metrics and checkpoints live in run/; the report reads metrics from there
    ctx.state.summary["budgets"] = _budgets(ctx)


def _budgets(ctx: DemoContext) -> list[dict[str, Any]]:
    rows = []
    for line in read_metrics(ctx.run_dir)[-1:]:
        for client, spent in sorted(line.get("epsilon", {}).items()):
            rows.append(
                {
                    "client": client,
                    "spent_epsilon": spent,
                    "target_epsilon": ctx.o.epsilon,
                    "delta": 1e-5,
                }
            )
    return rows
