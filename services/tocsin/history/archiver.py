"""Filling the archive: the incident-events consumer, the timeline copier, the rebuild.

- The consumer (group "history", created at "0" so a new archive starts from everything
  the streams retain) writes each event in a transaction and returns only after the
  commit (events its shard loops hand over at the same time share one transaction: a
  group commit); `EventConsumer` acknowledges the entry after that, so a crash at any moment
  loses nothing (the entry is delivered again) and duplicates nothing (writes are
  idempotent, see `store`).
- Pages are timeline entries escalation appends without a stream event, so after an
  acknowledgement, resolution, snooze, reassignment or note the incident is marked, and
  the copier fetches its whole timeline from the incidents service (GetIncident) and
  writes the entries and pages it does not have. The mark is in the database: a crash
  or an unreachable incidents service only delays the copy. An incident the incidents
  service no longer has (past retention) keeps what the archive already holds.
- `rebuild` reads every shard's streams (every lane) from the start (XRANGE) and writes
  it all again: what the streams still retain is restored into an empty or damaged archive, and an
  intact one is left unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from tocsin.client.client import TocsinClient
from tocsin.history.store import ArchiveStore
from tocsin.runtime.clock import Clock
from tocsin.runtime.events import EVENT_FIELD, INCIDENT_SHARDS, shard_streams
from tocsin.runtime.loops import WorkerHealth, run_loop
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import incidents_pb2

log = logging.getLogger(__name__)

GROUP = "history"
SYNC_INTERVAL_S = 1.0
SYNC_BATCH = 100
REBUILD_CHUNK = 500
GROUP_COMMIT_MAX = 256
_GONE = (grpc.StatusCode.NOT_FOUND,)


class Archiver:
    def __init__(
        self,
        store: ArchiveStore,
        redis: RedisClient,
        peers: Callable[[], TocsinClient],
        clock: Clock,
    ) -> None:
        self.store = store
        self.redis = redis
        self.peers = peers
        self.clock = clock
        self.synced = 0
        self.writes = GroupCommit(store)

    async def handle(self, event: incidents_pb2.IncidentEvent) -> None:
        """The consumer's handler: returns once the event is committed (raises if it
        could not be)."""
        await self.writes.write(event)

    async def sync_once(self) -> int:
        """Copy the timelines of the incidents marked for it; how many were copied."""
        done = 0
        for incident_id in await self.store.due_for_sync(SYNC_BATCH):
            try:
                reply = await self.peers().incidents.GetIncident(
                    incidents_pb2.GetIncidentRequest(
                        incident_id=incident_id, include_timeline=True
                    ),
                    timeout=10,
                )
            except grpc.aio.AioRpcError as error:
                if error.code() in _GONE:
                    await self.store.forget_sync(incident_id)
                    continue
                raise
            await self.store.write_timeline(reply.incident)
            done += 1
        self.synced += done
        return done

    async def run_sync(self, stop: asyncio.Event, health: WorkerHealth) -> None:
        guard = health.guard("history timeline copier", stop)

        async def body() -> None:
            while await self.sync_once() == SYNC_BATCH and not stop.is_set():
                pass

        await run_loop(guard, stop, body, lambda: self.clock.sleep(SYNC_INTERVAL_S, stop))

    async def rebuild(self) -> int:
        """Write every retained event of every shard again; how many."""
        total = 0
        for key in (k for shard in range(INCIDENT_SHARDS) for k in shard_streams(shard)):
            start = "-"
            while True:
                entries: Any = await self.redis.xrange(key, min=start, max="+", count=REBUILD_CHUNK)
                if not entries:
                    break
                batch = []
                for entry_id, fields in entries:
                    try:
                        event = incidents_pb2.IncidentEvent.FromString(fields[EVENT_FIELD])
                    except (KeyError, DecodeError):
                        log.error("rebuild: event %s cannot be decoded; skipped", entry_id)
                        continue
                    event.event_id = entry_id.decode()
                    batch.append(event)
                total += await self.store.apply_many(batch)
                if len(entries) < REBUILD_CHUNK:
                    break
                start = "(" + entries[-1][0].decode()
        return total


class GroupCommit:
    """Events handed over while a transaction is being written go into the next one
    together: the shard loops of the consumer each wait for their own event's commit,
    and share transactions (a batch costs about what one event does, see store)."""

    def __init__(self, store: ArchiveStore) -> None:
        self.store = store
        self._waiting: list[tuple[incidents_pb2.IncidentEvent, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def write(self, event: incidents_pb2.IncidentEvent) -> None:
        """Return once `event` is committed; raise what writing it raised."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((event, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting())
        await asyncio.shield(done)

    async def _write_waiting(self) -> None:
        while self._waiting:
            batch = self._waiting[:GROUP_COMMIT_MAX]
            del self._waiting[:GROUP_COMMIT_MAX]
            try:
                await self.store.apply_many([event for event, _ in batch])
            except Exception as error:
                if len(batch) == 1:
                    _settle(batch[0][1], error)
                    continue
                # One bad event must not fail the others: each on its own, then.
                for event, done in batch:
                    try:
                        await self.store.apply(event)
                    except Exception as alone:
                        _settle(done, alone)
                    else:
                        _settle(done, None)
                continue
            for _, done in batch:
                _settle(done, None)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():  # its handler was cancelled (the process is stopping)
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
