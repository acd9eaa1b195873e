"""Serving the console: settings, the TLS rule, and a uvicorn server in the foreground or a thread.

On loopback the console may speak plain HTTP (only this machine reaches it); on any other address
it refuses to start without a certificate, because the operator token and the session cookie would
cross the network in the clear. ``fedge certs`` makes a usable certificate and key.
"""

from __future__ import annotations

import ipaddress
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from fedge.errors import UsageError
from fedge.logs import get_logger
from server.console.actions import Actions, ActionSettings
from server.console.app import ConsoleState, build_app
from server.console.fleet_watch import FleetSettings, FleetWatch
from server.console.security import Sessions, allowed_hosts, load_or_make_token
from server.console.sources import discover

__all__ = ["ConsoleServer", "ConsoleSettings", "is_loopback"]

log = get_logger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ConsoleSettings:
    workdir: Path
    host: str = "127.0.0.1"
    port: int = 8765
    tls_cert: Path | None = None
    tls_key: Path | None = None
    names: tuple[str, ...] = ()  # other names the console is reached by (its certificate's)
    registry_dir: Path | None = None
    placement_state: Path | None = None
    runs: tuple[Path, ...] = ()
    fleet: FleetSettings | None = None
    actions: ActionSettings = field(default_factory=ActionSettings)
    interval: float = 1.0

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def check(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UsageError("--tls-cert and --tls-key go together")
        if not is_loopback(self.host) and not self.tls:
            raise UsageError(
                f"--host {self.host}: beyond loopback the console needs TLS; give --tls-cert "
                "and --tls-key (fedge certs makes them), or keep --host 127.0.0.1"
            )
        for flag, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key)):
            if path is not None and not path.is_file():
                raise UsageError(f"{flag} {path}: not a file")
        if not self.workdir.is_dir():
            raise UsageError(f"--workdir {self.workdir}: not a folder")


class _TerminatedError(Exception):
    """SIGTERM arrived (raised again by uvicorn once it has shut down)."""


def _terminated(_signum: int, _frame: FrameType | None) -> None:
    raise _TerminatedError


class ConsoleServer:
    """uvicorn serving the console; :meth:`run` in the foreground, :meth:`start` in a thread."""

    def __init__(self, settings: ConsoleSettings) -> None:
        import uvicorn

        settings.check()
        self.settings = settings
        root = settings.workdir.resolve()
        self.token, self.token_is_new = load_or_make_token(root / ".console")
        sources = discover(
            root,
            registry_dir=settings.registry_dir,
            placement_state=settings.placement_state,
            runs=list(settings.runs),
        )
        self.fleet = FleetWatch(settings.fleet)
        self._port = settings.port
        hosts, origins = self._allowed(settings.port)
        self.state = ConsoleState(
            sources=sources,
            fleet=self.fleet,
            actions=Actions(sources, self.fleet, settings.actions),
            sessions=Sessions(self.token),
            hosts=hosts,
            origins=origins,
            tls=settings.tls,
            interval=settings.interval,
            closing=lambda: bool(self.server.should_exit),
        )
        self.app = build_app(self.state)
        config = uvicorn.Config(
            self.app,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
            ws="none",  # no WebSocket route: leave the protocol (and its imports) out
            ssl_certfile=None if settings.tls_cert is None else str(settings.tls_cert),
            ssl_keyfile=None if settings.tls_key is None else str(settings.tls_key),
            timeout_graceful_shutdown=3,
            timeout_keep_alive=10,
            backlog=512,
            limit_concurrency=1000,
            server_header=False,
            proxy_headers=False,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def _allowed(self, port: int) -> tuple[list[str], list[str]]:
        return allowed_hosts(
            self.settings.host, port, tls=self.settings.tls, names=self.settings.names
        )

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.tls else "http"
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "::") else self.settings.host  # noqa: S104
        return f"{scheme}://{host}:{self.port}/"

    def _bound(self) -> None:
        """Learn the real port (when asked for 0) and let the Host check accept it."""
        servers: Any = getattr(self.server, "servers", [])
        for server in servers:
            for sock in server.sockets:
                self._port = int(sock.getsockname()[1])
        self.state.hosts[:], self.state.origins[:] = self._allowed(self._port)
        self.app.hosts = frozenset(h.lower() for h in self.state.hosts)
        self.app.origins = frozenset(o.lower() for o in self.state.origins)

    def run(self) -> None:
        """Serve until Ctrl-C or SIGTERM, then disconnect the fleet.

        uvicorn shuts down gracefully on either and then raises the signal again for the
        handler that was there before: Ctrl-C becomes KeyboardInterrupt (exit 130), and SIGTERM
        (systemd's stop) returns normally (exit 0) instead of killing the process mid-cleanup.
        """
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _terminated) if main else None
        self.fleet.start()
        try:
            self.server.run()
        except _TerminatedError:
            log.info("console: stopped (SIGTERM)")
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.fleet.stop()

    def start(self, *, timeout: float = 20.0) -> ConsoleServer:
        """Serve from a thread (tests, ``fedge demo --console``); returns once it listens."""
        self.fleet.start()
        # uvicorn installs its signal handlers only on the main thread: this one has none
        self._thread = threading.Thread(target=self.server.run, name="fedge-console", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise UsageError(f"the console did not start on {self.settings.host}:{self._port}")
            time.sleep(0.05)
        self._bound()
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.fleet.stop()

    def __enter__(self) -> ConsoleServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
