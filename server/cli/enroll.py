"""``fedge enroll``: who may join the federation, for the operator.

``token`` issues a one-time, expiring token for a named data holder; the data holder redeems it
with ``fedge-client enroll`` against ``serve``, the coordinator's enrollment endpoint, which
registers the holder's public key with the SuperLink. ``list`` and ``audit`` show the registry
(``-o table|wide|json|yaml``, documents in fedge.output_schemas), ``revoke`` unregisters a
holder's node at once (the SuperLink keeps running), ``rotate`` issues a token that replaces an
active holder's key, and ``sync`` makes the SuperLink's node list agree with the registry both
ways (it re-registers the keys a restarted SuperLink forgot, and reports, or with
``--unregister-unknown`` removes, nodes that no data holder has). The SuperLink must run with
``--enable-supernode-auth``, on loopback behind the Fleet API proxy (``fedge proxy``), so that
only the operator reaches its Control API.
"""

from __future__ import annotations

import datetime
import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedge.cli import Column, OutputFormat, OutputOption, emit, out
from fedge.errors import FederationError, UsageError
from fedge.output import document

if TYPE_CHECKING:
    from server.enrollment.rules import IssuedToken, Purpose
    from server.enrollment.service import SuperLinkControl

__all__ = ["enroll_app", "issue_token", "register"]

enroll_app = typer.Typer(
    help="Enroll data holders: one-time tokens, the enrollment endpoint, revocation.",
    no_args_is_help=True,
)

WorkdirOption = Annotated[
    Path,
    typer.Option("--workdir", help="The coordinator's folder (holds enrollment.sqlite)."),
]
ExpiresOption = Annotated[
    str, typer.Option("--expires", help="How long the token works: 30m, 24h, 7d (at most 30d).")
]
CaOption = Annotated[
    Path, typer.Option("--ca", help="The federation's CA certificate (fedge certs), PEM.")
]
SuperlinkOption = Annotated[
    str | None,
    typer.Option("--superlink", help="The SuperLink's HOST:PORT (TLS), to change its nodes."),
]
OptionalCaOption = Annotated[
    Path | None, typer.Option("--ca", help="With --superlink: the CA certificate (PEM).")
]
DEFAULT_WORKDIR = Path("fedge-coordinator")


def _actor() -> str:
    try:
        return f"operator {getpass.getuser()}"
    except (KeyError, OSError):  # no user name in a bare container
        return "operator"


def _read_ca(ca: Path) -> str:
    try:
        return ca.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--ca {ca}: cannot read the CA certificate") from exc


def _control(workdir: Path, superlink: str | None, ca: Path | None) -> SuperLinkControl | None:
    if superlink is None:
        return None
    if ca is None:
        raise UsageError("--superlink needs --ca, the federation's CA certificate (TLS)")
    from server.enrollment.service import SuperLinkControl
    from server.federation.deployment_engine import write_flwr_home

    home = workdir / "flwr"
    write_flwr_home(home, address=superlink, root_certificates=ca)
    return SuperLinkControl(home)


def _show_token(issued: IssuedToken, coordinator: str | None) -> None:
    from server.enrollment.rules import format_time

    out.print(
        f"{issued.purpose} token for {issued.name}, valid once until "
        f"{format_time(issued.expires_at)}:"
    )
    out.print(issued.token, markup=False)
    where = coordinator or "COORDINATOR:PORT"
    out.print(
        f"the data holder runs: fedge-client enroll --coordinator {where} --token <token> "
        "--state-dir <their state folder>",
        markup=False,
    )


def issue_token(
    name: str, ca: Path, *, expires: str, workdir: Path, purpose: Purpose
) -> IssuedToken:
    """A one-time token for ``name`` pinning the CA in ``ca``; shared with ``fedge kit holder``."""
    from fedge.enroll_token import ca_fingerprint
    from server.enrollment.registry import Registry
    from server.enrollment.rules import parse_expires

    ttl = parse_expires(expires)
    return Registry.in_workdir(workdir).issue_token(
        name, ttl=ttl, ca_sha256=ca_fingerprint(_read_ca(ca)), actor=_actor(), purpose=purpose
    )


