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
- The retention sweep (only with TOCSIN_ARCHIVE_RETENTION): every hour, incidents
  resolved longer ago than the retention are deleted with everything archived about
  them, a few hundred per transaction. Open incidents are never deleted.
- The trim watch: the producer trims each stream to about `STREAM_MAXLEN` entries
  (runtime/events.py), whoever has not read them, and the history group is not one whose
  backlog refuses alerts, so an archive that falls further behind (its database down
  for an hour of a storm) would lose the trimmed events. Every second the watch reads
  (one script per shard, lua/trim_watch.lua), per stream, the first entry still there
  and what the history group still needs (its oldest pending entry, else the entry after
  the last one delivered): if the stream now starts after what the group needed at the
  previous look (or at this one, after a restart), events may have been trimmed unread,
  and a reconciliation is marked in the database (the mark survives a crash). False
  alarms (more than `STREAM_MAXLEN` events on one stream within a second) only cost a
  reconciliation.
- The reconciliation writes the archive from Redis's state instead of the stream: every
  incident the incidents service holds (ListIncidents, every page) that the archive
  lacks or holds at an older version is fetched whole (GetIncident with alerts and
  timeline) and written as a snapshot (`store.apply_snapshot`); the others are marked
  for a timeline copy (a note changes no version). The mark is cleared once every page is
  done, unless a newer loss lowered it meanwhile.
- `rebuild` reads every shard's streams (every lane) from the start (XRANGE) and writes
  it all again: what the streams still retain is restored into an empty or damaged archive, and an
  intact one is left unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from tocsin.client.client import TocsinClient
from tocsin.history.store import ArchiveStore
from tocsin.runtime.clock import Clock
from tocsin.runtime.events import EVENT_FIELD, INCIDENT_SHARDS, STREAM_MAXLEN, shard_streams
from tocsin.runtime.loops import WorkerHealth, run_loop
from tocsin.runtime.redis import RedisClient, read_lua
from tocsin.runtime.scripts import LuaScript
from tocsin.v1 import incidents_pb2

log = logging.getLogger(__name__)

GROUP = "history"
SYNC_INTERVAL_S = 1.0
SYNC_BATCH = 100
REBUILD_CHUNK = 500
GROUP_COMMIT_MAX = 256
SWEEP_INTERVAL_S = 3600.0
TRIM_WATCH_INTERVAL_S = 1.0
RECONCILE_MARK = "reconcile_since_ms"
RECONCILE_PAGE = 500
SWEEP_BATCH = 500
_GONE = (grpc.StatusCode.NOT_FOUND,)


