"""The incident-events streams: a transactional outbox, consumed with consumer groups.

The architecture's single `incident-events` stream is split into one stream per incident
shard, `tocsin:{tN}:incident-events`, because the outbox XADD must run in the same Lua
script, and so the same Cluster slot, as the incident it describes. An incident's shard is
fixed by its id (`incident_shard`), so its events stay in order.

Each shard's stream is split again into `EVENT_LANES` lanes by the incident's service
(`lane_of`, a hash: services that hash alike share a lane): lane 0 is
`tocsin:{tN}:incident-events` (so events written before lanes existed are still read),
lane n `tocsin:{tN}:incident-events:lane:n`. An incident keeps its lane (trigger.lua
stores it in the incident hash), so its events stay in order. Lanes are what keeps a
storm on one service from delaying another service's first page: in each shard a
consumer runs one worker per lane that has entries, lanes concurrently, each handling its
lane's entries in order (at most `batch` read at a time); the shard's loop meanwhile
waits, in a blocking XREADGROUP, on the lanes no worker has, so an event on a quiet lane
is read at once and handled beside a storm's backlog rather than behind it (README,
Design: "Fair scheduling").

Within a lane, a consumer built with `incidents_at_once` > 1 (history's archive, at 32;
escalation's at 4, see INCIDENTS_AT_ONCE in escalation/server.py) handles
different incidents concurrently, up to that many at once, and each incident's events
strictly one after another in stream order: an event waits only for the earlier events of
its own incident, never for another incident's calls, so a burst in one shard does not
wait for its earlier incidents' pages. Acknowledging stays per entry, after its handler
succeeded, so a crash still means the unacknowledged entries are redone.

A group off the page path (history's archive, outgoing webhooks) is built with
`linger_ms`: woken by the XADD of a new incident, as escalation and notification are, it
waits that long before handling what it read, so the page path has the cores first.

Each consumer group (escalation, notification) reads every shard with a blocking
XREADGROUP over its idle lanes (and one per lane from its worker), handles each lane's
entries in order, and XACKs them (one XACK per lane) only after its handler succeeded: in
the same round trip (a pipeline; a shard's lanes share a slot) as the next read of the
lane's worker or of the shard's loop, which came next anyway, so acknowledging costs no
round trip of its own. Every lane always has exactly one reader: its worker while it has
one, else one of the shard loop's blocking reads; when a worker finishes, its lane gets a
blocking read of its own at once, beside the one already waiting on the other lanes (a
lane left unread until that read ended was the 100 ms tail of the first page), or keeps
the one its worker had waiting. A worker does not read its lane once more before it ends:
the blocking read after it returns at once if entries came, and below saturation that
last read found nothing nearly every time (an XREADGROUP per event and group, two for a
worker handling incidents at once, whose read waited up to `refill_ms` after its
incidents were done).
Entries left pending by a consumer that died are taken over with XAUTOCLAIM after
`claim_idle_ms` (looked for every half of it; a restarted process with the same identity
resumes its own at once; entries a consumer holds to handle are not taken by itself); an
entry whose handler keeps failing is moved to a dead-letter stream after
`max_deliveries`, so one bad entry cannot stall a shard forever.

Every shard's loop runs under a `loops.LoopGuard`: any error (a timeout, a Cluster
client's own exceptions, a connection closed under it) is logged, backed off and retried,
so a consumer never stops silently. The block is capped below the client's socket
timeout (`redis.blocking_ms`), so an idle read ends with the server's empty reply, never
with a client timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from google.protobuf.message import DecodeError
from redis.exceptions import ResponseError

from tocsin.runtime.config import parse_instance
from tocsin.runtime.loops import LoopGuard, WorkerHealth, lone_guard
from tocsin.runtime.metrics import CONSUMER_LAG, DEAD_LETTERED, EVENTS_HANDLED
from tocsin.runtime.redis import RedisClient, blocking_ms
from tocsin.runtime.timers import shard_tag
from tocsin.v1 import incidents_pb2

log = logging.getLogger(__name__)

INCIDENT_SHARDS = 16
"""Fixed at deployment: incident ids encode their shard (id mod 16)."""

STREAM_NAME = "incident-events"
"""The streams' name in metrics (one label value for every shard and lane)."""
EVENT_FIELD = b"e"
STREAM_MAXLEN = 20_000
"""Per shard (about 320k events in all): consumers lag by milliseconds, and the escalation
auditor re-arms anything an unusually long outage let them miss."""
CONSUMER_GROUPS = ("escalation", "notification")
"""Groups the producer creates before its first XADD, so no consumer misses an event."""
OUTBOUND_GROUPS = ("webhooks",)
"""Groups the producer creates too, but whose lag never holds back ingest (the backlog
check reads CONSUMER_GROUPS only): outgoing webhooks must never slow paging."""

