"""The Fleet API proxy: nginx in front of a SuperLink that listens on loopback only.

Flower 1.41's ``flower-superlink`` serves every API on one HTTPS port (``--host``/``--port``):
the Fleet API that SuperNodes call (``POST /v1/fleet/<method>``), the Control API that ``flwr``
calls (``/v1/control/...``: register and unregister nodes, list them, start and stop runs), the
Runtime API of its SuperExec and ServerApps (``/v1/runtime/...``), a health route and ``/docs``.
Without Flower's enterprise account plugin the Control API asks for no credential at all, so
anyone who can open a TLS connection to that port (the CA certificate is public: the enrollment
endpoint hands it to anyone) could register a rogue node or unregister an enrolled one. Flower
offers no flag to split the APIs onto different ports any more (``--control-api-address`` and
``--fleet-api-address`` are deprecated and ignored), so the split is made in front of it:

* the SuperLink listens on ``127.0.0.1`` only (:func:`server.federation.deployment_engine.
  superlink_command`'s default), where the operator's own ``flwr``/``fedge`` commands reach it;
* nginx listens on the public address with the federation's server certificate and forwards
  exactly ``POST /v1/fleet/<method>`` to the SuperLink, over TLS checked against the
  federation's CA; every other path (the Control and Runtime APIs, health, docs) gets 403.

SuperNode authentication passes through untouched: a SuperNode signs a timestamp with its key
and sends the signature in request headers, which nginx forwards as they came.

:func:`render_site` writes the ``server``/``upstream`` blocks (for a system nginx's
``/etc/nginx/conf.d/``; ``deploy/nginx/fedge-fleet.conf`` is one rendering, kept equal by a
test), :func:`render_main` a whole ``nginx.conf`` whose pid file, logs and temporary folders all
live in one run folder, and :class:`FleetProxy` runs ``nginx -c <run>/nginx.conf -g 'daemon
off;'`` under fedge's supervisor (fedge/process.py): no root and no change under ``/etc``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from fedge.atomic import atomic_write_text
from fedge.errors import FederationError, UsageError
from fedge.process import ManagedProcess
from fedge.tls import CertPaths

__all__ = [
    "FLEET_PATH",
    "MAIN_CONF",
    "SITE_CONF",
    "FleetProxy",
    "ProxyFiles",
    "ProxySettings",
    "check_upstream",
    "find_nginx",
    "nginx_command",
    "parse_address",
    "render_main",
    "render_site",
    "write_config",
]

SITE_CONF = "fedge-fleet.conf"
MAIN_CONF = "nginx.conf"
PID_FILE = "nginx.pid"
ERROR_LOG = "error.log"
ACCESS_LOG = "access.log"
TEMP_DIR = "tmp"
TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
# Every Fleet API route is ``POST /v1/fleet/<kebab-case method>`` (flwr/superlink/routers/fleet).
FLEET_PATH = r"^/v1/fleet/[a-z][a-z-]*$"
DEFAULT_UPSTREAM_NAME = "localhost"
DEFAULT_MAX_BODY = "256m"
# Where nginx lives on Debian (/usr/sbin, often not on a user's PATH).
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_SIZE = re.compile(r"[1-9][0-9]{0,5}[kKmMgG]?")
# nginx reads ``$`` in some path directives (ssl_certificate) as a variable; quotes, braces,
# semicolons and backslashes would end or break the directive.
_UNSAFE_PATH = re.compile(r"[\x00-\x1f\"'\\${};]")


def parse_address(text: str, *, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); a UsageError names ``flag``."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            host = ""
    elif not _HOST_NAME.fullmatch(host):
        host = ""
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{flag} {text}: expected HOST:PORT (or [IPv6]:PORT)")
    return host, int(port)


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _path(path: str | os.PathLike[str], *, what: str) -> str:
    resolved = str(Path(path).resolve())
    if _UNSAFE_PATH.search(resolved):
        raise UsageError(f"{what} {resolved}: nginx cannot take this path (quote, $, ; or brace)")
    return resolved


@dataclass(frozen=True)
class ProxySettings:
    """What the proxy config says.

    ``listen``: where SuperNodes connect (the address data holders are given). ``superlink``:
    the SuperLink's loopback ``HOST:PORT``. ``certs``: the federation's ``fedge certs`` folder;
    nginx presents ``server.pem`` (it must name the public address) and checks the SuperLink's
    certificate against ``ca.crt`` under ``upstream_name``, a DNS name in that certificate
    (nginx checks names, not IP addresses). ``max_body``: the largest request nginx forwards
    (Flower sends model weights in chunks of 5 MB).
    """

    listen: str
    superlink: str
    certs: CertPaths
    upstream_name: str = DEFAULT_UPSTREAM_NAME
    max_body: str = DEFAULT_MAX_BODY

    def __post_init__(self) -> None:
        parse_address(self.listen, flag="--listen")
        parse_address(self.superlink, flag="--superlink")
        if (
            not _HOST_NAME.fullmatch(self.upstream_name)
            or self.upstream_name.replace(".", "").isdigit()
        ):
            raise UsageError(
                f"--upstream-name {self.upstream_name}: expected a DNS name in the SuperLink's "
                "certificate (nginx does not check IP addresses)"
            )
        if not _SIZE.fullmatch(self.max_body):
            raise UsageError(f"--max-body {self.max_body}: expected a size such as 64m or 1g")


_SITE = """\
# fedge: the Fleet API proxy, as `fedge proxy config` writes it (server/federation/fleet_proxy.py).
#
# The SuperLink (flower-superlink --host 127.0.0.1 --port @SUPERLINK_PORT@) serves its Fleet,
# Control and Runtime APIs on one loopback port. This server block is the only way in from the
# network: it forwards POST /v1/fleet/<method> (what SuperNodes call) and refuses every other
# path with 403, the Control API (flwr supernode register/unregister/ls, flwr run) above all.
# The operator's flwr and fedge commands talk to 127.0.0.1:@SUPERLINK_PORT@ directly.
#
# For a system nginx: put this file in /etc/nginx/conf.d/ (it goes inside http { }), make sure
# nginx can read the key, then `nginx -t && systemctl reload nginx`. Or run
# `fedge proxy run` (the same blocks in a private nginx.conf, no root needed).

