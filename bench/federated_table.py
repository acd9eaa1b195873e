"""The table ``federated_accuracy.py`` prints: its rows, the central ones, and the rendering.

One job: what a row of the comparison holds, the ceiling and central DP rows recomputed from
``client.training.baseline.run_baseline``'s figures, the rich table, and the one line that says
whether federated DP lands within a few points of the central non-private ceiling.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from client.training.baseline import Baseline
    from policies import FederationPolicy

WITHIN_POINTS = 5.0


@dataclass
class Row:
    setting: str
    private: bool
    epsilon: float | None
    steps: int | None  # None where not known
    train_examples: int
    accuracy: float
    loss: float  # NaN where not known (client.training.baseline reports accuracy only)
    seconds: float  # NaN where not measured on its own
    note: str = ""


def central_rows(
    args: argparse.Namespace, policy: FederationPolicy, baseline: Baseline, seconds: float
) -> list[Row]:
    """The ceiling and central DP rows from ``run_baseline``'s figures.

    The steps and the noise are recomputed from its plan (one run of ``epochs`` over
    ``train_examples`` at ``batch_size``), the way it computes them.
    """
    from client.privacy.accounting import epsilon_for, noise_for_budget

    per_epoch = math.ceil(baseline.train_examples / baseline.batch_size)
    steps = baseline.epochs * per_epoch
    plan = f"batch {baseline.batch_size} x {baseline.epochs} epochs, lr {baseline.learning_rate:g}"
    rows = [
        Row(
            "central non-DP",
            False,
            None,
            steps,
            baseline.train_examples,
            baseline.ceiling,
            math.nan,
            seconds,
            f"{plan}; seconds: every central arm (one run_baseline)",
        )
    ]
    if baseline.central_dp is not None:
        privacy = policy.spec.privacy
        sigma = noise_for_budget(
            target_epsilon=privacy.target_epsilon,
            delta=privacy.delta,
            sample_rate=1.0 / per_epoch,
            steps_per_round=steps,
            rounds=1,
            accountant=privacy.accountant,
        )
        spent = epsilon_for(
            [(sigma, 1.0 / per_epoch, steps)], delta=privacy.delta, accountant=privacy.accountant
        )
        rows.append(
            Row(
                "central DP",
                True,
                spent,
                steps,
                baseline.train_examples,
                baseline.central_dp,
                math.nan,
                math.nan,
                f"same plan; noise multiplier {sigma:.3f}",
            )
        )
    return rows


def _number(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def setting_text(value: Any) -> str:
    return "auto" if value is None else str(value)


def print_table(rows: list[Row], meta: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    head = "head only" if not meta["lora_rank"] else f"LoRA rank {meta['lora_rank']}"
    table = Table(
        title=(
            f"Held-out accuracy: {meta['model']} ({meta['pooling']} pooling, {head}), "
            f"{meta['data_name']} ({meta['train_size']} train / {meta['test_size']} held out), "
            f"{meta['clients']} clients (Dirichlet alpha {meta['alpha']}), {meta['rounds']} "
            f"rounds, batch {setting_text(meta['batch_size'])}, local epochs "
            f"{setting_text(meta['local_epochs'])}, lr {setting_text(meta['learning_rate'])}, "
            f"{meta['max_length']} tokens, epsilon {meta['epsilon']}"
        )
    )
    for name, justify in (
        ("setting", "left"),
        ("DP", "left"),
        ("epsilon spent", "right"),
        ("optimizer steps", "right"),
        ("train examples", "right"),
        ("accuracy", "right"),
        ("loss", "right"),
        ("seconds", "right"),
        ("note", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(
            row.setting,
            "yes" if row.private else "no",
            "-" if row.epsilon is None else f"{row.epsilon:.2f}",
            "-" if row.steps is None else str(row.steps),
            str(row.train_examples),
            _number(row.accuracy, 4),
            _number(row.loss, 4),
            _number(row.seconds, 0),
            row.note,
        )
    console = Console(width=max(150, Console().width))
    console.print(table)


def comparison_line(rows: list[Row]) -> str | None:
    by_setting = {row.setting: row for row in rows}
    federated, central = by_setting.get("federated DP"), by_setting.get("central non-DP")
    if federated is None or central is None:
        return None
    points = 100 * (federated.accuracy - central.accuracy)
    within = "yes" if points >= -WITHIN_POINTS else "no"
    return (
        f"federated DP vs central non-DP: {points:+.1f} points (within {WITHIN_POINTS:g}: {within})"
    )