_IN_PLACE_RETRY_S = (0.05, 0.2, 0.5, 1.0)

Handler = Callable[[incidents_pb2.IncidentEvent], Awaitable[None]]


def incident_shard(incident_id: str) -> int:
    return int(incident_id) % INCIDENT_SHARDS


EVENT_LANES = 8
"""Lanes per shard (fixed at deployment, like the shards): a new incident's events go to
lane `lane_of(service_id)`, which it keeps."""


def lane_of(service_id: str) -> int:
    """The event lane of a service's incidents: stable across processes (CRC-32)."""
    return zlib.crc32(service_id.encode()) % EVENT_LANES


def stream_key(shard: int, lane: int = 0) -> str:
    """A shard's stream of one lane (lane 0 keeps the name it had before lanes)."""
    base = f"tocsin:{shard_tag(shard)}:incident-events"
    return f"{base}:lane:{lane}" if lane else base


def shard_streams(shard: int) -> list[str]:
    """Every lane's stream of `shard`, lane 0 first (one hash tag: one Cluster slot)."""
    return [stream_key(shard, lane) for lane in range(EVENT_LANES)]


def incident_stream(incident: incidents_pb2.Incident) -> str:
    """The stream (shard and lane) of an incident opened since lanes exist."""
    return stream_key(incident_shard(incident.id), lane_of(incident.service_id))


def dead_letter_key(shard: int) -> str:
    return f"tocsin:{shard_tag(shard)}:incident-events:dead"


async def ensure_groups(
    redis: RedisClient, groups: Sequence[str], start_id: str, shards: int = INCIDENT_SHARDS
) -> None:
    """Create the consumer groups (and streams) that do not exist yet, on every lane."""
    for shard in range(shards):
        for key in shard_streams(shard):
            for group in groups:
                try:
                    await redis.xgroup_create(key, group, id=start_id, mkstream=True)
                except ResponseError as error:
                    if "BUSYGROUP" not in str(error):
                        raise


def instance_name(group: str) -> str:
    """A stable name for this process in `group`: TOCSIN_INSTANCE if set, else the host
    name. Stable across restarts on purpose: a restarted process (same container, same
    pod) picks up the entries it left pending at once, and takes back its own shard
    leases, instead of waiting for them to time out. Replicas on one host must set
    distinct TOCSIN_INSTANCE values (Kubernetes pods differ by host name already). A value
    that is no plain name (`a|b`) raises ConfigError, as `load_config` does at start."""
    instance = parse_instance(os.environ.get("TOCSIN_INSTANCE", ""))
    return f"{group}-{instance or socket.gethostname()}"