upstream fedge_superlink {
    server @SUPERLINK@;
    keepalive 16;
}

server {
    # Where SuperNodes connect: give this address to data holders (fedge enroll serve
    # --advertise). server.pem must name it (fedge certs --host).
    listen @LISTEN@ ssl;
    server_tokens off;

    ssl_certificate "@SERVER_CERT@";
    ssl_certificate_key "@SERVER_KEY@";
    ssl_protocols TLSv1.2 TLSv1.3;

    # Flower chunks model weights into 5 MB objects; the SuperLink applies its own limits.
    client_max_body_size @MAX_BODY@;

    # The Fleet API: every route is POST /v1/fleet/<kebab-case method>.
    location ~ ^/v1/fleet/[a-z][a-z-]*$ {
        # The raw request line too, before nginx decodes and normalizes it: no %-encoded,
        # dotted or query-string detour reaches the SuperLink.
        if ($request_uri !~ "^/v1/fleet/[a-z][a-z-]*$") {
            return 403;
        }
        limit_except POST {
            deny all;
        }

        proxy_pass https://fedge_superlink;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto https;

        # The SuperLink's certificate is checked against the federation's CA, by name.
        proxy_ssl_verify on;
        proxy_ssl_verify_depth 2;
        proxy_ssl_trusted_certificate "@CA_CERT@";
        proxy_ssl_name @UPSTREAM_NAME@;
        proxy_ssl_server_name on;
        proxy_ssl_protocols TLSv1.2 TLSv1.3;
        proxy_ssl_session_reuse on;

        # Stream bodies both ways, never through temporary files.
        proxy_request_buffering off;
        proxy_max_temp_file_size 0;
        proxy_read_timeout 300s;
        proxy_send_timeout 300s;
    }

    # Everything else: the Control API, the Runtime API, health, /docs.
    location / {
        return 403;
    }
}
"""

_MAIN = """\
# fedge: a private nginx for the Fleet API proxy (server/federation/fleet_proxy.py).
# Run: nginx -p "@RUN@" -c "@RUN@/nginx.conf" -e "@RUN@/error.log" -g 'daemon off;'
# (what `fedge proxy run` does). Its pid file, logs and temporary folders all live in @RUN@.

