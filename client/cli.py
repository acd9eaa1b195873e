"""``fedge-client``: the data holder's command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from client.node.enroll import enroll_command
from fedge.cli import Column, OutputFormat, OutputOption, emit, main_for, new_app, out
from fedge.he_wire import PUBLIC_CONTEXT_FILE, SECRET_CONTEXT_FILE

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
        "trains",
        f"{spec.model.pooling}-pooled head, LoRA rank {spec.lora.rank}, alpha "
        f"{spec.lora.alpha:g}, modules {', '.join(spec.lora.target_modules)}"
        if spec.lora is not None
        else f"the {spec.model.pooling}-pooled linear head only (encoder frozen)",
    )
    training = spec.training
    table.add_row(
        "training",
        ", ".join(
            f"{what} {value:g}" if value is not None else f"{what} auto (from your data)"
            for what, value in (
                ("batch", training.batch_size),
                ("local epochs", training.local_epochs),
                ("learning rate", training.learning_rate),
            )
        ),
    )
    out.print(table)
    out.print(
        "Your own ledger enforces this budget on this machine; the coordinator cannot raise it."
    )


data_app = typer.Typer(
    help="Make demo data, or split a labelled file among clients.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
he_app = typer.Typer(help="Homomorphic-encryption keys (protection: he).", no_args_is_help=True)
app.add_typer(he_app, name="he")


@he_app.command("keygen")
def he_keygen(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the two context files.")],
    *,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
) -> None:
    """Make the federation's CKKS keys, as its key custodian.

    Writes he-secret.ctx (mode 0600: share it with the other data holders only, out of band;
    each puts it in its state folder) and he-public.ctx (for the coordinator, which holds no
    secret key).
    """
    from client.federation.he import generate_keys, write_keys
    from fedge.errors import UsageError

    secret, public = out_dir / SECRET_CONTEXT_FILE, out_dir / PUBLIC_CONTEXT_FILE
    if not force and (secret.exists() or public.exists()):
        raise UsageError(f"--out {out_dir}: HE keys exist already (--force replaces them)")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_keys(generate_keys(), secret_path=secret, public_path=public)
    out.print(f"wrote {secret} (data holders only, 0600) and {public} (coordinator)")


PolicyOption = Annotated[
    Path, typer.Option("--policy", "-p", help="Your own copy of the FederationPolicy.")
]
StateOption = Annotated[
    Path, typer.Option("--state-dir", help="Your state folder (privacy ledger, updates).")
]


@data_app.command("synth")
def data_synth(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for client-NN.tsv files.")],
    *,
    clients: Annotated[int, typer.Option("--clients", min=1, help="Number of clients.")] = 3,
    examples: Annotated[int, typer.Option("--examples", min=1, help="Examples per client.")] = 200,
    labels: Annotated[int, typer.Option("--labels", min=2, help="Number of classes.")] = 2,
    alpha: Annotated[
        float, typer.Option("--alpha", min=0.001, help="Dirichlet label skew (small: non-IID).")
    ] = 0.5,
    heldout: Annotated[int, typer.Option("--heldout", min=0, help="Held-out examples.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
) -> None:
    """Generate a synthetic non-IID text classification set, one file per client."""
    from client.data.synthetic import generate, write_synthetic

    split = generate(
        num_clients=clients,
        examples_per_client=examples,
        num_labels=labels,
        alpha=alpha,
        seed=seed,
        heldout=heldout,
    )
    for path in write_synthetic(split, out_dir):
        out.print(f"wrote {path}")


@data_app.command("split")
def data_split(
    file: Annotated[Path, typer.Argument(help="A labelled CSV, TSV or JSONL file.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the client files.")],
    *,
    clients: Annotated[int, typer.Option("--clients", min=1, help="Number of clients.")] = 3,
    alpha: Annotated[
        float | None, typer.Option("--alpha", help="Dirichlet label skew; omit for IID.")
    ] = None,
    heldout: Annotated[
        float, typer.Option("--heldout", min=0.0, max=0.9, help="Held-out fraction.")
    ] = 0.0,
    text_column: Annotated[str, typer.Option("--text-column")] = "text",
    label_column: Annotated[str, typer.Option("--label-column")] = "label",
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
) -> None:
    """Split a labelled file among clients, IID or by a Dirichlet label skew."""
    from client.data.partition import partition_file

    result = partition_file(
        file,
        out_dir,
        num_clients=clients,
        alpha=alpha,
        seed=seed,
        heldout_fraction=heldout,
        text_column=text_column,
        label_column=label_column,
    )
    for path, size in zip(
        result.files, [*result.partition.sizes, len(result.partition.heldout)], strict=False
    ):
        out.print(f"wrote {path} ({size} examples)")


@app.command("check")
def check(
    data: Annotated[Path, typer.Option("--data", help="Your labelled data file.")],
    policy: PolicyOption,
    *,
    text_column: Annotated[str, typer.Option("--text-column")] = "text",
    label_column: Annotated[str, typer.Option("--label-column")] = "label",
) -> None:
    """Check, before joining, that your data file and the policy's model load on this machine."""
    from client.contract.labelled import load_labelled
    from client.contract.model import resolve_model_source
    from policies import FederationPolicy, load_one

    doc = load_one(policy, FederationPolicy)
    model = resolve_model_source(doc.spec.model.source, base_dir=policy.parent)
    loaded = load_labelled(
        data,
        num_labels=doc.spec.model.num_labels,
        text_column=text_column,
        label_column=label_column,
    )
    counts = ", ".join(f"{n}" for n in loaded.label_counts())
    out.print(f"ok  {data}: {len(loaded)} examples (per label: {counts}); model {model}")


