"""``fedge-agent``: the edge device's command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedge.cli import main_for, new_app, out
from fedge.signing import PublicKey, parse_public_key

__all__ = ["app", "main"]

app = new_app(
    "fedge-agent", "fedge on an edge device: follow the desired deployment, run the model."
)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="AgentConfig YAML file.")]


def _trusted_keys(config: Path) -> tuple[str, list[PublicKey]]:
    from policies import AgentConfig, load_one

    doc = load_one(config, AgentConfig)
    keys = [parse_public_key(value, base_dir=config.parent) for value in doc.spec.trusted_keys]
    return doc.spec.device_id, keys


@app.command("check")
def check(config: ConfigOption) -> None:
    """Validate an AgentConfig and load its trusted signer keys."""
    device, keys = _trusted_keys(config)
    ids = ", ".join(key.key_id for key in keys)
    out.print(f"ok  {config}: device {device}, {len(keys)} trusted key(s): {ids}")


@app.command("verify")
def verify(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder to verify.")],
    config: ConfigOption,
) -> None:
    """Verify an artifact against the AgentConfig's trusted keys, as the agent does on arrival."""
    from fedge.artifact import verify_artifact

    _device, keys = _trusted_keys(config)
    manifest = verify_artifact(artifact, keys)
    out.print(f"ok  {manifest.name} {manifest.version}: {len(manifest.files)} file(s) verified")


main = main_for(app, "fedge-agent")