worker_processes 1;
pid "@RUN@/nginx.pid";
error_log "@RUN@/error.log" notice;

events {
    worker_connections 1024;
}

http {
    access_log "@RUN@/access.log";
    client_body_temp_path "@RUN@/tmp/client_body";
    proxy_temp_path "@RUN@/tmp/proxy";
    fastcgi_temp_path "@RUN@/tmp/fastcgi";
    uwsgi_temp_path "@RUN@/tmp/uwsgi";
    scgi_temp_path "@RUN@/tmp/scgi";

    include "@RUN@/fedge-fleet.conf";
}
"""

_PLACEHOLDER = re.compile(r"@[A-Z_]+@")


def _fill(template: str, values: dict[str, str]) -> str:
    text = template
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = _PLACEHOLDER.search(text)
    if left is not None:  # pragma: no cover - a template bug, caught by the tests
        raise AssertionError(f"unfilled placeholder {left.group()}")
    return text


def render_site(settings: ProxySettings) -> str:
    """The ``upstream`` and ``server`` blocks (http context), as text."""
    listen_host, listen_port = parse_address(settings.listen, flag="--listen")
    link_host, link_port = parse_address(settings.superlink, flag="--superlink")
    certs = settings.certs
    return _fill(
        _SITE,
        {
            "SUPERLINK": _format_address(link_host, link_port),
            "SUPERLINK_PORT": str(link_port),
            "LISTEN": _format_address(listen_host, listen_port),
            "SERVER_CERT": _path(certs.server_cert, what="server certificate"),
            "SERVER_KEY": _path(certs.server_key, what="server key"),
            "CA_CERT": _path(certs.ca_cert, what="CA certificate"),
            "UPSTREAM_NAME": settings.upstream_name,
            "MAX_BODY": settings.max_body,
        },
    )


def render_main(run_dir: str | os.PathLike[str]) -> str:
    """A whole ``nginx.conf`` that keeps everything in ``run_dir`` and includes the site file."""
    return _fill(_MAIN, {"RUN": _path(run_dir, what="run folder")})


@dataclass(frozen=True)
class ProxyFiles:
    run_dir: Path
    main: Path
    site: Path
    pid: Path
    error_log: Path
    access_log: Path

    @classmethod
    def in_directory(cls, run_dir: str | os.PathLike[str]) -> ProxyFiles:
        folder = Path(run_dir).resolve()
        return cls(
            run_dir=folder,
            main=folder / MAIN_CONF,
            site=folder / SITE_CONF,
            pid=folder / PID_FILE,
            error_log=folder / ERROR_LOG,
            access_log=folder / ACCESS_LOG,
        )


def write_config(settings: ProxySettings, run_dir: str | os.PathLike[str]) -> ProxyFiles:
    """Write ``fedge-fleet.conf`` and ``nginx.conf`` into ``run_dir`` (made 0700)."""
    for path in (settings.certs.server_cert, settings.certs.server_key, settings.certs.ca_cert):
        if not Path(path).is_file():
            raise UsageError(f"--certs: {path} does not exist (fedge certs makes it)")
    files = ProxyFiles.in_directory(run_dir)
    files.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for kind in TEMP_KINDS:
        (files.run_dir / TEMP_DIR / kind).mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_text(files.site, render_site(settings))
    atomic_write_text(files.main, render_main(files.run_dir))
    return files


def find_nginx(nginx: str = "nginx") -> str | None:
    """The nginx executable: ``nginx`` on PATH or in the sbin folders (Debian: /usr/sbin)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    return shutil.which(nginx, path=search)


