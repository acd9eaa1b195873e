"""``fedge-client``: the data holder's command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedge.cli import main_for, new_app, out

__all__ = ["app", "main"]

app = new_app(
    "fedge-client", "fedge for a data holder: inspect a federation, train on your own data."
)


@app.command("inspect")
def inspect(
    policy: Annotated[
        Path, typer.Argument(help="The FederationPolicy the coordinator asks you to join.")
    ],
) -> None:
    """Show what a FederationPolicy asks of you before you join: model, rounds, privacy budget."""
    from policies import FederationPolicy, load_one

    doc = load_one(policy, FederationPolicy)
    spec = doc.spec
    table = Table(title=f"FederationPolicy {doc.metadata.name}", show_header=False)
    table.add_column("setting")
    table.add_column("value")
    table.add_row(
        "model", f"{spec.model.source} ({spec.model.task}, {spec.model.num_labels} labels)"
    )
    table.add_row("rounds", str(spec.rounds))
    table.add_row("protection", spec.protection)
    table.add_row("aggregation", spec.aggregation.strategy)
    table.add_row(
        "privacy budget",
        f"epsilon {spec.privacy.target_epsilon:g}, delta {spec.privacy.delta:g} "
        f"({spec.privacy.accountant} accountant, clip {spec.privacy.max_grad_norm:g})",
    )
    table.add_row(
        "LoRA",
        f"rank {spec.lora.rank}, alpha {spec.lora.alpha:g}, "
        f"modules {', '.join(spec.lora.target_modules)}",
    )
    out.print(table)
    out.print(
        "Your own ledger enforces this budget on this machine; the coordinator cannot raise it."
    )


main = main_for(app, "fedge-client")