@enroll_app.command("token")
def token(
    name: Annotated[str, typer.Argument(help="The data holder's name.")],
    ca: CaOption,
    *,
    expires: ExpiresOption = "24h",
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    coordinator: Annotated[
        str | None,
        typer.Option("--coordinator", help="Enrollment HOST:PORT to show in the instructions."),
    ] = None,
) -> None:
    """Issue a one-time, expiring enrollment token for a data holder (pending until used)."""
    issued = issue_token(name, ca, expires=expires, workdir=workdir, purpose="enroll")
    _show_token(issued, coordinator)


@enroll_app.command("rotate")
def rotate(
    name: Annotated[str, typer.Argument(help="An active data holder.")],
    ca: CaOption,
    *,
    expires: ExpiresOption = "24h",
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    coordinator: Annotated[
        str | None,
        typer.Option("--coordinator", help="Enrollment HOST:PORT to show in the instructions."),
    ] = None,
) -> None:
    """Issue a token that replaces an active holder's key; its old key is unregistered once
    the holder enrolls the new one."""
    issued = issue_token(name, ca, expires=expires, workdir=workdir, purpose="rotate")
    _show_token(issued, coordinator)


HOLDER_COLUMNS = (
    Column("name", lambda h: h["name"]),
    Column("state", lambda h: h["state"]),
    Column("key", lambda h: h["fingerprint"] or "-"),
    Column("node", lambda h: "-" if h["nodeId"] is None else str(h["nodeId"])),
    Column("since", lambda h: _shown_time(h["updatedAt"])),
    Column("created", lambda h: _shown_time(h["createdAt"]), wide=True),
    Column("public key", lambda h: h["publicKey"] or "-", wide=True),
)
AT_SUPERLINK = Column("at SuperLink", lambda h: h["atSuperLink"] or "-")


def _shown_time(iso: str) -> str:
    from server.enrollment.rules import format_time

    return format_time(datetime.datetime.fromisoformat(iso).timestamp())


@enroll_app.command("list")
def list_holders(
    *,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    superlink: SuperlinkOption = None,
    ca: OptionalCaOption = None,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """List data holders; with --superlink also each node's status at the SuperLink."""
    from server.enrollment.listing import holder_items
    from server.enrollment.registry import Registry

    holders = Registry.in_workdir(workdir).holders()
    control = _control(workdir, superlink, ca)
    nodes = control.nodes() if control is not None else None
    items = holder_items(holders, nodes)
    columns = list(HOLDER_COLUMNS)
    if nodes is not None:
        columns.insert(4, AT_SUPERLINK)
    emit(
        document("HolderList", items, workdir=str(workdir), superlink=superlink),
        output,
        columns=columns,
        title=f"data holders ({workdir})",
        notes=[f"{len(holders)} data holder(s)"],
    )


@enroll_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The data holder to shut out, for good.")],
    *,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    superlink: SuperlinkOption = None,
    ca: OptionalCaOption = None,
    reason: Annotated[str, typer.Option("--reason", help="Why, for the audit log.")] = "",
) -> None:
    """Revoke a data holder: its node is unregistered from the running SuperLink at once."""
    from server.enrollment.registry import Registry
    from server.enrollment.service import revoke_holder

    registry = Registry.in_workdir(workdir)
    before = revoke_holder(
        registry, _control(workdir, superlink, ca), name, actor=_actor(), reason=reason
    )
    node = f"; SuperLink node {before.node_id} unregistered" if before.node_id is not None else ""
    out.print(f"revoked {name} (was {before.state}){node}")


AUDIT_COLUMNS = (
    Column("seq", lambda e: str(e["seq"]), justify="right"),
    Column("at", lambda e: _shown_time(e["at"])),
    Column("action", lambda e: e["action"]),
    Column("subject", lambda e: e["subject"]),
    Column("detail", lambda e: e["detail"] or "-"),
    Column("actor", lambda e: e["actor"]),
)


