"""``fedge policy``: validate policy documents, print their JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fedge.cli import out

__all__ = ["register"]

policy_app = typer.Typer(
    help="Validate policy documents and print their JSON Schema.", no_args_is_help=True
)


@policy_app.command("validate")
def policy_validate(
    files: Annotated[list[Path], typer.Argument(help="Policy YAML files, validated together.")],
) -> None:
    """Validate policy files; print every problem as file:line:column: field: message (hint)."""
    from policies import check_files

    report = check_files(files)
    report.raise_for_problems()
    per_file: dict[str, list[str]] = {}
    for entry in report.documents:
        per_file.setdefault(entry.file, []).append(
            f"{entry.document.kind}/{entry.document.metadata.name}"
        )
    for file in files:
        docs = per_file.get(str(file), [])
        out.print(f"ok  {file}: {len(docs)} document(s): {', '.join(docs)}")


@policy_app.command("schema")
def policy_schema(
    kind: Annotated[
        str,
        typer.Argument(
            help="FederationPolicy, PlacementPolicy, RolloutPolicy, CloudInventory or AgentConfig."
        ),
    ],
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Print the JSON Schema of one policy kind (for editor completion and checks)."""
    from fedge.atomic import atomic_write_text
    from policies import json_schema

    text = json.dumps(json_schema(kind), indent=2, sort_keys=True) + "\n"
    if output is None:
        out.print(text, end="", markup=False)
    else:
        atomic_write_text(output, text)
        out.print(f"wrote {output}")


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")
