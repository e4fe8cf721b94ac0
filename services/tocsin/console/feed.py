"""The live incident feed behind the console's incident list (server-sent events).

One IncidentService.WatchIncidents stream per gateway process, whatever the number of
open browsers (each incidents process allows only TOCSIN_MAX_WATCH_STREAMS streams),
started when the first browser subscribes. Each event is announced to every subscriber
as `{"id", "status", "version", "kind"}` only: the browser then fetches the rows again as
its own signed-in user, so what anyone sees is still what their token may read. After
the stream breaks (a restarted incidents process, a connection reaching its maximum age)
it is followed again under a supervised loop's backoff from the last event it saw
(WatchIncidents' `since`; the first time from `REPLAY` ago), and subscribers are told to
refresh (`kind` "resync"), so nothing that happened meanwhile stays unseen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from tocsin.client.client import TocsinClient
from tocsin.runtime.clock import Clock
from tocsin.runtime.loops import lone_guard, run_loop
from tocsin.v1 import incidents_pb2

log = logging.getLogger(__name__)

REPLAY = timedelta(seconds=5)
"""How far back the first stream starts: a change made while it was being opened shows."""
QUEUE_SIZE = 64
"""Announcements a slow browser may lag behind; beyond, it gets one "resync"."""

RESYNC: dict[str, Any] = {"kind": "resync"}


class IncidentFeed:
    def __init__(self, client: TocsinClient, clock: Clock) -> None:
        self._client = client
        self._clock = clock
        self._since: Timestamp | None = None
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="console incident feed")
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)

    def publish(self, message: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    while True:
                        queue.get_nowait()
                queue.put_nowait(RESYNC)

    async def _run(self) -> None:
        guard = lone_guard("console incident feed", self._stop)
        await run_loop(guard, self._stop, self._follow, lambda: asyncio.sleep(0.2))

    async def _follow(self) -> None:
        if self._since is None:
            self._since = Timestamp()
            self._since.FromDatetime(self._clock.now() - REPLAY)
        call = self._client.incidents.WatchIncidents(
            incidents_pb2.WatchIncidentsRequest(since=self._since)
        )
        try:
            async for reply in call:
                event = reply.event
                if event.HasField("at"):
                    self._since = event.at
                self.publish(
                    {
                        "kind": incidents_pb2.IncidentEventKind.Name(event.kind)
                        .removeprefix("INCIDENT_EVENT_KIND_")
                        .lower(),
                        "id": event.incident.id,
                        "status": incidents_pb2.IncidentStatus.Name(event.incident.status)
                        .removeprefix("INCIDENT_STATUS_")
                        .lower(),
                        "version": event.incident.version,
                    }
                )
        finally:
            call.cancel()
            self.publish(RESYNC)

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
