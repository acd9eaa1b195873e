"""``fedge-agent``: the edge device's command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedge.cli import JsonFlag, OutputFormat, OutputOption, main_for, new_app, out, output_format
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
    """Verify an artifact against the AgentConfig's trusted keys, as the agent does on arrival.

    The same checks, in the same order: the signature, every file, then the manifest's format
    (one the agent runs), so an artifact that passes here is not refused on the device.
    """
    from fedge.artifact import verify_artifact
    from fedge.payload import check_format

    _device, keys = _trusted_keys(config)
    manifest = verify_artifact(artifact, keys)
    check_format(manifest)
    out.print(f"ok  {manifest.name} {manifest.version}: {len(manifest.files)} file(s) verified")


@app.command("run")
def run(
    config: ConfigOption,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            max=256,
            help="ONNX Runtime threads per inference (default: all cores).",
        ),
    ] = None,
) -> None:
    """Follow the desired deployment and serve the model until SIGTERM or Ctrl-C."""
    import signal
    import threading

    from edge_agent.agent import Agent
    from edge_agent.config import load_settings

    settings = load_settings(config)
    stop = threading.Event()

    def _request_stop(_signum: int, _frame: object) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _request_stop)
    agent = Agent(settings, inference_threads=threads)
    agent.start()
    where = f"{settings.broker.host}:{settings.broker.port}"
    http = f", HTTP on 127.0.0.1:{agent.http_port}" if agent.http_port is not None else ""
    out.print(
        f"fedge-agent {settings.device_id}: following {agent.topics.desired} at {where}{http}"
    )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        agent.stop()
    out.print(f"fedge-agent {settings.device_id}: stopped")


@app.command("status")
def status(
    config: ConfigOption,
    output: OutputOption = OutputFormat.TABLE,
    as_json: JsonFlag = False,
) -> None:
    """What this device serves and how its last deployment went (from the state directory)."""
    from edge_agent.config import load_settings
    from edge_agent.status import local_status
    from fedge.output import document, render

    fmt = output_format(output, as_json)
    doc = document("AgentStatus", **local_status(load_settings(config)))
    if fmt.is_document:
        out.file.write(render(doc, fmt))
        return
    for line in format_status(doc, wide=fmt is OutputFormat.WIDE):
        out.print(line, markup=False)


def format_status(doc: dict[str, object], *, wide: bool = False) -> list[str]:
    """The human form of :func:`edge_agent.status.local_status`; ``wide`` adds full digests,
    the state folder and when the deployment last moved."""

    def model(entry: object) -> str:
        if not isinstance(entry, dict):
            return "none"
        digest = str(entry["manifestSha256"])
        shown = digest if wide else f"{digest[:12]}…"
        return f"{entry['name']} {entry['version']} (sha256 {shown})"

    deployment = doc.get("deployment")
    running = "running" if doc["running"] else "not running"
    lines = [
        f"device      {doc['deviceId']} (fleet {doc['fleet']})",
        f"agent       {running}, birth seq {doc['birthSeq']}",
        f"serving     {model(doc.get('current'))}",
        f"previous    {model(doc.get('previous'))}",
    ]
    if isinstance(deployment, dict):
        error = f": {deployment['error']}" if deployment.get("error") else ""
        lines.append(f"deployment  {deployment['deploymentId']} {deployment['phase']}{error}")
        if wide:
            lines.append(
                f"            {deployment['artifact']} {deployment['version']}, "
                f"updated {deployment['updatedAt']}"
            )
    else:
        lines.append("deployment  none yet")
    if doc.get("httpPort") is not None:
        lines.append(f"http        127.0.0.1:{doc['httpPort']}")
    if wide:
        lines.append(f"state       {doc['stateDir']}")
    return lines


main = main_for(app, "fedge-agent")

if __name__ == "__main__":
    main()