def nginx_command(executable: str, files: ProxyFiles, *, test: bool = False) -> list[str]:
    """``nginx`` in the foreground on the run folder's config (``test``: only ``-t``)."""
    run = str(files.run_dir)
    command = [executable, "-p", run, "-c", str(files.main), "-e", str(files.error_log)]
    return [*command, "-t", "-q"] if test else [*command, "-g", "daemon off;"]


def _dial_host(host: str) -> str:
    """Where to connect to reach a listener on ``host`` (a wildcard means this machine)."""
    if host in ("0.0.0.0", "*"):  # noqa: S104 - reading a listen address, not binding
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def check_upstream(settings: ProxySettings, *, timeout: float = 5.0) -> bool:
    """Whether the SuperLink answers TLS under ``upstream_name``; False if nothing listens.

    A UsageError when it does answer but its certificate does not carry ``upstream_name``
    (nginx would then answer every SuperNode with 502).
    """
    host, port = parse_address(settings.superlink, flag="--superlink")
    context = ssl.create_default_context(cafile=str(settings.certs.ca_cert))
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=settings.upstream_name),
        ):
            return True
    except ssl.SSLCertVerificationError as exc:
        raise UsageError(
            f"--upstream-name {settings.upstream_name}: the SuperLink at {settings.superlink} "
            f"does not present a certificate for that name under the federation's CA "
            f"({exc.verify_message or exc})"
        ) from exc
    except OSError:
        return False


class FleetProxy:
    """nginx on ``settings``, its files in ``run_dir``, under :class:`ManagedProcess`.

    ``start`` writes the config, has ``nginx -t`` check it (a FederationError with nginx's own
    words if not), starts nginx in the foreground and returns once it listens. As a context
    manager it starts on entry and stops (SIGTERM to its process group) on exit.
    """

    def __init__(
        self,
        settings: ProxySettings,
        run_dir: str | os.PathLike[str],
        *,
        nginx: str = "nginx",
        start_timeout: float = 20.0,
    ) -> None:
        self.settings = settings
        self.files = ProxyFiles.in_directory(run_dir)
        self.nginx = nginx
        self.start_timeout = start_timeout
        self._process: ManagedProcess | None = None

    @property
    def address(self) -> str:
        """Where SuperNodes connect (a wildcard listen address shown as this machine)."""
        host, port = parse_address(self.settings.listen, flag="--listen")
        return _format_address(_dial_host(host), port)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def log_tail(self, chars: int = 2000) -> str:
        try:
            text = self.files.error_log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        if self._process is not None:
            text += self._process.log_text()
        return text[-chars:].strip()

    def start(self) -> FleetProxy:
        if self._process is not None:
            raise FederationError("the Fleet API proxy was started already")
        executable = find_nginx(self.nginx)
        if executable is None:
            raise FederationError(
                f"{self.nginx}: not found on PATH or in /usr/sbin (Debian: apt-get install nginx)"
            )
        files = write_config(self.settings, self.files.run_dir)
        checked = subprocess.run(
            nginx_command(executable, files, test=True),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if checked.returncode != 0:
            detail = " ".join((checked.stderr or checked.stdout).split())[-800:]
            raise FederationError(f"nginx refused the proxy config {files.main}: {detail}")
        managed = ManagedProcess(
            nginx_command(executable, files),
            log_path=files.run_dir / "nginx.out",
            name="nginx (Fleet API proxy)",
            cwd=files.run_dir,
            grace=5.0,
            error=FederationError,
        )
        self._process = managed.start()
        host, port = parse_address(self.address, flag="--listen")
        try:
            managed.wait_for_port(port, host=host, timeout=self.start_timeout)
        except FederationError as exc:
            managed.stop()
            raise FederationError(f"{exc}; nginx says: {self.log_tail(800)}") from exc
        return self

    def stop(self) -> int | None:
        if self._process is None:
            return None
        return self._process.stop()

    def wait(self) -> int:
        """Block until nginx exits (Ctrl-C in ``fedge proxy run``); its exit status."""
        if self._process is None or self._process.process is None:
            raise FederationError("the Fleet API proxy was not started")
        process = self._process.process
        while True:  # short waits: a signal taken by another thread runs its handler only then
            try:
                return process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> FleetProxy:
        return self if self._process is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
