"""``fedge``: the operator's command line."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fedge.cli import main_for, new_app, out
from fedge.errors import UsageError
from server.cli.enroll import enroll_app
from server.cli.export import register as register_export
from server.cli.fleet import register as register_fleet
from server.cli.place import place_app

if TYPE_CHECKING:
    from server.federation.rounds import RoundReport

__all__ = ["app", "main"]

app = new_app(
    "fedge", "fedge for the operator: policies, keys, artifacts, training, placement, fleet."
)
policy_app = typer.Typer(
    help="Validate policy documents and print their JSON Schema.", no_args_is_help=True
)
keys_app = typer.Typer(help="Ed25519 signing keys for artifacts.", no_args_is_help=True)
artifact_app = typer.Typer(help="Sign and verify model artifacts.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(keys_app, name="keys")
app.add_typer(artifact_app, name="artifact")
app.add_typer(enroll_app, name="enroll")
app.add_typer(place_app, name="place")
register_fleet(app)
register_export(app)


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


@keys_app.command("generate")
def keys_generate(
    output: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for signing.key (0600) and signing.pub.")
    ],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key pair.")] = False,
) -> None:
    """Generate an Ed25519 key pair for signing artifacts."""
    from fedge.signing import generate_keypair

    if (output / "signing.key").exists() and not force:
        raise UsageError(
            f"{output / 'signing.key'}: a signing key already exists (use --force to replace it)"
        )
    keypair = generate_keypair()
    key_path, pub_path = keypair.save(output)
    out.print(f"private key  {key_path} (mode 0600, keep it secret)")
    out.print(f"public key   {pub_path}")
    out.print(f"key id       {keypair.public.key_id}")
    out.print(f"trust it in an AgentConfig with: {keypair.public.inline}")


def _parse_labels(values: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise UsageError(f"--label {value!r}: expected KEY=VALUE")
        labels[key] = val
    return labels


@artifact_app.command("sign")
def artifact_sign(
    directory: Annotated[Path, typer.Argument(help="Folder of files that make the artifact.")],
    *,
    key: Annotated[Path, typer.Option("--key", help="Ed25519 private key (PEM).")],
    name: Annotated[str, typer.Option("--name", help="Artifact name.")],
    version: Annotated[str, typer.Option("--version", help="Artifact version.")],
    fmt: Annotated[
        str, typer.Option("--format", help="Artifact format, e.g. onnx-int8.")
    ] = "files",
    label: Annotated[
        list[str] | None, typer.Option("--label", help="KEY=VALUE, repeatable.")
    ] = None,
) -> None:
    """Write manifest.json and manifest.sig for a folder."""
    from fedge.artifact import sign_artifact
    from fedge.signing import load_private_key

    manifest = sign_artifact(
        directory,
        load_private_key(key),
        name=name,
        version=version,
        format=fmt,
        labels=_parse_labels(label or []),
    )
    out.print(
        f"signed {manifest.name} {manifest.version}: {len(manifest.files)} file(s), "
        f"digest {manifest.digest}"
    )


@artifact_app.command("verify")
def artifact_verify(
    directory: Annotated[Path, typer.Argument(help="Artifact folder.")],
    trusted: Annotated[
        list[str],
        typer.Option("--trusted", help="Public key: PEM file or ed25519:<base64>. Repeatable."),
    ],
) -> None:
    """Verify the signature and every file of an artifact."""
    from fedge.artifact import verify_artifact
    from fedge.signing import parse_public_key

    manifest = verify_artifact(directory, [parse_public_key(value) for value in trusted])
    table = Table(title=f"{manifest.name} {manifest.version} ({manifest.format}): verified")
    table.add_column("file")
    table.add_column("size", justify="right")
    table.add_column("sha256")
    for entry in manifest.files:
        table.add_row(entry.path, str(entry.size), entry.sha256[:16] + "…")
    out.print(table)


def _round_table() -> Table:
    table = Table(title="rounds")
    for column in (
        "round",
        "status",
        "clients",
        "declined",
        "eval acc",
        "eval loss",
        "max eps",
        "MB out/in",
        "s",
    ):
        table.add_column(column, justify="left" if column in ("status", "declined") else "right")
    return table


def _add_round(table: Table, report: RoundReport) -> None:
    eps = max(report.epsilon.values(), default=0.0)
    acc = "-" if report.eval_accuracy is None else f"{report.eval_accuracy:.3f}"
    loss = "-" if report.eval_loss is None else f"{report.eval_loss:.3f}"
    table.add_row(
        str(report.round),
        report.status,
        str(len(report.clients)),
        str(len(report.declined)),
        acc,
        loss,
        f"{eps:.2f}",
        f"{report.bytes_sent / 1e6:.2f}/{report.bytes_received / 1e6:.2f}",
        f"{report.seconds:.1f}",
    )


@app.command("train")
def train(
    policy: Annotated[Path, typer.Option("--policy", "-p", help="The FederationPolicy YAML.")],
    *,
    simulate: Annotated[
        int | None,
        typer.Option("--simulate", min=1, help="Run N simulated clients in this process."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="With --simulate: folder of client-NN.tsv/.csv/.jsonl files."),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir", help="Run folder (metrics, checkpoints); default fedge-runs/RUN."
        ),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run-id", help="Stable run name; the same name resumes. Default: policy name."
        ),
    ] = None,
    cpus_per_client: Annotated[
        float | None,
        typer.Option(
            "--cpus-per-client",
            min=0.1,
            help="With --simulate: CPU share per client (default: all clients run at once).",
        ),
    ] = None,
    superlink: Annotated[
        str | None,
        typer.Option("--superlink", help="Deployment Engine: the SuperLink's HOST:PORT (TLS)."),
    ] = None,
    ca: Annotated[
        Path | None, typer.Option("--ca", help="With --superlink: the CA certificate (PEM).")
    ] = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=1, help="With --superlink: seconds to wait for the run."),
    ] = 3600.0,
    he_public_context: Annotated[
        Path | None,
        typer.Option(
            "--he-public-context",
            help="protection he, with --superlink: the public CKKS context (no secret key).",
        ),
    ] = None,
) -> None:
    """Run a federation; a run stopped part-way resumes at the next round when started again."""
    from server.federation.train import load_plan, train_deployed, train_simulated

    if (simulate is None) == (superlink is None):
        raise UsageError("give exactly one of --simulate N (in process) or --superlink HOST:PORT")
    plan = load_plan(policy, workdir=workdir, run_id=run_id)
    table = _round_table()
    if superlink is not None:
        if ca is None:
            raise UsageError("--superlink needs --ca, the federation's CA certificate (TLS)")
        out.print(f"run {plan.settings.run_id}: SuperLink {superlink}, workdir {plan.workdir}")
        flower_run = train_deployed(
            plan,
            superlink=superlink,
            root_certificates=ca,
            timeout=timeout,
            he_public_context=he_public_context,
        )
        from server.federation.metrics import MetricsLog
        from server.federation.rounds import RoundReport as Report

        for record in MetricsLog(plan.workdir / "metrics.jsonl").read():
            _add_round(table, Report(**record))
        out.print(table)
        out.print(f"Flower run {flower_run} completed; metrics {plan.workdir / 'metrics.jsonl'}")
        return
    if data is None:
        raise UsageError("--simulate needs --data, a folder of client-NN files")
    assert simulate is not None  # noqa: S101 - checked above
    out.print(f"run {plan.settings.run_id}: {simulate} simulated clients, workdir {plan.workdir}")

    def progress(report: RoundReport) -> None:
        _add_round(table, report)
        out.print(
            f"round {report.round}: {report.status}, {len(report.clients)} client(s), "
            f"accuracy {report.eval_accuracy if report.eval_accuracy is not None else '-'}"
        )

    train_simulated(
        plan,
        num_clients=simulate,
        data_dir=data,
        progress=progress,
        cpus_per_client=cpus_per_client,
    )
    out.print(table)
    out.print(
        f"metrics {plan.workdir / 'metrics.jsonl'}, checkpoints {plan.workdir / 'checkpoints'}"
    )


@app.command("certs")
def certs(
    output: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for ca.crt, server.pem and keys.")
    ],
    *,
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Name or IP in the server certificate; repeatable."),
    ] = None,
    days: Annotated[int, typer.Option("--days", min=1, max=3650, help="Validity.")] = 30,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
) -> None:
    """Make a self-signed CA and a SuperLink certificate for a test or private federation."""
    from fedge.tls import generate_federation_certs

    paths = generate_federation_certs(
        output, hosts=tuple(host or ("localhost", "127.0.0.1")), days=days, overwrite=force
    )
    out.print(f"CA certificate      {paths.ca_cert} (give it to every data holder)")
    out.print(f"SuperLink cert/key  {paths.server_cert} / {paths.server_key}")
    from server.federation.deployment_engine import superlink_command

    out.print(f"start the SuperLink with: {shlex.join(superlink_command(paths))}", markup=False)


@app.command("report")
def report(workdir: Annotated[Path, typer.Argument(help="The run's work folder.")]) -> None:
    """Write WORKDIR/report.html from metrics.jsonl and summary.json (self-contained)."""
    from server.report.page import REPORT_NAME, load_run_summary, write_report

    out.print(str(write_report(load_run_summary(workdir), workdir / REPORT_NAME)))


@app.command("demo")
def demo(
    *,
    workdir: Annotated[
        Path, typer.Option("--workdir", help="Where the demo writes its files.")
    ] = Path("fedge-demo"),
    clients: Annotated[int, typer.Option("--clients", min=2, help="Data holders.")] = 2,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Federated rounds.")] = 3,
    epsilon: Annotated[
        float, typer.Option("--epsilon", min=0.1, help="Each holder's privacy budget.")
    ] = 8.0,
    protection: Annotated[str, typer.Option("--protection", help="none | secagg | he")] = "none",
    data: Annotated[
        Path | None,
        typer.Option("--data", help="A labelled CSV/TSV/JSONL file instead of synthetic data."),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help="builtin:all-MiniLM-L6-v2 or a local model folder.")
    ] = "builtin:all-MiniLM-L6-v2",
    examples: Annotated[
        int, typer.Option("--examples", min=10, help="Synthetic examples per holder.")
    ] = 200,
) -> None:
    """Run the whole pipeline on embedded defaults and write report.html.

    Data for each holder, enrollment, federated DP fine-tuning (simulation engine), int8 export,
    signing, placement on three local "clouds" under a residency policy, a mosquitto broker with
    TLS and ACLs, two edge agents, a canary rollout, sample inferences, and the report.
    """
    from server.demo.pipeline import DemoOptions, run_demo

    if data is not None and not data.is_file():
        raise UsageError(f"--data {data}: not a file")
    options = DemoOptions(
        workdir=workdir,
        clients=clients,
        rounds=rounds,
        epsilon=epsilon,
        protection=protection,
        data=data,
        model=model,
        examples=examples,
    )
    report = run_demo(options, out)
    out.print(f"report: {report}")


main = main_for(app, "fedge")
