"""``fedge place``: plan, apply, inspect and share the placement of signed artifacts.

``plan`` reads only files (no cloud is contacted) and shows every target's decision with its
reason and cost; ``apply`` uploads, verifies, fails over and cleans up, recording what it did in
the ``--state`` SQLite file, one apply at a time per state file (``<state>.lock``: a second one
is refused with exit 2, or waits with ``--wait SECONDS``); ``status`` reads that file; ``urls``
prints presigned download URLs for the rollout (JSON by default, or writes them with ``--out``).
``plan``, ``status`` and ``urls`` take ``-o table|wide|json|yaml`` (fedge.cli); their documents
are described in fedge.output_schemas. cloud_adapters (and libcloud) load only inside the
commands, so ``fedge --help`` stays fast.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from fedge.cli import Column, OutputFormat, OutputOption, emit, err, out, print_table
from fedge.errors import ArtifactError, UsageError
from fedge.output import document

if TYPE_CHECKING:
    from cloud_adapters.placement.planner import Plan
    from cloud_adapters.placement.replicas import Event
    from cloud_adapters.stores.base import ArtifactStore
    from cloud_adapters.stores.factory import StoreFactory
    from cloud_adapters.stores.retry import RetryPolicy
    from fedge.manifest import Manifest
    from policies.documents import CloudInventory, PlacementPolicy

__all__ = ["place_app", "register"]

place_app = typer.Typer(
    help="Place signed artifacts on clouds by policy: plan, apply, status, urls.",
    no_args_is_help=True,
)

PolicyOption = Annotated[
    Path, typer.Option("--policy", help="PlacementPolicy YAML file.", show_default=False)
]
InventoryOption = Annotated[
    Path, typer.Option("--inventory", help="CloudInventory YAML file.", show_default=False)
]
ArtifactOption = Annotated[
    Path,
    typer.Option("--artifact", help="Signed artifact folder (manifest.json, manifest.sig, files)."),
]
StateOption = Annotated[
    Path, typer.Option("--state", help="SQLite file where placement state is kept.")
]
DEFAULT_STATE = Path("fedge-placement.sqlite")
MAX_WAIT_S = 86400.0  # --wait: a day is longer than any apply should take


def _documents(
    policy: Path | None, inventory: Path
) -> tuple[PlacementPolicy | None, CloudInventory]:
    """Validate the files together (preference names are checked against the inventory)."""
    from policies import check_files
    from policies.documents import CloudInventory, PlacementPolicy

    files = [inventory] if policy is None or policy == inventory else [policy, inventory]
    report = check_files(files)
    report.raise_for_problems()
    placements = [
        e.document
        for e in report.documents
        if isinstance(e.document, PlacementPolicy) and (policy is None or e.file == str(policy))
    ]
    inventories = [
        e.document
        for e in report.documents
        if isinstance(e.document, CloudInventory) and e.file == str(inventory)
    ]
    if policy is not None and len(placements) != 1:
        raise UsageError(
            f"--policy {policy}: expected one PlacementPolicy, found {len(placements)}"
        )
    if len(inventories) != 1:
        raise UsageError(
            f"--inventory {inventory}: expected one CloudInventory, found {len(inventories)}"
        )
    found = placements[0] if policy is not None else None
    assert found is None or isinstance(found, PlacementPolicy)  # noqa: S101 - narrowed above
    only = inventories[0]
    assert isinstance(only, CloudInventory)  # noqa: S101
    return found, only


def _manifest(artifact: Path) -> Manifest:
    from fedge.manifest import MANIFEST_NAME, Manifest

    path = artifact / MANIFEST_NAME
    try:
        return Manifest.from_bytes(path.read_bytes())
    except FileNotFoundError as exc:
        raise ArtifactError(
            "--artifact: not a signed artifact folder (no manifest.json)", file=str(path)
        ) from exc
    except OSError as exc:
        raise ArtifactError(f"--artifact: cannot read ({exc.strerror})", file=str(path)) from exc


def _size(value: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    return f"{value} B"  # pragma: no cover


PLAN_STYLES = {"replica": "green", "spare": "yellow", "rejected": "red"}
PLAN_COLUMNS = (
    Column("target", lambda d: d["target"]),
    Column("provider", lambda d: d["provider"]),
    Column("region", lambda d: d["region"]),
    Column("residency", lambda d: d["residency"]),
    Column("decision", lambda d: d["decision"], style=lambda d: PLAN_STYLES[d["decision"]]),
    Column("$/month", lambda d: f"{d['monthlyUsd']:.4f}", justify="right"),
    Column("reason", lambda d: d["reason"]),
)


def _plan_document(plan: Plan, strategy: str) -> dict[str, Any]:
    items = [
        {
            "target": item.target,
            "provider": item.provider,
            "region": item.region,
            "residency": item.residency,
            "decision": item.decision,
            "monthlyUsd": item.monthly_usd,
            "reason": item.reason,
        }
        for item in plan.decisions
    ]
    return document(
        "PlacementPlan",
        items,
        policy=plan.policy,
        strategy=strategy,
        enforcement=plan.enforcement,
        artifact=plan.artifact,
        version=plan.version,
        sizeBytes=plan.size_bytes,
        selected=list(plan.selected),
        preferred=list(plan.preferred),
        monthlyUsd=plan.monthly_usd,
        refused=plan.refused,
        violations=list(plan.violations),
        policyViolations=list(plan.policy_violations),
        warnings=list(plan.warnings),
        down=[{"target": target, "reason": why} for target, why in plan.down],
    )


def _retry(attempts: int, timeout: float) -> RetryPolicy:
    from cloud_adapters.stores.retry import RetryPolicy

    if attempts < 1:
        raise UsageError("--attempts must be at least 1")
    if timeout <= 0:
        raise UsageError("--timeout must be positive")
    return RetryPolicy(attempts=attempts, timeout_s=timeout)


def _factory(inventory_file: Path, retry: RetryPolicy) -> StoreFactory:
    from cloud_adapters.stores.factory import open_store
    from policies.inventory import Target

    base = inventory_file.resolve().parent

    def open_one(target: Target) -> ArtifactStore:
        return open_store(target, retry=retry, base_dir=base)

    return open_one


def _show(event: Event) -> None:
    if event.kind in ("check", "uploaded"):
        return
    size = f" ({_size(event.size)})" if event.kind == "upload" else ""
    line = f"{event.target or '-':<14} {event.kind:<7} {event.detail}{size}"
    # Progress (a target found down included) goes to stdout: stderr keeps the one error line.
    (err if event.kind == "warn" else out).print(line, markup=False)


@place_app.command("plan")
def plan(
    *,
    policy: PolicyOption,
    inventory: InventoryOption,
    artifact: ArtifactOption,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Show where the artifact would go, why each target is or is not used, and the cost."""
    from cloud_adapters.placement.planner import plan_placement
    from cloud_adapters.stores.errors import PlacementRefusedError

    placement, clouds = _documents(policy, inventory)
    assert placement is not None  # noqa: S101 - --policy is required here
    result = plan_placement(placement, clouds, _manifest(artifact))
    emit(
        _plan_document(result, placement.spec.strategy.type),
        output,
        columns=PLAN_COLUMNS,
        title=(
            f"placement plan: {result.artifact} {result.version} ({_size(result.size_bytes)}), "
            f"policy {result.policy} ({placement.spec.strategy.type}, {result.enforcement})"
        ),
        caption=(
            f"{len(result.selected)} replica(s): {', '.join(result.selected) or 'none'}; "
            f"estimated storage ${result.monthly_usd:.4f}/month"
        ),
    )
    for warning in result.warnings:
        err.print(f"warning: {warning}", markup=False)
    if result.refused:
        raise PlacementRefusedError(
            f"policy {result.policy} cannot be met: {'; '.join(result.policy_violations)}"
        )