class EventConsumer:
    def __init__(
        self,
        redis: RedisClient,
        group: str,
        handler: Handler,
        *,
        consumer: str | None = None,
        shards: Sequence[int] = range(INCIDENT_SHARDS),
        block_ms: int = 1000,
        batch: int = 32,
        refill_ms: int = 100,
        claim_idle_ms: int = 10_000,
        max_deliveries: int = 10,
        start_id: str = "$",
        incidents_at_once: int = 1,
        linger_ms: int = 0,
    ) -> None:
        self.redis = redis
        self.group = group
        self.handler = handler
        self.consumer = consumer or instance_name(group)
        self.shards = tuple(shards)
        self.block_ms = blocking_ms(redis, block_ms)
        """The block asked for, capped below the client's socket timeout."""
        self.batch = batch
        """Entries of one lane read (and held) at a time."""
        self.refill_ms = min(refill_ms, self.block_ms)
        """While lane workers run, or entries they handled wait, what they handled is
        acknowledged at least this often (real time; usually sooner, with the next
        read). A lane whose worker finished is read again at once, not after it."""
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.handled = 0
        self.start_id = start_id
        """Where a group this consumer creates starts: "$" (the end) for groups the
        producer also creates, "0" (everything retained) for a late joiner (history)."""
        self.incidents_at_once = incidents_at_once
        """Different incidents of one lane handled at once (each incident's events in
        order); 1 handles a lane's entries strictly one after another."""
        self.linger_ms = linger_ms
        """For a group off the page path (history, outgoing webhooks): after an idle
        shard's blocking read returns entries, wait this long (real time, as the block)
        before handling them. The XADD that wakes this group wakes the page path's
        consumers too; lingering leaves them the cores for a new incident's first page,
        and gathers the events that follow into the same lanes' batches. 0: at once."""
        self._labels = {"stream": STREAM_NAME, "group": group}
        EVENTS_HANDLED.add(0, self._labels)  # the series exist (at 0) before any event
        DEAD_LETTERED.add(0, self._labels)

    async def start(self) -> None:
        # Only matters when a new group joins an existing stream.
        await ensure_groups(self.redis, [self.group], self.start_id, len(self.shards))

    async def run(self, stop: asyncio.Event, health: WorkerHealth | None = None) -> None:
        """Consume every shard until `stop` is set; errors are retried (see module doc)."""
        guard = self._guard("groups", stop, health)
        started = False
        while not started and not stop.is_set():
            async with guard:
                await self.start()
                started = True
        tasks = [
            asyncio.create_task(
                self._run_shard(shard, stop, self._guard(f"shard {shard}", stop, health))
            )
            for shard in self.shards
        ]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def drain_once(self) -> int:
        """Handle what is in the streams now without blocking, shard by shard, each read
        (at most `batch` per lane) lanes round robin and acknowledged (for tests)."""
        count = 0
        for shard in self.shards:
            lanes = _Lanes(shard)
            pending = True  # this consumer's own entries first, then new ones
            while True:
                read = await self._fill(lanes, pending=pending)
                count += read
                while lanes.held:
                    await self._round(lanes)
                await self._ack_done(lanes)
                if not read and not pending:
                    break
                pending = False
        return count

    async def claim_stale(self) -> int:
        """Take over entries that a dead consumer left pending for longer than claim_idle_ms."""
        count = 0
        for shard in self.shards:
            count += await self._claim_shard(shard)
        return count

    def _guard(self, what: str, stop: asyncio.Event, health: WorkerHealth | None) -> LoopGuard:
        name = f"{self.group} consumer {what}"
        return lone_guard(name, stop) if health is None else health.guard(name, stop)

    async def _run_shard(self, shard: int, stop: asyncio.Event, guard: LoopGuard) -> None:
        loop = asyncio.get_running_loop()
        next_claim = loop.time() + self.claim_idle_ms / 2000
        lanes = _Lanes(shard)
        resumed = False
        try:
            while not stop.is_set():
                async with guard:
                    if not resumed:  # what this consumer received before a restart, first
                        await self._fill(lanes, pending=True)
                        resumed = True
                    await self._step(lanes)
                    now = loop.time()  # real time on purpose: XAUTOCLAIM judges Redis' idle
                    if now >= next_claim:
                        next_claim = now + self.claim_idle_ms / 2000
                        await self._claim_shard(shard, lanes.held_ids())
        finally:
            await lanes.stop_workers()
            await lanes.stop_reads()

    async def _step(self, lanes: _Lanes) -> None:
        """One turn of a shard's loop. Every lane has exactly one reader at a time: its
        worker while it has one (the worker handles the lane's entries in order; one
        handling incidents at once reads its lane meanwhile), else a blocking XREADGROUP
        of the shard's loop. A turn starts one such read (up to `block_ms`, with the
        XACKs of what the workers finished) over the lanes that have neither, so a lane
        whose worker just finished is waited on again at once, beside the read already
        waiting on the others; then it waits for a read or a worker to finish and starts
        a worker for each lane that got entries. (Before, the loop's one read of the
        other lanes had to end, up to `refill_ms` later, before such a lane was read
        again: the 100 ms tail of the first page at 80 incidents/s.)"""
        lanes.reap_workers()  # raises what a worker raised (the guard logs it, backs off)
        came = self._collect_reads(lanes)  # raises what a read raised, the same way
        keys = lanes.unread()
        if keys:
            lanes.start_read(
                keys, self._read_lanes(lanes, keys, ">", self.block_ms, lanes.take_done())
            )
        waiting = {*lanes.reads, *lanes.working}
        if not came and waiting and not lanes.idle_with_entries():
            busy = bool(lanes.working)
            finished, _ = await asyncio.wait(
                waiting,
                # while workers run, what they finished is acknowledged at least this often
                timeout=self.refill_ms / 1000 if busy or lanes.has_done() else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not finished and lanes.has_done():
                await self._ack_done(lanes)
            lanes.reap_workers()
            came = self._collect_reads(lanes)
        if came and not lanes.working and self.linger_ms:
            await asyncio.sleep(self.linger_ms / 1000)
        self._record_lag(lanes)
        for key in lanes.idle_with_entries():
            lanes.start_worker(key, self._work(lanes, key))

    async def _read_lanes(
        self,
        lanes: _Lanes,
        keys: list[str],
        start_id: str,
        block_ms: int | None,
        acks: list[tuple[str, list[bytes]]],
    ) -> list[tuple[str, list[Entry]]]:
        """A read of `keys` from `start_id` (">": new entries), after the XACKs of `acks`;
        the entries per lane."""
        reply: Any = await self._read(lanes, dict.fromkeys(keys, start_id), block_ms, acks)
        return [
            (key.decode() if isinstance(key, bytes) else str(key), entries)
            for key, entries in reply or []
        ]

    def _collect_reads(self, lanes: _Lanes) -> int:
        """The entries of the reads that finished, into their lanes; how many. Raises the
        first error a read raised (after taking what the others brought)."""
        count = 0
        error: BaseException | None = None
        for task in lanes.finished_reads():
            if task.cancelled():
                continue
            failed = task.exception()
            if failed is not None:
                error = error or failed
                continue
            for key, entries in task.result():
                lanes.add(key, entries)
                count += len(entries)
        if error is not None:
            raise error
        return count

    async def _work(self, lanes: _Lanes, key: str) -> None:
        """Handle lane `key`'s entries in order (what the shard loop's read brought), then
        end: the shard's loop waits on the lane again at once, with a blocking read that
        carries the acknowledgements and returns at once if entries came meanwhile. (A
        worker that read its lane once more before ending found it empty nearly always
        below saturation: one XREADGROUP per event and group for nothing.)"""
        if self.incidents_at_once > 1:
            await self._work_by_incident(lanes, key)
            return
        while (entry := lanes.take(key)) is not None:
            entry_id, fields = entry
            try:
                if await self._handle(entry_id, fields):
                    lanes.done(key, entry_id)
            finally:
                lanes.finished(entry_id)

    async def _work_by_incident(self, lanes: _Lanes, key: str) -> None:
        """Lane `key`'s entries, different incidents concurrently (at most
        `incidents_at_once` at a time), each incident's in stream order: an entry's task
        waits for its incident's previous entry's task. While some run and there is room
        for more, the lane is read (blocking), so a new incident's event is taken at once,
        not after the slow calls of the incidents in hand. When none runs and the lane
        holds nothing, the worker ends and a read still waiting becomes the lane's read
        in the shard's loop (`_Lanes.hand_over`), so the lane keeps exactly one reader and
        no read is made for nothing."""
        tails: dict[str, asyncio.Task[None]] = {}
        """Per incident, the task of its last entry taken (while it runs)."""
        tasks: set[asyncio.Task[None]] = set()
        read: asyncio.Task[list[tuple[str, list[Entry]]]] | None = None
        try:
            while True:
                if read is not None and read.done():
                    finished, read = read, None
                    for _, entries in finished.result():  # a failed read raises here
                        lanes.add(key, entries)
                tasks = {task for task in tasks if not task.done()}
                tails = {incident: task for incident, task in tails.items() if not task.done()}
                while (
                    len(tails) < self.incidents_at_once and (entry := lanes.take(key)) is not None
                ):
                    entry_id, fields = entry
                    event = self._decode(entry_id, fields)
                    incident = (
                        event.incident.id if isinstance(event, incidents_pb2.IncidentEvent) else ""
                    )
                    task = asyncio.get_running_loop().create_task(
                        self._handle_after(tails.get(incident), lanes, key, entry_id, event)
                    )
                    tails[incident] = task
                    tasks.add(task)
                if not tasks:
                    if read is not None:
                        lanes.hand_over(read, key)
                        read = None
                    return
                if read is None and len(tails) < self.incidents_at_once:
                    read = asyncio.get_running_loop().create_task(
                        self._read_lanes(lanes, [key], ">", self.block_ms, lanes.take_done(key))
                    )
                waiting: set[asyncio.Future[Any]] = {*tails.values()}
                if read is not None:
                    waiting.add(read)
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            raise
        finally:
            if read is not None:  # not handed over: stopped, or a task's error
                read.cancel()
                with contextlib.suppress(BaseException):
                    await read
            # a failed read: the incidents in hand finish (and are acknowledged) first
            if tasks:
                await asyncio.wait(tasks)

    async def _handle_after(
        self,
        before: asyncio.Task[None] | None,
        lanes: _Lanes,
        key: str,
        entry_id: bytes,
        event: incidents_pb2.IncidentEvent | bool,
    ) -> None:
        try:
            if before is not None:
                await asyncio.wait([before])  # its incident's previous entry, done first
            if await self._handle_event(entry_id, event):
                lanes.done(key, entry_id)
        finally:
            lanes.finished(entry_id)

    async def _fill(self, lanes: _Lanes, *, pending: bool) -> int:
        """One XREADGROUP, not blocking, over the lanes holding nothing ("0": this
        consumer's own pending entries, after a restart; ">": new ones), into their
        lanes; returns how many entries came."""
        keys = lanes.dry()
        if not keys:
            return 0
        count = 0
        for key, entries in await self._read_lanes(lanes, keys, "0" if pending else ">", None, []):
            lanes.add(key, entries)
            count += len(entries)
        return count

    async def _read(
        self,
        lanes: _Lanes,
        streams: dict[Any, Any],
        block_ms: int | None,
        acks: list[tuple[str, list[bytes]]],
    ) -> Any:
        """XREADGROUP `streams`, preceded by the XACKs of `acks` in one pipeline (one
        round trip: the lanes share a slot). Acknowledging with the next read rather than
        on its own saves a round trip per read, and no entry is acknowledged later than
        before: the read came next either way. If the round trip fails, the entries go
        back to be acknowledged with the next one (XACK is idempotent); the read's
        entries were never taken, and stay pending to this consumer as any unanswered
        read's do."""
        if not acks:
            return await self.redis.xreadgroup(
                self.group, self.consumer, streams, count=self.batch, block=block_ms
            )
        pipe = self.redis.pipeline(transaction=False)
        for key, entry_ids in acks:
            pipe.xack(key, self.group, *entry_ids)
        pipe.xreadgroup(self.group, self.consumer, streams, count=self.batch, block=block_ms)
        try:
            replies: list[Any] = await pipe.execute()
        except BaseException:
            lanes.give_back_done(acks)
            raise
        for _, entry_ids in acks:
            EVENTS_HANDLED.add(len(entry_ids), self._labels)
        return replies[-1]

    async def _round(self, lanes: _Lanes) -> None:
        """Handle the next entry of every lane that holds one, lanes in turn."""
        for key, (entry_id, fields) in lanes.next_round():
            if await self._handle(entry_id, fields):
                lanes.done(key, entry_id)

    async def _ack_done(self, lanes: _Lanes) -> None:
        for key, entry_ids in lanes.take_done():
            await self._ack(key, entry_ids)

    def _record_lag(self, lanes: _Lanes) -> None:
        """Consumer lag: the age of the oldest entry read and not handled yet (Redis's
        clock in its id against this host's wall clock), 0 when none is held."""
        oldest_ms = lanes.oldest_ms()
        age_s = 0.0 if oldest_ms is None else time.time() - oldest_ms / 1000
        CONSUMER_LAG.record(STREAM_NAME, self.group, lanes.shard, age_s)

    async def _ack(self, key: str, entry_ids: list[bytes]) -> None:
        """One XACK per lane for the entries handled since the last: under an alert storm
        a round trip per entry was most of a consumer's time, and it delayed the pages of
        other incidents in the shard. A crash before it means those entries are
        delivered again, as a crash between handling and acknowledging one always
        could: handlers are idempotent."""
        if entry_ids:
            await self.redis.xack(key, self.group, *entry_ids)
            EVENTS_HANDLED.add(len(entry_ids), self._labels)

    async def _claim_shard(self, shard: int, held: frozenset[bytes] = frozenset()) -> int:
        """XAUTOCLAIM each lane's entries idle past `claim_idle_ms` (a dead consumer's, or
        our own that failed); entries this consumer holds to handle are left alone. The
        lanes' claims go in one pipeline: every consumer looks at every shard's lanes
        every few seconds, and one round trip per lane was about a round trip per new
        incident at 80/s across the four groups."""
        count = 0
        keys = [stream_key(shard, lane) for lane in range(EVENT_LANES)]
        pipe = self.redis.pipeline(transaction=False)  # the lanes share a slot
        for key in keys:
            pipe.xautoclaim(
                key, self.group, self.consumer, self.claim_idle_ms, start_id="0-0", count=self.batch
            )
        replies: list[Any] = await pipe.execute()
        for key, reply in zip(keys, replies, strict=True):
            entries: list[tuple[bytes, dict[bytes, bytes] | None]] = reply[1]
            done: list[bytes] = []
            for entry_id, fields in entries:
                if fields is None or entry_id in held:
                    continue
                if await self._delivery_count(key, entry_id) > self.max_deliveries:
                    await self._dead_letter(shard, key, entry_id, fields)
                    continue
                if await self._handle(entry_id, fields):
                    done.append(entry_id)
            await self._ack(key, done)
            count += len(entries)
        return count

    async def _delivery_count(self, key: str, entry_id: bytes) -> int:
        rows = await self.redis.xpending_range(key, self.group, entry_id, entry_id, 1)
        return int(rows[0]["times_delivered"]) if rows else 0

    async def _dead_letter(
        self, shard: int, key: str, entry_id: bytes, fields: dict[bytes, bytes]
    ) -> None:
        log.error(
            "%s: giving up on event %s after %d deliveries",
            self.group,
            entry_id,
            self.max_deliveries,
        )
        dead: dict[Any, Any] = {**fields, b"id": entry_id, b"group": self.group.encode()}
        await self.redis.xadd(
            dead_letter_key(shard),
            dead,
            maxlen=10_000,
        )
        await self.redis.xack(key, self.group, entry_id)
        DEAD_LETTERED.add(1, self._labels)

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes] | None) -> bool:
        """Run the handler, retrying in place (keeping the shard's order) a few times;
        whether the entry is done (handled, or trimmed away while pending)."""
        return await self._handle_event(entry_id, self._decode(entry_id, fields))

    def _decode(
        self, entry_id: bytes, fields: dict[bytes, bytes] | None
    ) -> incidents_pb2.IncidentEvent | bool:
        """The entry's event; True for an entry trimmed away while pending (done), False
        for one that cannot be decoded (left pending: XAUTOCLAIM dead-letters it after
        max_deliveries, and it never fails the reads of the entries around it)."""
        if not fields:
            return True
        try:
            event = incidents_pb2.IncidentEvent.FromString(fields[EVENT_FIELD])
        except (KeyError, DecodeError):
            log.error("%s: event %s cannot be decoded", self.group, entry_id.decode())
            return False
        event.event_id = entry_id.decode()
        return event

    async def _handle_event(
        self, entry_id: bytes, event: incidents_pb2.IncidentEvent | bool
    ) -> bool:
        if isinstance(event, bool):
            return event
        for delay in (*_IN_PLACE_RETRY_S, None):
            try:
                await self.handler(event)
                break
            except Exception:
                if delay is None:
                    log.exception(
                        "%s: event %s failed; left pending for a later retry",
                        self.group,
                        event.event_id,
                    )
                    return False
                log.warning("%s: event %s failed; retrying", self.group, event.event_id)
                await asyncio.sleep(delay)
        self.handled += 1
        return True