class Archiver:
    def __init__(
        self,
        store: ArchiveStore,
        redis: RedisClient,
        peers: Callable[[], TocsinClient],
        clock: Clock,
        retention: timedelta | None = None,
        commit_window_s: float = 0.0,
    ) -> None:
        self.store = store
        self.retention = retention
        """TOCSIN_ARCHIVE_RETENTION; None = keep every incident."""
        self.redis = redis
        self.peers = peers
        self.clock = clock
        self.synced = 0
        self.writes = GroupCommit(store, commit_window_s)
        self.stream_maxlen = STREAM_MAXLEN
        """What the producer trims each stream to (runtime/events.py)."""
        self._needed: dict[str, tuple[int, int]] = {}
        self._trim_watch = LuaScript(
            redis, "trim_watch.lua", body=read_lua("tocsin.history", "lua/trim_watch.lua")
        )
        """Per stream: the first entry id the history group still needed at the last look."""
        self._accounted: dict[str, tuple[int, int]] = {}
        """Per stream: up to where a trim already raised its alarm (its reconciliation
        covers what was lost before it): while the group is still behind, a look finds a
        loss only past it, not the same one every second."""

    async def handle(self, event: incidents_pb2.IncidentEvent) -> None:
        """The consumer's handler: returns once the event is committed (raises if it
        could not be)."""
        await self.writes.write(event)

    async def sync_once(self) -> int:
        """Copy the timelines of the incidents marked for it; how many were copied."""
        done = 0
        for incident_id in await self.store.due_for_sync(SYNC_BATCH, self.clock.now_ms()):
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
            await self.store.write_timeline(reply.incident, self.clock.now_ms())
            done += 1
        self.synced += done
        return done

    async def run_sync(self, stop: asyncio.Event, health: WorkerHealth) -> None:
        guard = health.guard("history timeline copier", stop)

        async def body() -> None:
            while await self.sync_once() == SYNC_BATCH and not stop.is_set():
                pass

        await run_loop(guard, stop, body, lambda: self.clock.sleep(SYNC_INTERVAL_S, stop))

    async def watch_trims_once(self) -> bool:
        """Look at every stream once (see the module docstring); whether a loss was
        found (and a reconciliation marked)."""
        lost_since: int | None = None
        for shard in range(INCIDENT_SHARDS):
            keys = shard_streams(shard)
            rows: Any = await self._trim_watch(keys, group=GROUP)
            for key, row in zip(keys, rows, strict=True):
                since = self._trimmed_unread(key, row) if row else None
                if since is not None:
                    lost_since = since if lost_since is None else min(lost_since, since)
        if lost_since is None:
            return False
        log.error(
            "history: the incident-events streams were trimmed past events the archive had "
            "not read (since %d ms); reconciling the archive with Redis's state",
            lost_since,
        )
        await self.store.lower_mark(RECONCILE_MARK, lost_since)
        return True

    def _trimmed_unread(self, key: str, row: list[Any]) -> int | None:
        """The time (ms) since which `key` may have lost entries the history group had
        not read, or None; `row` is the stream's line of lua/trim_watch.lua."""
        length, first, max_deleted, last_delivered, pending, pending_min = row
        if not _text(last_delivered):
            return None  # the group does not exist on this stream
        needed = _next_id(_stream_id(_text(last_delivered)))
        if int(pending) and _text(pending_min):
            needed = min(needed, _stream_id(_text(pending_min)))
        previous = self._needed.get(key, needed)
        self._needed[key] = needed
        starts = _stream_id(_text(first)) if _text(first) else None
        deleted = _stream_id(_text(max_deleted)) if _text(max_deleted) else None
        since = min(previous, needed)
        accounted = self._accounted.get(key)
        if accounted is not None:
            since = max(since, accounted)
        lost = trimmed_unread(since, starts, int(length), self.stream_maxlen, deleted)
        if lost is not None:
            # What is gone is reconciled now: it raises no second alarm.
            covered = max(needed, starts or needed, _next_id(deleted or (0, 0)))
            self._needed[key] = self._accounted[key] = covered
        return lost

    async def run_trim_watch(self, stop: asyncio.Event, health: WorkerHealth) -> None:
        guard = health.guard("history trim watch", stop)

        async def body() -> None:
            await self.watch_trims_once()
            await self.reconcile_once()

        await run_loop(guard, stop, body, lambda: self.clock.sleep(TRIM_WATCH_INTERVAL_S, stop))

    async def reconcile_once(self) -> int:
        """If a reconciliation is marked, write every incident Redis holds that the
        archive lacks or holds older; how many were written."""
        mark = await self.store.mark(RECONCILE_MARK)
        if mark is None:
            return 0
        written = 0
        token = ""
        while True:
            reply = await self.peers().incidents.ListIncidents(
                incidents_pb2.ListIncidentsRequest(page_size=RECONCILE_PAGE, page_token=token),
                timeout=30,
            )
            held = await self.store.versions([i.id for i in reply.incidents])
            current = []
            for listed in reply.incidents:
                if held.get(listed.id, -1) >= listed.version:
                    current.append(listed.id)
                    continue
                try:
                    full = await self.peers().incidents.GetIncident(
                        incidents_pb2.GetIncidentRequest(
                            incident_id=listed.id, include_alerts=True, include_timeline=True
                        ),
                        timeout=10,
                    )
                except grpc.aio.AioRpcError as error:
                    if error.code() in _GONE:
                        continue
                    raise
                await self.store.apply_snapshot(full.incident, self.clock.now_ms())
                written += 1
            await self.store.mark_due(current)
            token = reply.next_page_token
            if not token:
                break
        await self.store.clear_mark(RECONCILE_MARK, mark)
        log.warning("history: reconciled with Redis: %d incidents written", written)
        return written

    async def sweep_once(self) -> int:
        """Delete the incidents resolved longer ago than the retention; how many."""
        if self.retention is None:
            return 0
        cutoff = self.clock.now_ms() - int(self.retention.total_seconds() * 1000)
        total = 0
        while (deleted := await self.store.sweep(cutoff, SWEEP_BATCH)) > 0:
            total += deleted
        if total:
            log.info("archive retention: %d incidents resolved before %d deleted", total, cutoff)
        return total

    async def run_sweep(self, stop: asyncio.Event, health: WorkerHealth) -> None:
        guard = health.guard("history retention sweep", stop)

        async def body() -> None:
            await self.sweep_once()

        await run_loop(guard, stop, body, lambda: self.clock.sleep(SWEEP_INTERVAL_S, stop))

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
    and share transactions (a batch costs about what one event does, see store).

    With a `window_s`, the first event of an idle writer waits that long for others
    before its transaction begins (as PostgreSQL's `commit_delay`): the consumer's 16
    shard loops wake at different moments, and without it most transactions under load
    held the events of one or two incidents."""

    def __init__(self, store: ArchiveStore, window_s: float = 0.0) -> None:
        self.store = store
        self.window_s = window_s
        """Real seconds a transaction waits for company (0: it begins at once)."""
        self.transactions = 0
        """Batches written (each one transaction, when nothing in it was refused)."""
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
        if self.window_s > 0:
            await asyncio.sleep(self.window_s)
        while self._waiting:
            batch = self._waiting[:GROUP_COMMIT_MAX]
            del self._waiting[:GROUP_COMMIT_MAX]
            self.transactions += 1
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


def trimmed_unread(
    needed: tuple[int, int],
    first: tuple[int, int] | None,
    length: int,
    maxlen: int,
    max_deleted: tuple[int, int] | None,
) -> int | None:
    """Whether a stream may have lost entries the group still needed (from `needed` on):
    Redis 7 says what it deleted last (`max_deleted`, trims included): a loss if that is
    at or after `needed`. Redis 6.2 does not: a loss if the stream now starts after
    `needed` and has been trimmed (it holds `maxlen` entries: the producer trims only
    past that). The time (ms) of `needed`, or None."""
    if max_deleted is not None:
        return needed[0] if max_deleted >= needed and max_deleted != (0, 0) else None
    if first is None or length < maxlen:
        return None
    return needed[0] if first > needed else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def _next_id(entry: tuple[int, int]) -> tuple[int, int]:
    return entry[0], entry[1] + 1


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():  # its handler was cancelled (the process is stopping)
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