@place_app.command("apply")
def apply(
    *,
    policy: PolicyOption,
    inventory: InventoryOption,
    artifact: ArtifactOption,
    state: StateOption = DEFAULT_STATE,
    trusted: Annotated[
        list[str] | None,
        typer.Option(
            "--trusted",
            help="Verify the artifact's signature first: PEM file or ed25519:<base64>. Repeatable.",
        ),
    ] = None,
    attempts: Annotated[
        int, typer.Option("--attempts", help="Tries per store operation (transient errors).")
    ] = 4,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds before one HTTP request gives up.")
    ] = 30.0,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            help="Seconds to wait while another apply holds --state (default 0: refuse at once, "
            "exit 2).",
        ),
    ] = 0.0,
) -> None:
    """Upload, verify, fail over, repair drift and apply retention; record it all in --state.

    One apply at a time per --state: a second one is refused (exit 2) while the first holds the
    lock file <state>.lock, unless --wait gives it time to finish.
    """
    from cloud_adapters.placement.local_artifact import load_local_artifact
    from cloud_adapters.placement.reconciler import Reconciler
    from cloud_adapters.placement.state import PlacementState
    from fedge.signing import parse_public_key

    if not math.isfinite(wait) or not 0 <= wait <= MAX_WAIT_S:
        raise UsageError(f"--wait must be between 0 and {MAX_WAIT_S:g} seconds (got {wait:g})")
    placement, clouds = _documents(policy, inventory)
    assert placement is not None  # noqa: S101
    keys = [parse_public_key(value) for value in trusted or []]
    local = load_local_artifact(artifact, trusted=keys)
    retry = _retry(attempts, timeout)
    with PlacementState(state) as store:
        reconciler = Reconciler(
            placement,
            clouds,
            store,
            open_store=_factory(inventory, retry),
            on_event=_show,
            lock_wait_s=wait,
        )
        report = reconciler.apply(local)
    table = Table(title=f"applied: {local.name} {local.version}, placement {report.health}")
    for column in ("target", "replica", "uploaded", "bytes", "seconds"):
        table.add_column(column)
    for name in report.plan.selected:
        outcome = report.outcomes[name]
        table.add_row(
            name,
            "intact",
            str(len(outcome.uploaded)),
            _size(outcome.bytes_uploaded),
            f"{outcome.seconds:.2f}",
        )
    for version, target, why in report.removed:
        table.add_row(target, f"removed {version}", "-", "-", why)
    print_table(table)
    if report.health == "degraded":
        moved = ", ".join(f"{name} down ({why})" for name, why in sorted(report.down.items()))
        err.print(
            f"warning: placement degraded: {moved}; replicas on {', '.join(report.plan.selected)}"
            " until the preferred targets answer again (re-run apply)",
            markup=False,
        )