@app.command("baseline")
def baseline(
    data: Annotated[
        list[Path], typer.Option("--data", help="Labelled training file (repeat to pool files).")
    ],
    heldout: Annotated[Path, typer.Option("--heldout", help="Labelled file to score on.")],
    policy: PolicyOption,
    *,
    private: Annotated[
        bool, typer.Option("--dp", help="Also train centrally with DP at the policy's budget.")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the figures as JSON to this file.")
    ] = None,
) -> None:
    """The price of privacy on your data: untrained floor and non-private central ceiling.

    Trains the policy's model on your data alone, as one central run of the federation's
    epochs, and scores it on --heldout next to the untrained model. Nothing leaves this machine.
    """
    import json

    from client.contract.labelled import LabelledData, load_labelled
    from client.contract.model import quiet_libraries
    from client.training.baseline import run_baseline
    from fedge.atomic import atomic_write_text
    from policies import FederationPolicy, load_one

    doc = load_one(policy, FederationPolicy)
    num_labels = doc.spec.model.num_labels
    parts = [load_labelled(path, num_labels=num_labels) for path in data]
    pooled = LabelledData(
        texts=tuple(t for part in parts for t in part.texts),
        labels=tuple(label for part in parts for label in part.labels),
        label_names=parts[0].label_names,
        path=",".join(str(path) for path in data),
    )
    held = load_labelled(heldout, num_labels=num_labels)
    quiet_libraries()
    result = run_baseline(doc, pooled, held, private=private)
    dp = f", central DP {result.central_dp:.3f}" if result.central_dp is not None else ""
    out.print(
        f"held-out {heldout} ({result.heldout_examples} examples, majority class "
        f"{result.majority:.3f}): untrained floor {result.floor:.3f}, non-private central "
        f"ceiling {result.ceiling:.3f}{dp} ({result.train_examples} training examples, "
        f"{result.epochs} epochs at batch {result.batch_size})"
    )
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(result.to_dict(), indent=2) + "\n")


BUDGET_COLUMNS = (
    Column("run", lambda r: r["runId"]),
    Column("round", lambda r: str(r["round"]), justify="right"),
    Column("noise", lambda r: f"{r['noiseMultiplier']:.3f}", justify="right"),
    Column("sample rate", lambda r: f"{r['sampleRate']:.4f}", justify="right"),
    Column("steps", lambda r: str(r["steps"]), justify="right"),
    Column("epsilon +", lambda r: f"{r['epsilonRound']:.3f}", justify="right"),
    Column("epsilon total", lambda r: f"{r['epsilonTotal']:.3f}", justify="right"),
    Column("federation", lambda r: r["federation"], wide=True),
    Column("recorded", lambda r: r["recordedAt"], wide=True),
)


@app.command("budget")
def budget(
    policy: PolicyOption, state_dir: StateOption, output: OutputOption = OutputFormat.TABLE
) -> None:
    """Print your privacy ledger: epsilon spent per round and in total, against your budget."""
    from client.privacy.ledger import PrivacyLedger
    from fedge.output import document
    from policies import FederationPolicy, load_one

    ledger = PrivacyLedger.for_policy(state_dir, load_one(policy, FederationPolicy))
    summary = ledger.summary()
    items = [
        {
            "federation": row["federation"],
            "runId": row["run_id"],
            "round": row["round"],
            "noiseMultiplier": row["noise_multiplier"],
            "sampleRate": row["sample_rate"],
            "steps": row["steps"],
            "epsilonRound": row["epsilon_round"],
            "epsilonTotal": row["epsilon_total"],
            "targetEpsilon": row["target_epsilon"],
            "recordedAt": row["recorded_at"],
        }
        for row in summary["rounds"]
    ]
    doc = document(
        "PrivacyBudget",
        items,
        ledger=summary["path"],
        budgetKey=summary["budget_key"],
        federation=summary["federation"],
        accountant=summary["accountant"],
        delta=summary["delta"],
        targetEpsilon=summary["target_epsilon"],
        spent=summary["spent"],
        remaining=summary["remaining"],
    )
    emit(
        doc,
        output,
        columns=BUDGET_COLUMNS,
        title=f"privacy ledger {summary['budget_key']} ({summary['accountant']}, "
        f"delta {summary['delta']:g})",
        notes=[
            f"spent epsilon {summary['spent']:.3f} of {summary['target_epsilon']:g} "
            f"(remaining {summary['remaining']:.3f}); ledger {summary['path']}"
        ],
    )