@enroll_app.command("audit")
def audit(
    *,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    name: Annotated[str | None, typer.Option("--name", help="Only this data holder.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="The newest N entries.")] = 50,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Print the audit log: every change to the registry, and who made it."""
    from server.enrollment.registry import Registry

    registry = Registry.in_workdir(workdir)
    from server.enrollment.listing import audit_items

    entries = registry.audit(subject=name, limit=limit)
    if name is not None and not entries and name not in {h.name for h in registry.holders()}:
        raise UsageError(f"--name {name}: no data holder of that name (see fedge enroll list)")
    items = audit_items(entries)
    emit(
        document("AuditLog", items, workdir=str(workdir), name=name),
        output,
        columns=AUDIT_COLUMNS,
        title=f"enrollment audit log ({workdir})",
        notes=[f"{len(entries)} audit entr{'y' if len(entries) == 1 else 'ies'}"],
    )


@enroll_app.command("sync")
def sync(
    superlink: Annotated[
        str, typer.Option("--superlink", help="The SuperLink's HOST:PORT (its loopback port).")
    ],
    ca: CaOption,
    *,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    unregister_unknown: Annotated[
        bool,
        typer.Option(
            "--unregister-unknown",
            help="Also unregister nodes the SuperLink admits that no data holder has.",
        ),
    ] = False,
) -> None:
    """Make the SuperLink's node list match the registry, both ways (audited).

    Registers the keys of active holders the SuperLink forgot (after a restart), unregisters
    revoked holders' nodes, and reports nodes that no data holder has (registered behind
    fedge's back); --unregister-unknown removes those. Exit 1 while anything still disagrees.
    """
    from server.enrollment.registry import Registry
    from server.enrollment.service import sync_nodes

    control = _control(workdir, superlink, ca)
    assert control is not None  # noqa: S101 - superlink is given
    report = sync_nodes(
        Registry.in_workdir(workdir),
        control,
        actor=_actor(),
        unregister_unknown=unregister_unknown,
    )
    for line in report.changes:
        out.print(line, markup=False)
    for line in report.problems:
        out.print(f"problem: {line}", markup=False)
    if not report.agrees:
        raise FederationError(
            f"{len(report.changes)} change(s), {len(report.problems)} problem(s) left: the "
            "SuperLink does not agree with the registry (see fedge enroll audit)"
        )
    out.print(f"{len(report.changes)} change(s); the SuperLink agrees with the registry")


@enroll_app.command("serve")
def serve(
    certs: Annotated[
        Path, typer.Option("--certs", help="Folder from `fedge certs` (ca.crt, server.pem/key).")
    ],
    superlink: Annotated[
        str, typer.Option("--superlink", help="The SuperLink's HOST:PORT, for its Control API.")
    ],
    *,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    advertise: Annotated[
        str | None,
        typer.Option(
            "--advertise",
            help="HOST:PORT that data holders dial: the Fleet API proxy (default --superlink).",
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port.")] = 9443,
    he_public_context: Annotated[
        Path | None,
        typer.Option("--he-public-context", help="The federation's public HE context, if any."),
    ] = None,
) -> None:
    """Run the HTTPS enrollment endpoint until Ctrl-C."""
    from fedge.tls import CertPaths
    from server.enrollment.registry import Registry
    from server.enrollment.service import Enroller, EnrollmentServer, sync_nodes

    paths = CertPaths.in_directory(certs)
    ca_pem = _read_ca(paths.ca_cert)
    he_bytes = None
    if he_public_context is not None:
        try:
            he_bytes = he_public_context.read_bytes()
        except OSError as exc:
            raise UsageError(f"--he-public-context {he_public_context}: {exc.strerror}") from exc
    control = _control(workdir, superlink, paths.ca_cert)
    assert control is not None  # noqa: S101 - superlink is given
    registry = Registry.in_workdir(workdir)
    report = sync_nodes(registry, control, actor="enroll-service (start)")
    for line in report.changes:
        out.print(f"sync: {line}", markup=False)
    for line in report.problems:
        out.print(f"sync: problem: {line}", markup=False)
    enroller = Enroller(
        registry,
        control,
        superlink=advertise or superlink,
        ca_cert=ca_pem,
        he_public_context=he_bytes,
    )
    server = EnrollmentServer(
        enroller, certfile=paths.server_cert, keyfile=paths.server_key, host=host, port=port
    )
    with server:
        out.print(f"enrollment endpoint https://{server.address} (Ctrl-C to stop)")
        server.wait()


def register(app: typer.Typer) -> None:
    app.add_typer(enroll_app, name="enroll")