STATUS_COLUMNS = (
    Column("artifact", lambda v: v["artifact"]),
    Column("version", lambda v: v["version"]),
    Column("health", lambda v: v["health"]),
    Column("deployed", lambda v: "yes" if v["deployed"] else "no"),
    Column(
        "replicas",
        lambda v: ", ".join(f"{r['target']} ({r['status']})" for r in v["replicas"]) or "none",
    ),
    Column("detail", lambda v: v["detail"] or "-"),
    Column("policy", lambda v: v["policy"], wide=True),
    Column("size", lambda v: _size(v["sizeBytes"]), wide=True, justify="right"),
    Column("updated", lambda v: v["updated"] or "-", wide=True),
    Column("manifest digest", lambda v: v["manifestDigest"], wide=True),
)


@place_app.command("status")
def status(
    *,
    state: StateOption = DEFAULT_STATE,
    artifact: Annotated[
        Path | None, typer.Option("--artifact", help="Only this artifact's versions.")
    ] = None,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Show the recorded placement of every version (reads --state only)."""
    from cloud_adapters.placement.listing import placement_items
    from cloud_adapters.placement.state import PlacementState

    if not state.is_file():
        raise UsageError(f"--state {state}: no placement state yet (run fedge place apply)")
    name = _manifest(artifact).name if artifact is not None else None
    with PlacementState(state) as store:
        items = placement_items(store, name)
    if name is not None and not items:
        raise UsageError(f"--artifact {artifact}: {name} has no placed version in {state}")
    emit(
        document("PlacementStatus", items, state=str(state), artifact=name),
        output,
        columns=STATUS_COLUMNS,
        title=f"placement state: {state}",
        notes=[] if items else ["no versions placed yet"],
    )


URL_COLUMNS = (
    Column("target", lambda r: r["target"] or "-"),
    Column("provider", lambda r: r["provider"] or "-"),
    Column("region", lambda r: r["region"] or "-"),
    Column("residency", lambda r: r["residency"] or "-"),
    Column("expires", lambda r: r["expires"] or "never"),
    Column("files", lambda r: str(len(r["files"])), justify="right"),
    Column("manifest URL", lambda r: r["manifest"], wide=True),
)


@place_app.command("urls")
def urls(
    *,
    inventory: InventoryOption,
    artifact: ArtifactOption,
    state: StateOption = DEFAULT_STATE,
    expires: Annotated[
        str, typer.Option("--expires", help="Lifetime of the URLs: e.g. 15m, 1h, 7d (max 7d).")
    ] = "1h",
    output: OutputOption = OutputFormat.JSON,
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Write the JSON document here (what fedge deploy --urls reads)."
        ),
    ] = None,
) -> None:
    """Print presigned, expiring download URLs of every intact replica (JSON by default)."""
    from cloud_adapters.placement.state import PlacementState
    from cloud_adapters.placement.urls import replica_urls
    from fedge.atomic import atomic_write_text
    from fedge.durations import parse_duration
    from fedge.output import to_json
    from fedge.replica_urls import urls_document

    try:
        seconds = int(parse_duration(expires))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--expires {expires!r}: {exc}") from exc
    _, clouds = _documents(None, inventory)
    manifest = _manifest(artifact)
    if not state.is_file():
        raise UsageError(f"--state {state}: no placement state yet (run fedge place apply)")
    with PlacementState(state) as store:
        if manifest.version not in {v.version for v in store.versions(manifest.name)}:
            raise UsageError(
                f"--artifact {artifact}: {manifest.name} {manifest.version} was never placed "
                f"in {state} (fedge place apply)"
            )
        found = replica_urls(
            store,
            clouds,
            manifest.name,
            manifest.version,
            open_store=_factory(inventory, _retry(1, 30.0)),
            expires_s=seconds,
        )
    doc = urls_document(manifest.name, manifest.version, found)
    if out_file is None:
        emit(
            doc,
            output,
            columns=URL_COLUMNS,
            rows=doc["replicas"],
            title=f"replica URLs: {manifest.name} {manifest.version}",
            notes=["the URLs themselves: -o json, or --out FILE"],
        )
    else:
        atomic_write_text(out_file, to_json(doc))
        out.print(f"wrote {out_file} ({len(found)} replica(s))")
    if not found:
        from cloud_adapters.stores.errors import PlacementError

        raise PlacementError(f"{manifest.name} {manifest.version}: no intact replica to share")


def register(app: typer.Typer) -> None:
    app.add_typer(place_app, name="place")