@app.command("start")
def start(
    data: Annotated[Path, typer.Option("--data", help="Your labelled data file.")],
    policy: PolicyOption,
    state_dir: StateOption,
    *,
    superlink: Annotated[
        str | None,
        typer.Option("--superlink", help="The coordinator's HOST:PORT (default: from enroll)."),
    ] = None,
    ca: Annotated[
        Path | None,
        typer.Option("--ca", help="The federation's CA certificate (default: from enroll)."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Your name in the federation's metrics (default: the name you enrolled as; "
            "refused if it differs from it).",
        ),
    ] = None,
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="Local port for the SuperNode's API.")
    ] = 9094,
    warm: Annotated[
        bool,
        typer.Option(
            "--warm/--no-warm",
            help="Load the model once and fork each ClientApp from that warm process "
            "(--no-warm: Flower's stock fresh process per message).",
        ),
    ] = True,
    reset_ledger: Annotated[
        bool,
        typer.Option(
            "--reset-ledger",
            help="Start your privacy budget over: archive this state folder's ledger and its "
            "marker (renamed <name>.reset-<UTC time>), logged as a WARNING. Only for a ledger "
            "that was lost or damaged: the privacy already spent is not undone.",
        ),
    ] = False,
) -> None:
    """Join a federation: check your data and model, then run a SuperNode until stopped.

    After ``fedge-client enroll`` the SuperLink address, the CA and the node's key come from
    the state directory's ``join.json``; ``--superlink``/``--ca`` override them, and the name
    in the federation's metrics is the enrolled one.

    Prints one line per round this machine took part in (trained or declined, epsilon spent
    of your budget). Ctrl-C stops the SuperNode and everything it started (exit 130); so does
    SIGTERM, as systemd and docker stop send it (exit 0). Exit 77: the coordinator revoked
    this node (enroll again under a new name); exit 1: the SuperNode stopped for another
    reason (its log says why); exit 2: bad input, or a privacy ledger that is missing, was
    put back from an older copy or was changed outside fedge (the error names the file and
    the charge; ``--reset-ledger`` starts the budget over, logged).
    """
    from client.contract.labelled import load_labelled
    from client.contract.model import resolve_model_source
    from client.node.enroll import JOIN_FILE, JoinInfo, load_join
    from client.node.holder import check_not_revoked, serve
    from client.node.supernode import (
        SuperNodeProcess,
        WarmSuperNodeProcess,
        supernode_command,
        warm_commands,
    )
    from client.privacy.ledger import PrivacyLedger
    from client.privacy.ledger import reset_ledger as reset_ledger_files
    from client.privacy.ledger_file import ledger_path
    from fedge.errors import UsageError
    from policies import FederationPolicy, load_one

    auth_key: Path | None = None
    joined: JoinInfo | None = None
    if (state_dir / JOIN_FILE).exists():
        joined = load_join(state_dir)
        if name is not None and name != joined.name:
            raise UsageError(
                f"--name {name}: this state folder is enrolled as {joined.name} "
                f"({state_dir / JOIN_FILE}); leave --name out or give {joined.name}"
            )
        name = joined.name
        superlink = superlink or joined.superlink
        ca = ca or Path(joined.root_certificates)
        auth_key = Path(joined.auth_private_key)
    if superlink is None or ca is None:
        raise UsageError("--superlink and --ca are needed (or run fedge-client enroll first)")
    if not ca.is_file():
        raise UsageError(f"--ca {ca}: CA certificate not found")
    doc = load_one(policy, FederationPolicy)
    if reset_ledger:
        for archived in reset_ledger_files(ledger_path(state_dir, doc.metadata.name)):
            out.print(f"privacy ledger archived as {archived}", markup=False)
    # Refuse now, not at the first round, a ledger that is missing, rolled back or altered.
    PrivacyLedger.for_policy(state_dir, doc)
    resolve_model_source(doc.spec.model.source, base_dir=policy.parent)
    loaded = load_labelled(data, num_labels=doc.spec.model.num_labels)
    check_not_revoked(joined, state_dir)
    client_name = name or doc.metadata.name + "-client"
    settings: dict[str, Any] = {
        "superlink": superlink,
        "root_certificates": ca,
        "runtime_port": port,
        "data_path": data,
        "state_dir": state_dir,
        "client_name": client_name,
        "policy_path": policy,
        "auth_private_key": auth_key,
    }
    node: SuperNodeProcess | WarmSuperNodeProcess
    if warm:
        node = WarmSuperNodeProcess(warm_commands(**settings), state_dir=state_dir)
    else:
        node = SuperNodeProcess(supernode_command(**settings), state_dir=state_dir)
    logs = f"{node.log_path}" + (
        f", {node.superexec_log_path}" if isinstance(node, WarmSuperNodeProcess) else ""
    )

    def joined_line() -> None:
        out.print(
            f"joined {superlink} as {client_name} with {len(loaded)} examples; log {logs}",
            markup=False,
        )

    serve(
        node,
        state_dir=state_dir,
        join=joined,
        on_start=joined_line,
        say=lambda line: out.print(line, markup=False),
    )
    out.print("stopped on SIGTERM: the SuperNode and everything it started are stopped")


app.command("enroll")(enroll_command)

main = main_for(app, "fedge-client")
