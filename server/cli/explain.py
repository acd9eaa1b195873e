"""``fedge explain``: which words made an artifact's model answer what it did, as a device sees it.

The operator's side of the agent's ``POST /v1/explain``: the same code (edge_agent/explain.py,
the one module of the agent besides its protocol that the server imports) on the same int8 ONNX
model, so what the operator reads here is what a device would answer. The artifact's signature
and every file's hash are checked against ``--trusted`` keys before anything in it is loaded,
as on a device; the manifest's format must be one an agent runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from fedge.cli import Column, OutputFormat, OutputOption, emit, output_format
from fedge.errors import UsageError

__all__ = ["register"]

_BAR_WIDTH = 20


def _bar(attribution: float, largest: float) -> str:
    """A text bar for a table cell: ``+`` for a push towards the answer, ``-`` against it."""
    if largest <= 0:
        return ""
    length = round(abs(attribution) / largest * _BAR_WIDTH)
    return ("+" if attribution > 0 else "-") * length


def register(app: typer.Typer) -> None:
    """Add the top-level ``explain`` command to the operator's app."""

    @app.command("explain")
    def explain(
        artifact: Annotated[Path, typer.Argument(help="Signed artifact folder (fedge export).")],
        text: Annotated[str, typer.Argument(help="The text to classify and explain.")],
        *,
        trusted: Annotated[
            list[str],
            typer.Option(
                "--trusted",
                help="Public key the artifact must be signed by: PEM file or "
                "ed25519:<base64>. Repeatable.",
            ),
        ],
        output: OutputOption = OutputFormat.TABLE,
        threads: Annotated[
            int | None,
            typer.Option("--threads", min=1, max=256, help="ONNX Runtime threads (default: all)."),
        ] = None,
    ) -> None:
        """Explain the artifact's answer for TEXT: each word's attribution, by occlusion.

        A word's attribution is how much the predicted class's probability drops when the word
        is hidden from the model; at most 64 words and the model's max_length tokens.
        """
        from edge_agent.explain import METHOD, Explainer, TooLongError
        from fedge.artifact import verify_artifact
        from fedge.output import document
        from fedge.payload import check_format
        from fedge.signing import parse_public_key

        fmt = output_format(output)
        keys = [parse_public_key(value) for value in trusted]
        manifest = verify_artifact(artifact, keys)
        check_format(manifest)
        explainer = Explainer.open(artifact, threads=threads)
        try:
            explanation = explainer.explain(text)
        except TooLongError as exc:
            raise UsageError(f"TEXT: {exc}") from exc
        doc = document(
            "Explanation",
            explanation.word_items(),
            artifact=manifest.name,
            version=manifest.version,
            text=text,
            label=explanation.label,
            score=explanation.score,
            scores=explanation.scores,
            method=METHOD,
            ms=round(explanation.ms, 3),
        )
        largest = max((abs(w.attribution) for w in explanation.words), default=0.0)
        top = explanation.top()

        def bar(item: Mapping[str, Any]) -> str:
            return _bar(float(item["attribution"]), largest)

        emit(
            doc,
            fmt,
            columns=(
                Column("word", lambda item: str(item["word"])),
                Column("attribution", lambda item: f"{item['attribution']:+.4f}", justify="right"),
                Column(
                    "",
                    bar,
                    style=lambda item: "green" if item["attribution"] > 0 else "red",
                ),
                Column("start", lambda item: str(item["start"]), wide=True, justify="right"),
                Column("end", lambda item: str(item["end"]), wide=True, justify="right"),
            ),
            title=(
                f"{explanation.label} ({explanation.score:.3f}): {manifest.name} "
                f"{manifest.version}, {METHOD} on the device's model"
            ),
            notes=[
                f"top word: {top.word!r} ({top.attribution:+.4f}); "
                f"{len(explanation.words)} word(s) in {explanation.calls} ONNX Runtime "
                f"call(s), {explanation.ms:.0f} ms"
                if top is not None
                else "no words to explain"
            ],
        )
