"""What the operator may do from the console, each written to the audit log.

The same operations the CLI offers, through the same functions: an enrollment token
(``fedge enroll token``), revoking a holder (``fedge enroll revoke``, which unregisters its node
from the SuperLink first), stopping a run on the SuperLink (``fedge runs stop``), starting a
rollout of a placed artifact in the background (``fedge deploy --detach``) and rolling a device
back (the ``rollback`` command on MQTT). Every request must say ``confirm: true``: the page asks
the operator first, and a script has to mean it. The registry's audit log records who did what;
the token itself is returned once and never stored in clear.
"""

from __future__ import annotations

import getpass
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge.bounded import InputError, load_json, read_capped, read_capped_text
from fedge.errors import FedgeError, UsageError
from fedge.logs import get_logger
from server.console.fleet_watch import FleetWatch
from server.console.sources import Sources

__all__ = ["ActionSettings", "Actions"]

log = get_logger(__name__)


@dataclass(frozen=True)
class ActionSettings:
    """What actions need beyond the folder: the federation CA, the SuperLink, the broker."""

    ca: Path | None = None  # the federation CA (tokens pin it; the SuperLink's TLS)
    superlink: str | None = None  # HOST:PORT of the SuperLink's Control API (on loopback)
    coordinator: str | None = None  # the enrollment endpoint HOST:PORT holders are told


def _actor() -> str:
    try:
        return f"console ({getpass.getuser()})"
    except (KeyError, OSError):
        return "console"


class Actions:
    def __init__(self, sources: Sources, fleet: FleetWatch, settings: ActionSettings) -> None:
        self.sources = sources
        self.fleet = fleet
        self.settings = settings

    def _registry(self) -> Any:
        from server.enrollment.registry import Registry

        folder = self.sources.registry_dir or self.sources.root / "coordinator"
        self.sources.registry_dir = folder
        return Registry.in_workdir(folder)

    def _control(self) -> Any:
        if self.settings.superlink is None or self.settings.ca is None:
            return None
        from server.enrollment.service import SuperLinkControl
        from server.federation.deployment_engine import write_flwr_home

        home = (self.sources.registry_dir or self.sources.root) / "flwr"
        write_flwr_home(home, address=self.settings.superlink, root_certificates=self.settings.ca)
        return SuperLinkControl(home)

    def issue_token(self, name: str, *, expires: str) -> dict[str, Any]:
        from fedge.enroll_token import ca_fingerprint
        from server.enrollment.rules import parse_expires

        if self.settings.ca is None:
            raise UsageError("the console was started without --federation-ca: tokens pin the CA")
        try:
            ca_text = read_capped_text(self.settings.ca, limit=1 << 20, what="a CA certificate")
        except InputError as exc:
            raise UsageError(f"--federation-ca {exc}") from exc
        issued = self._registry().issue_token(
            name,
            ttl=parse_expires(expires),
            ca_sha256=ca_fingerprint(ca_text),
            actor=_actor(),
            purpose="enroll",
        )
        where = self.settings.coordinator or "COORDINATOR:PORT"
        return {
            "name": issued.name,
            "token": issued.token,
            "expiresAt": issued.expires_at,
            "command": f"fedge-client enroll --coordinator {where} --token <token> "
            "--state-dir <their state folder>",
        }

    def revoke(self, name: str, *, reason: str) -> dict[str, Any]:
        from server.enrollment.service import revoke_holder

        before = revoke_holder(
            self._registry(), self._control(), name, actor=_actor(), reason=reason
        )
        return {"name": name, "was": before.state, "nodeId": before.node_id}

    def stop_run(self, run: str) -> dict[str, Any]:
        from server.federation.deployment_engine import stop_run, write_flwr_home

        folder = self.sources.run(run)
        if folder is None:
            raise UsageError(f"run {run}: no such run in {self.sources.root}")
        progress = self.sources.progress(folder)
        if progress is None or not str(progress.get("flowerRun", "")).isdigit():
            raise UsageError(f"run {run}: no Flower run id recorded (was it run on a SuperLink?)")
        if self.settings.superlink is None or self.settings.ca is None:
            raise UsageError("the console was started without --superlink and --federation-ca")
        flower_run = int(progress["flowerRun"])
        with tempfile.TemporaryDirectory(prefix="fedge-console-flwr-") as scratch:
            home = Path(scratch)
            write_flwr_home(
                home, address=self.settings.superlink, root_certificates=self.settings.ca
            )
            stop_run(flower_run, flwr_home=home)
        self._registry().record(
            "run.stopped", run, actor=_actor(), detail=f"flower run {flower_run}"
        )
        return {"run": run, "flowerRun": str(flower_run), "stopped": True}

    def rollout(
        self, *, artifact: str, urls: str, rollout: str, devices: list[str] | None
    ) -> dict[str, Any]:
        from server.fleet.controller import desired_for_artifact
        from server.fleet.detach import detached_argv, start_detached

        settings = self.fleet.settings
        if settings is None:
            raise UsageError("the console was started without a broker (--broker, --fleet)")
        paths = {}
        for field, value in (("artifact", artifact), ("urls", urls), ("rollout", rollout)):
            path = (self.sources.root / value).resolve()
            if not path.is_relative_to(self.sources.root.resolve()) or not path.exists():
                raise UsageError(f"{field} {value}: not found in {self.sources.root}")
            paths[field] = path
        try:
            replica_urls = load_json(
                read_capped(paths["urls"], limit=4 << 20, what="a replica-URL document"),
                source=str(paths["urls"]),
            )
        except InputError as exc:
            raise UsageError(f"urls {exc}") from exc
        deployment_id = desired_for_artifact(paths["artifact"], replica_urls).deployment_id
        params: dict[str, Any] = {
            "artifact": paths["artifact"],
            "urls": paths["urls"],
            "rollout": paths["rollout"],
            "devices": ",".join(devices) if devices else None,
            **dict(settings.flags),
        }
        log_path = self.sources.root / f"fedge-deploy-{deployment_id}.log"
        argv = detached_argv(params, deployment_id, log=log_path)
        _process, doc = start_detached(
            argv, settings.endpoint, settings.fleet, deployment_id, log=log_path
        )
        self._registry().record(
            "rollout.started",
            deployment_id,
            actor=_actor(),
            detail=f"{doc.artifact} {doc.version} on fleet {settings.fleet}",
        )
        return {"deploymentId": deployment_id, "stage": doc.stage, "log": str(log_path)}

    def rollback(self, device: str) -> dict[str, Any]:
        try:
            self.fleet.rollback(device)
        except FedgeError as exc:
            raise UsageError(str(exc)) from exc
        self._registry().record("device.rollback", device, actor=_actor(), detail="")
        return {"device": device, "command": "rollback"}
