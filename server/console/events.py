"""Live updates: one watcher for every browser, server-sent events to each.

Once a second one task compares the fingerprints of the views (file sizes and times, the fleet's
retained state) with the last ones and tells every open event stream which views changed; each
browser then fetches only those, from the same JSON endpoints a script would call. Fifty open
streams cost fifty queues, not fifty watchers. A slow browser's queue is bounded: it misses
intermediate notices, never the latest (the next notice names every view that changed since).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fedge.logs import get_logger

__all__ = ["ChangeHub"]

log = get_logger(__name__)

_QUEUE = 8
HEARTBEAT_S = 15.0


class ChangeHub:
    """Polls ``fingerprint()`` every ``interval`` seconds and fans the changes out."""

    def __init__(
        self,
        fingerprint: Callable[[], dict[str, Any]],
        *,
        interval: float = 1.0,
        closing: Callable[[], bool] = lambda: False,
    ) -> None:
        self._fingerprint = fingerprint
        self.interval = interval
        # The server is shutting down: end every stream now. uvicorn waits for open responses
        # before the lifespan's stop, so an open page would otherwise hold it for its grace.
        self._closing = closing
        self._subscribers: set[asyncio.Queue[set[str]]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.version = 0

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="console-changes")

    def _end_streams(self) -> None:
        self._stopping.set()
        for queue in list(self._subscribers):
            while not queue.empty():  # a slow browser's full queue must still take the end
                queue.get_nowait()
            queue.put_nowait(set())  # an empty notice ends the stream

    async def stop(self) -> None:
        self._end_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        last: dict[str, Any] = await asyncio.to_thread(self._fingerprint)
        while not self._stopping.is_set():
            await asyncio.sleep(self.interval)
            if self._closing():
                self._end_streams()
                return
            try:
                now = await asyncio.to_thread(self._fingerprint)
            except Exception:
                log.debug("console: fingerprint failed", exc_info=True)
                continue
            changed = {view for view, value in now.items() if last.get(view) != value}
            last = now
            if changed:
                self.version += 1
                for queue in list(self._subscribers):
                    _offer(queue, changed)

    async def stream(self, is_disconnected: Callable[[], Any]) -> AsyncIterator[str]:
        """The ``text/event-stream`` body for one browser, until it goes or the console stops."""
        queue: asyncio.Queue[set[str]] = asyncio.Queue(maxsize=_QUEUE)
        self._subscribers.add(queue)
        try:
            yield "retry: 2000\n\n"
            yield _event("hello", {"version": self.version})
            while not self._stopping.is_set():
                try:
                    views = await asyncio.wait_for(queue.get(), timeout=HEARTBEAT_S)
                except TimeoutError:
                    if await is_disconnected():
                        return
                    yield ": ping\n\n"
                    continue
                if not views:
                    return
                yield _event("change", {"views": sorted(views), "version": self.version})
        finally:
            self._subscribers.discard(queue)


def _offer(queue: asyncio.Queue[set[str]], views: set[str]) -> None:
    """Queue a notice; a full queue merges it into the newest one instead of dropping it."""
    try:
        queue.put_nowait(set(views))
    except asyncio.QueueFull:
        pending: list[set[str]] = []
        while not queue.empty():
            pending.append(queue.get_nowait())
        merged = set().union(*pending, views)
        queue.put_nowait(merged)


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"