Entry = tuple[bytes, dict[bytes, bytes] | None]


class _Lanes:
    """What a consumer holds of one shard: per lane, the entries read and not handled yet
    (in stream order), those being handled, those handled and not acknowledged yet, and
    the lane's worker task while it runs."""

    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.keys = shard_streams(shard)
        self._queues: dict[str, deque[Entry]] = {key: deque() for key in self.keys}
        self._done: dict[str, list[bytes]] = {key: [] for key in self.keys}
        self._handling: set[bytes] = set()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._reads: dict[asyncio.Task[list[tuple[str, list[Entry]]]], list[str]] = {}
        """The shard loop's reads in flight and the lanes each waits on (disjoint)."""
        self._turn = 0

    @property
    def held(self) -> bool:
        return any(self._queues.values())

    @property
    def working(self) -> set[asyncio.Task[None]]:
        return set(self._workers.values())

    def dry(self) -> list[str]:
        """The lanes holding nothing to handle and without a worker."""
        return [key for key in self.keys if not self._queues[key] and key not in self._workers]

    @property
    def reads(self) -> set[asyncio.Task[list[tuple[str, list[Entry]]]]]:
        return set(self._reads)

    def unread(self) -> list[str]:
        """The lanes nobody reads: holding nothing, no worker, no read in flight."""
        reading = {key for keys in self._reads.values() for key in keys}
        return [key for key in self.dry() if key not in reading]

    def start_read(
        self, keys: list[str], read: Coroutine[Any, Any, list[tuple[str, list[Entry]]]]
    ) -> None:
        self._reads[asyncio.get_running_loop().create_task(read)] = keys

    def hand_over(self, read: asyncio.Task[list[tuple[str, list[Entry]]]], key: str) -> None:
        """A lane's worker ends while its read of lane `key` still waits: the read is the
        lane's read of the shard's loop from now on (collected as the loop's own)."""
        self._reads[read] = [key]

    def finished_reads(self) -> list[asyncio.Task[list[tuple[str, list[Entry]]]]]:
        """The reads that finished, forgotten here (their lanes are unread again)."""
        finished = [task for task in self._reads if task.done()]
        for task in finished:
            del self._reads[task]
        return finished

    async def stop_reads(self) -> None:
        for task in self._reads:
            task.cancel()
        for task in self._reads:
            with contextlib.suppress(BaseException):
                await task
        self._reads.clear()

    def has_done(self) -> bool:
        return any(self._done.values())

    def idle_with_entries(self) -> list[str]:
        return [key for key in self.keys if self._queues[key] and key not in self._workers]

    def start_worker(self, key: str, work: Coroutine[Any, Any, None]) -> None:
        self._workers[key] = asyncio.get_running_loop().create_task(work)

    def reap_workers(self) -> None:
        """Forget the workers that finished; raise the first error one of them raised."""
        error: BaseException | None = None
        for key, task in list(self._workers.items()):
            if task.done():
                del self._workers[key]
                if not task.cancelled() and task.exception() is not None and error is None:
                    error = task.exception()
        if error is not None:
            raise error

    async def stop_workers(self) -> None:
        for task in self._workers.values():
            task.cancel()
        for task in self._workers.values():
            with contextlib.suppress(BaseException):
                await task
        self._workers.clear()

    def take(self, key: str) -> Entry | None:
        """The lane's next entry, now being handled; None when none is held."""
        queue = self._queues[key]
        if not queue:
            return None
        entry = queue.popleft()
        self._handling.add(entry[0])
        return entry

    def finished(self, entry_id: bytes) -> None:
        self._handling.discard(entry_id)

    def add(self, key: str, entries: list[Entry]) -> None:
        self._queues[key].extend(entries)

    def next_round(self) -> list[tuple[str, Entry]]:
        """One entry from each lane that holds one, starting one lane further each round
        (so no lane is always first)."""
        n = len(self.keys)
        order = [self.keys[(self._turn + i) % n] for i in range(n)]
        self._turn = (self._turn + 1) % n
        return [(key, self._queues[key].popleft()) for key in order if self._queues[key]]

    def done(self, key: str, entry_id: bytes) -> None:
        self._done[key].append(entry_id)

    def take_done(self, key: str | None = None) -> list[tuple[str, list[bytes]]]:
        """The entries handled and not acknowledged yet (of lane `key`, or of every
        lane), per lane; they are the taker's to acknowledge now."""
        keys = self.keys if key is None else [key]
        taken = [(k, self._done[k]) for k in keys if self._done[k]]
        for k, _ in taken:
            self._done[k] = []
        return taken

    def give_back_done(self, taken: list[tuple[str, list[bytes]]]) -> None:
        """Entries taken to acknowledge whose acknowledgement may have failed."""
        for key, ids in taken:
            self._done[key][:0] = ids

    def oldest_ms(self) -> int | None:
        """The stream time (ms) of the oldest entry held (queued or being handled)."""
        heads = [queue[0][0] for queue in self._queues.values() if queue]
        heads += self._handling
        return min(int(entry_id.split(b"-")[0]) for entry_id in heads) if heads else None

    def held_ids(self) -> frozenset[bytes]:
        """Entries this consumer holds: read and not handled yet, or being handled."""
        queued = (entry_id for queue in self._queues.values() for entry_id, _ in queue)
        return frozenset((*queued, *self._handling))
