"""The console's web application: JSON API, event stream, login, and the static page.

FastAPI over Starlette (both already in Flower's dependency tree), served by uvicorn. The API is
the product: the page in ``static/`` is one client of it, and ``/api/openapi.json`` documents it
for scripts and other dashboards. Documents that a CLI also prints carry the CLI's ``kind`` and
JSON Schema (``fedge/output_schemas.py``); the console's own (overview, runs, one run) are
described in :mod:`server.console.schemas`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from fedge.errors import FedgeError, UsageError
from fedge.output import document
from fedge.output_schemas import schema_for
from server.console.actions import Actions
from server.console.events import ChangeHub
from server.console.fleet_watch import FleetWatch
from server.console.schemas import CONSOLE_SCHEMAS
from server.console.security import Guard, Sessions
from server.console.sources import Sources

__all__ = ["ConsoleState", "build_app"]

STATIC = Path(__file__).parent / "static"
_NEAR_BUDGET = 0.9


@dataclass
class ConsoleState:
    sources: Sources
    fleet: FleetWatch
    actions: Actions
    sessions: Sessions
    hosts: list[str]
    origins: list[str]
    tls: bool
    interval: float = 1.0
    closing: Callable[[], bool] = lambda: False  # the server is shutting down


def _documented(kind: str) -> dict[int | str, dict[str, Any]]:
    schema = CONSOLE_SCHEMAS.get(kind) or schema_for(kind)
    return {200: {"description": kind, "content": {"application/json": {"schema": schema}}}}


class Login(BaseModel):
    token: str = Field(min_length=1, max_length=512)


class Confirmed(BaseModel):
    confirm: bool = Field(description="must be true: the operator confirmed this action")


class TokenAction(Confirmed):
    name: str = Field(min_length=1, max_length=64)
    expires: str = Field(default="24h", max_length=16)


class RevokeAction(Confirmed):
    name: str = Field(min_length=1, max_length=64)
    reason: str = Field(default="", max_length=500)


class RunAction(Confirmed):
    run: str = Field(min_length=1, max_length=300)


class RolloutAction(Confirmed):
    artifact: str = Field(min_length=1, max_length=300, description="folder, below --workdir")
    urls: str = Field(min_length=1, max_length=300, description="urls.json, below --workdir")
    rollout: str = Field(min_length=1, max_length=300, description="RolloutPolicy file")
    devices: list[str] | None = Field(default=None, max_length=10_000)


class DeviceAction(Confirmed):
    device: str = Field(min_length=1, max_length=128)


def _confirmed(action: Confirmed) -> None:
    if not action.confirm:
        raise HTTPException(status_code=400, detail="confirm must be true")


def _alerts(state: ConsoleState, runs: list[dict[str, Any]]) -> list[dict[str, str]]:
    alerts: list[dict[str, str]] = []
    for run in runs:
        if run["state"] in ("failed", "stopped", "error"):
            alerts.append(
                {"level": "error", "view": "runs", "text": f"run {run['name']} {run['state']}"}
            )
    for device in state.fleet.devices()["items"]:
        if device["phase"] == "FAILED" or device["error"]:
            alerts.append(
                {
                    "level": "error",
                    "view": "fleet",
                    "text": f"device {device['device']}: {device['error'] or 'FAILED'}",
                }
            )
    for version in state.sources.placement()["items"]:
        if version["health"] not in ("healthy", "intact", "ok"):
            alerts.append(
                {
                    "level": "warning",
                    "view": "placement",
                    "text": f"{version['artifact']} {version['version']}: {version['health']}",
                }
            )
    if state.fleet.error:
        alerts.append({"level": "warning", "view": "fleet", "text": state.fleet.error})
    return alerts


def build_app(state: ConsoleState) -> Any:
    """The ASGI application: FastAPI routes wrapped in the console's :class:`Guard`."""
    hub = ChangeHub(lambda: _fingerprint(state), interval=state.interval, closing=state.closing)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        hub.start()
        try:
            yield
        finally:
            await hub.stop()

    api = FastAPI(
        title="fedge console",
        description="The operator's live view of a fedge federation, and its actions.",
        version=document("x")["apiVersion"],
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    api.state.console = state
    api.state.hub = hub
    guard = Guard(
        api, sessions=state.sessions, hosts=state.hosts, origins=state.origins, tls=state.tls
    )
    _pages_and_session(api, state, guard)
    _views(api, state, hub)
    _actions(api, state)
    return guard


def _pages_and_session(api: FastAPI, state: ConsoleState, guard: Guard) -> None:
    @api.exception_handler(FedgeError)
    async def fedge_error(_request: Request, exc: FedgeError) -> JSONResponse:
        status = 400 if isinstance(exc, UsageError) else 502
        return JSONResponse({"error": str(exc)}, status_code=status)

    # -- pages ---------------------------------------------------------------------------------

    @api.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @api.get("/login", include_in_schema=False)
    async def login_page() -> FileResponse:
        return FileResponse(STATIC / "login.html", media_type="text/html")

    @api.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    api.mount("/static", StaticFiles(directory=STATIC), name="static")

    # -- session ------------------------------------------------------------------------------

    @api.post("/api/login", tags=["session"])
    async def login(body: Login) -> JSONResponse:
        """Trade the operator token for a session cookie; the answer carries the CSRF token."""
        if not state.sessions.token_matches(body.token):
            await asyncio.sleep(0.2)  # a slower wrong guess
            return JSONResponse({"error": "wrong token"}, status_code=401)
        sid, session = state.sessions.open()
        response = JSONResponse({"csrf": session.csrf})
        response.headers["set-cookie"] = guard.cookie(sid)
        return response

    @api.post("/api/logout", tags=["session"])
    async def logout(request: Request) -> JSONResponse:
        caller = request.scope["state"].get("caller")
        state.sessions.close(None if caller is None else caller.sid)
        response = JSONResponse({"loggedOut": True})
        response.headers["set-cookie"] = guard.cookie("", clear=True)
        return response

    @api.get("/api/session", tags=["session"])
    async def session(request: Request) -> dict[str, Any]:
        """Who is asking (session or token) and, for a session, its CSRF token."""
        caller = request.scope["state"]["caller"]
        return {"via": caller.via, "csrf": caller.csrf}


def _views(api: FastAPI, state: ConsoleState, hub: ChangeHub) -> None:
    @api.get("/api/overview", tags=["views"], responses=_documented("ConsoleOverview"))
    async def overview() -> dict[str, Any]:
        runs = [state.sources.run_summary(run) for run in state.sources.runs()]
        holders = state.sources.holders()["items"]
        devices = state.fleet.devices()["items"]
        versions = state.sources.placement()["items"]
        replicas = [r for v in versions for r in v["replicas"]]
        phases: dict[str, int] = {}
        for device in devices:
            phases[device["phase"] or "none"] = phases.get(device["phase"] or "none", 0) + 1
        states: dict[str, int] = {}
        for holder in holders:
            states[holder["state"]] = states.get(holder["state"], 0) + 1
        return document(
            "ConsoleOverview",
            runs=runs,
            holders={
                "total": len(holders),
                "byState": states,
                "epsilonSpent": state.sources.spent_by_holder(),
            },
            devices={
                "fleet": state.fleet.fleet,
                "total": len(devices),
                "online": sum(1 for d in devices if d["online"]),
                "byPhase": phases,
            },
            replicas={
                "total": len(replicas),
                "healthy": sum(1 for r in replicas if r["status"] in ("intact", "ok", "healthy")),
                "versions": len(versions),
            },
            alerts=_alerts(state, runs),
        )

    @api.get("/api/runs", tags=["views"], responses=_documented("ConsoleRunList"))
    async def runs() -> dict[str, Any]:
        items = [state.sources.run_summary(run) for run in state.sources.runs()]
        return document("ConsoleRunList", items, workdir=str(state.sources.root))

    @api.get("/api/runs/{name:path}", tags=["views"], responses=_documented("ConsoleRun"))
    async def run(name: str) -> dict[str, Any]:
        # the run at --workdir itself is named "."; a browser drops that segment from the URL
        folder = state.sources.run(name or ".")
        if folder is None:
            raise HTTPException(status_code=404, detail=f"no run {name}")
        return state.sources.run_detail(folder)

    @api.get("/api/holders", tags=["views"], responses=_documented("HolderList"))
    async def holders() -> dict[str, Any]:
        return state.sources.holders()

    @api.get("/api/audit", tags=["views"], responses=_documented("AuditLog"))
    async def audit(
        name: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> dict[str, Any]:
        return state.sources.audit(name, limit=limit)

    @api.get("/api/placement", tags=["views"], responses=_documented("PlacementStatus"))
    async def placement() -> dict[str, Any]:
        return state.sources.placement()

    @api.get("/api/fleet", tags=["views"], responses=_documented("DeviceList"))
    async def fleet() -> dict[str, Any]:
        return state.fleet.devices()

    @api.get("/api/rollouts", tags=["views"], responses=_documented("RolloutList"))
    async def rollouts() -> dict[str, Any]:
        return state.fleet.rollouts()

    @api.get("/api/explanations", tags=["views"], responses=_documented("ConsoleExplanations"))
    async def explanations() -> dict[str, Any]:
        """Why a device answered the demo's sample inferences: each word's attribution."""
        return state.sources.explanations()

    @api.get("/api/events", tags=["views"])
    async def events(request: Request) -> StreamingResponse:
        """Server-sent events: ``change`` names the views to fetch again."""
        return StreamingResponse(
            hub.stream(request.is_disconnected),
            media_type="text/event-stream",
            headers={"x-accel-buffering": "no"},
        )


def _actions(api: FastAPI, state: ConsoleState) -> None:
    @api.post("/api/actions/token", tags=["actions"])
    def issue_token(action: Annotated[TokenAction, Body()]) -> dict[str, Any]:
        """An enrollment token for a holder, shown once (the registry keeps only its hash)."""
        _confirmed(action)
        return state.actions.issue_token(action.name, expires=action.expires)

    @api.post("/api/actions/revoke", tags=["actions"])
    def revoke(action: Annotated[RevokeAction, Body()]) -> dict[str, Any]:
        """Revoke a holder: its node is unregistered from the SuperLink, then the registry."""
        _confirmed(action)
        return state.actions.revoke(action.name, reason=action.reason)

    @api.post("/api/actions/stop-run", tags=["actions"])
    def stop_run(action: Annotated[RunAction, Body()]) -> dict[str, Any]:
        _confirmed(action)
        return state.actions.stop_run(action.run)

    @api.post("/api/actions/rollout", tags=["actions"])
    def rollout(action: Annotated[RolloutAction, Body()]) -> dict[str, Any]:
        """Start a rollout of a placed artifact in the background (``fedge deploy --detach``)."""
        _confirmed(action)
        return state.actions.rollout(
            artifact=action.artifact,
            urls=action.urls,
            rollout=action.rollout,
            devices=action.devices,
        )

    @api.post("/api/actions/rollback", tags=["actions"])
    def rollback(action: Annotated[DeviceAction, Body()]) -> dict[str, Any]:
        _confirmed(action)
        return state.actions.rollback(action.device)


def _fingerprint(state: ConsoleState) -> dict[str, Any]:
    found: dict[str, Any] = dict(state.sources.fingerprint())
    devices, rollouts = state.fleet.fingerprint()
    found["fleet"] = devices
    found["rollouts"] = rollouts
    found["overview"] = (found["runs"], found["holders"], found["placement"], devices)
    return found
