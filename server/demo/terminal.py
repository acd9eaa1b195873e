"""What the demo prints at the end: rounds, budgets, artifact, quality, placement and fleet.

This is what a newcomer wants to see in the terminal; ``report.html`` has the rest.
"""

from __future__ import annotations

from rich.console import Console

from server.demo.context import DemoContext, read_metrics

__all__ = ["print_summary"]


def print_summary(console: Console, demo: DemoContext) -> None:
    """What a newcomer wants to see at the end, in the terminal; report.html has the rest."""
    from rich.table import Table
    from rich.text import Text

    rounds = Table(title="training (simulation engine, DP per holder)")
    for column in ("round", "accuracy (own splits)", "loss", "clients", "epsilon per client"):
        rounds.add_column(column)
    for line in read_metrics(demo.run_dir):
        accuracy, loss = line.get("eval_accuracy"), line.get("eval_loss")
        epsilons = ", ".join(f"{k} {v:.2f}" for k, v in sorted(line.get("epsilon", {}).items()))
        rounds.add_row(
            str(line["round"]),
            f"{accuracy:.3f}" if accuracy is not None else "-",
            f"{loss:.3f}" if loss is not None else "-",
            str(len(line.get("clients", []))),
            epsilons,
        )
    console.print(rounds)
    summary = demo.state.summary
    budgets = ", ".join(
        f"{b['client']} {b['spent_epsilon']:.2f} of {b['target_epsilon']:g}"
        for b in summary.get("budgets", [])
    )
    console.print(f"privacy budget spent: {budgets}")
    artifact = summary.get("artifact", {})
    console.print(
        f"artifact {artifact.get('name')} {artifact.get('version')} ({artifact.get('format')}, "
        f"{artifact.get('size_bytes', 0) / 1e6:.1f} MB)"
    )
    quality = summary.get("quality")
    if quality:
        console.print(
            f"[bold]model accuracy[/bold] on {quality['examples']} held-out examples no holder "
            f"trained on: exported int8 {_fmt(quality['federated_int8'])} (DP, epsilon "
            f"{quality['epsilon']:g}) | untrained {_fmt(quality['floor'])} | non-private "
            f"central {_fmt(quality['ceiling'])} | holders' own splits "
            f"{_fmt(quality['holders_own_split'])}"
        )
    placement = Table(title="placement (policy eu-only)")
    for column in ("target", "residency", "decision", "why"):
        placement.add_column(column)
    for row in summary.get("placement", {}).get("rows", []):
        placement.add_row(row["target"], row["residency"], row["decision"], row["reason"])
    console.print(placement)
    fleet = Table(title="edge fleet")
    for column in ("device", "version", "phase", "p50 ms", "p95 ms"):
        fleet.add_column(column)
    for row in summary.get("fleet", []):
        p50, p95 = row.get("p50_ms"), row.get("p95_ms")
        fleet.add_row(
            row["device"],
            row["reported_version"],
            row["phase"],
            f"{p50:.2f}" if p50 is not None else "-",
            f"{p95:.2f}" if p95 is not None else "-",
        )
    console.print(fleet)
    explained = [s for s in summary.get("samples", []) if s.get("explanation")]
    if explained:
        device = explained[0]["explanation"]["device"]
        why = Table(title=f"why: {device} explains its answers (occlusion on the int8 model)")
        for column in ("sample", "answer", "words that made it (attribution)"):
            why.add_column(column)
        for sample in explained:
            doc = sample["explanation"]
            ranked = sorted(doc["words"], key=lambda w: w["attribution"], reverse=True)[:3]
            text = sample["text"]
            why.add_row(  # Text: a sentence is never read as rich markup
                Text(text if len(text) <= 60 else text[:59] + "…"),
                Text(f"{doc['label']} ({doc['score']:.2f})"),
                Text(", ".join(f"{w['word']} {w['attribution']:+.2f}" for w in ranked)),
            )
        console.print(why)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
