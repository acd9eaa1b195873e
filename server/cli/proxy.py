"""``fedge proxy``: nginx in front of the SuperLink, so that only SuperNodes' calls get in.

The SuperLink serves its Fleet, Control and Runtime APIs on one port, and the Control API
(register and unregister nodes, runs) asks for no credential; it must listen on 127.0.0.1 only.
``config`` writes the nginx configuration that forwards just the Fleet API from the public
address (for a system nginx, or to run by hand); ``run`` runs a private nginx on it until
Ctrl-C. See server/federation/fleet_proxy.py.
"""

from __future__ import annotations

import shlex
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedge.cli import out
from fedge.errors import FederationError

if TYPE_CHECKING:
    from server.federation.fleet_proxy import ProxySettings

__all__ = ["proxy_app", "register"]

proxy_app = typer.Typer(
    help="The Fleet API proxy: nginx lets SuperNodes in and keeps the Control API private.",
    no_args_is_help=True,
)

CertsOption = Annotated[
    Path,
    typer.Option("--certs", help="Folder from `fedge certs` (ca.crt, server.pem/key)."),
]
ListenOption = Annotated[
    str,
    typer.Option("--listen", help="HOST:PORT nginx listens on; data holders dial it."),
]
SuperlinkOption = Annotated[
    str,
    typer.Option("--superlink", help="The SuperLink's loopback HOST:PORT (flower-superlink)."),
]
UpstreamNameOption = Annotated[
    str,
    typer.Option(
        "--upstream-name", help="A DNS name in the SuperLink's certificate, checked by nginx."
    ),
]
MaxBodyOption = Annotated[
    str, typer.Option("--max-body", help="Largest request forwarded (nginx size: 256m, 1g).")
]
DEFAULT_LISTEN = "0.0.0.0:9095"
DEFAULT_SUPERLINK = "127.0.0.1:9092"


def _settings(
    certs: Path, listen: str, superlink: str, upstream_name: str, max_body: str
) -> ProxySettings:
    from fedge.tls import CertPaths
    from server.federation.fleet_proxy import ProxySettings

    return ProxySettings(
        listen=listen,
        superlink=superlink,
        certs=CertPaths.in_directory(certs),
        upstream_name=upstream_name,
        max_body=max_body,
    )


@proxy_app.command("config")
def config(
    output: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for fedge-fleet.conf and nginx.conf.")
    ],
    certs: CertsOption,
    *,
    listen: ListenOption = DEFAULT_LISTEN,
    superlink: SuperlinkOption = DEFAULT_SUPERLINK,
    upstream_name: UpstreamNameOption = "localhost",
    max_body: MaxBodyOption = "256m",
) -> None:
    """Write the proxy's nginx configuration; print how to use it."""
    from server.federation.fleet_proxy import find_nginx, nginx_command, write_config

    files = write_config(_settings(certs, listen, superlink, upstream_name, max_body), output)
    out.print(f"server blocks   {files.site} (a system nginx: copy it to /etc/nginx/conf.d/)")
    out.print(f"whole config    {files.main} (pid, logs, temporary files in {files.run_dir})")
    command = nginx_command(find_nginx() or "nginx", files)
    out.print(f"run it with:    {shlex.join(command)}", markup=False)
    out.print(f"or:             fedge proxy run --dir {shlex.quote(str(output))} ...", markup=False)
    out.print(
        f"the SuperLink listens on {superlink} only (flower-superlink --host 127.0.0.1); data "
        f"holders dial {listen} (fedge enroll serve --advertise)",
        markup=False,
    )


@proxy_app.command("run")
def run(
    directory: Annotated[
        Path, typer.Option("--dir", help="Run folder: config, pid file, logs (made if missing).")
    ],
    certs: CertsOption,
    *,
    listen: ListenOption = DEFAULT_LISTEN,
    superlink: SuperlinkOption = DEFAULT_SUPERLINK,
    upstream_name: UpstreamNameOption = "localhost",
    max_body: MaxBodyOption = "256m",
) -> None:
    """Run nginx as the Fleet API proxy until Ctrl-C or SIGTERM (no root for a port >= 1024).

    Exit 0 after SIGTERM (systemd's stop), 130 after Ctrl-C; nginx is stopped either way.
    """
    from server.federation.fleet_proxy import FleetProxy, check_upstream

    settings = _settings(certs, listen, superlink, upstream_name, max_body)
    if not check_upstream(settings):
        out.print(
            f"warning: nothing answers at {superlink} yet; SuperNodes get 502 until it does",
            markup=False,
        )

    def terminated(signum: int, frame: object) -> None:
        raise _TerminatedError

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        with FleetProxy(settings, directory) as proxy:
            out.print(
                f"Fleet API proxy on {listen} -> SuperLink {superlink}: only POST /v1/fleet/* "
                f"passes (nginx pid {proxy.pid}, logs in {proxy.files.run_dir}; Ctrl-C to stop)",
                markup=False,
            )
            code = proxy.wait()
    except _TerminatedError:
        out.print("stopped (SIGTERM)")
        return
    finally:
        signal.signal(signal.SIGTERM, previous)
    raise FederationError(f"nginx exited with status {code}: {proxy.log_tail(500)}")


class _TerminatedError(Exception):
    """SIGTERM arrived: leave the ``with`` block (nginx is stopped) and exit 0."""


def register(app: typer.Typer) -> None:
    app.add_typer(proxy_app, name="proxy")
