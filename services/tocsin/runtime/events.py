"""The incident-events streams: a transactional outbox, consumed with consumer groups.

The architecture's single `incident-events` stream is split into one stream per incident
shard, `tocsin:{tN}:incident-events`, because the outbox XADD must run in the same Lua
script, and so the same Cluster slot, as the incident it describes. An incident's shard is
fixed by its id (`incident_shard`), so its events stay in order.

Each consumer group (escalation, notification) reads every shard with one blocking
XREADGROUP per shard, handles entries in order, and XACKs them (one XACK per read) only
after its handler succeeded. Entries left pending by a consumer that died are taken over
with XAUTOCLAIM after `claim_idle_ms` (looked for every half of it; a restarted process
with the same identity resumes its own at once); an entry whose handler keeps failing is
moved to a dead-letter stream after `max_deliveries`, so one bad entry cannot stall a
shard forever.

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
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from google.protobuf.message import DecodeError
from redis.exceptions import ResponseError

from tocsin.runtime.loops import LoopGuard, WorkerHealth, lone_guard
from tocsin.runtime.redis import RedisClient, blocking_ms
from tocsin.runtime.timers import shard_tag
from tocsin.v1 import incidents_pb2

log = logging.getLogger(__name__)

INCIDENT_SHARDS = 16
"""Fixed at deployment: incident ids encode their shard (id mod 16)."""

EVENT_FIELD = b"e"
STREAM_MAXLEN = 20_000
"""Per shard (about 320k events in all): consumers lag by milliseconds, and the escalation
auditor re-arms anything an unusually long outage let them miss."""
CONSUMER_GROUPS = ("escalation", "notification")
"""Groups the producer creates before its first XADD, so no consumer misses an event."""

_IN_PLACE_RETRY_S = (0.05, 0.2, 0.5, 1.0)

Handler = Callable[[incidents_pb2.IncidentEvent], Awaitable[None]]


def incident_shard(incident_id: str) -> int:
    return int(incident_id) % INCIDENT_SHARDS


def stream_key(shard: int) -> str:
    return f"tocsin:{shard_tag(shard)}:incident-events"


def dead_letter_key(shard: int) -> str:
    return f"tocsin:{shard_tag(shard)}:incident-events:dead"


async def ensure_groups(
    redis: RedisClient, groups: Sequence[str], start_id: str, shards: int = INCIDENT_SHARDS
) -> None:
    """Create the consumer groups (and streams) that do not exist yet."""
    for shard in range(shards):
        for group in groups:
            try:
                await redis.xgroup_create(stream_key(shard), group, id=start_id, mkstream=True)
            except ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise


def instance_name(group: str) -> str:
    """A stable name for this process in `group`: TOCSIN_INSTANCE if set, else the host
    name. Stable across restarts on purpose: a restarted process (same container, same
    pod) picks up the entries it left pending at once, and takes back its own shard
    leases, instead of waiting for them to time out. Replicas on one host must set
    distinct TOCSIN_INSTANCE values (Kubernetes pods differ by host name already)."""
    return f"{group}-{os.environ.get('TOCSIN_INSTANCE') or socket.gethostname()}"


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
        batch: int = 100,
        claim_idle_ms: int = 10_000,
        max_deliveries: int = 10,
    ) -> None:
        self.redis = redis
        self.group = group
        self.handler = handler
        self.consumer = consumer or instance_name(group)
        self.shards = tuple(shards)
        self.block_ms = blocking_ms(redis, block_ms)
        """The block asked for, capped below the client's socket timeout."""
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.handled = 0

    async def start(self) -> None:
        # "$" only matters when a new group joins an existing stream: it starts at the end.
        await ensure_groups(self.redis, [self.group], "$", len(self.shards))

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
        """Handle whatever is available now without blocking (for tests and the fast path)."""
        count = 0
        for shard in self.shards:
            count += await self._read(shard, block_ms=None, pending=True)
            count += await self._read(shard, block_ms=None, pending=False)
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
        resumed = False
        while not stop.is_set():
            async with guard:
                if not resumed:  # what this consumer received before a restart, first
                    await self._read(shard, block_ms=None, pending=True)
                    resumed = True
                await self._read(shard, block_ms=self.block_ms, pending=False)
                now = loop.time()  # real time on purpose: XAUTOCLAIM judges Redis' idle time
                if now >= next_claim:
                    next_claim = now + self.claim_idle_ms / 2000
                    await self._claim_shard(shard)

    async def _read(self, shard: int, *, block_ms: int | None, pending: bool) -> int:
        key = stream_key(shard)
        reply: Any = await self.redis.xreadgroup(
            self.group,
            self.consumer,
            {key: "0" if pending else ">"},
            count=self.batch,
            block=block_ms,
        )
        entries: list[tuple[bytes, dict[bytes, bytes] | None]] = reply[0][1] if reply else []
        done = [entry_id for entry_id, fields in entries if await self._handle(entry_id, fields)]
        await self._ack(shard, done)
        return len(entries)

    async def _ack(self, shard: int, entry_ids: list[bytes]) -> None:
        """One XACK for the entries of a read that were handled: under an alert storm a
        round trip per entry was most of a consumer's time, and it delayed the pages of
        other incidents in the shard. A crash before it means those entries are
        delivered again, as a crash between handling and acknowledging one always
        could: handlers are idempotent."""
        if entry_ids:
            await self.redis.xack(stream_key(shard), self.group, *entry_ids)

    async def _claim_shard(self, shard: int) -> int:
        key = stream_key(shard)
        reply: Any = await self.redis.xautoclaim(
            key, self.group, self.consumer, self.claim_idle_ms, start_id="0-0", count=self.batch
        )
        entries: list[tuple[bytes, dict[bytes, bytes] | None]] = reply[1]
        done: list[bytes] = []
        for entry_id, fields in entries:
            if fields is None:
                continue
            if await self._delivery_count(key, entry_id) > self.max_deliveries:
                await self._dead_letter(shard, entry_id, fields)
                continue
            if await self._handle(entry_id, fields):
                done.append(entry_id)
        await self._ack(shard, done)
        return len(entries)

    async def _delivery_count(self, key: str, entry_id: bytes) -> int:
        rows = await self.redis.xpending_range(key, self.group, entry_id, entry_id, 1)
        return int(rows[0]["times_delivered"]) if rows else 0

    async def _dead_letter(self, shard: int, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
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
        await self.redis.xack(stream_key(shard), self.group, entry_id)

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes] | None) -> bool:
        """Run the handler, retrying in place (keeping the shard's order) a few times;
        whether the entry is done (handled, or trimmed away while pending)."""
        if not fields:
            return True
        try:
            event = incidents_pb2.IncidentEvent.FromString(fields[EVENT_FIELD])
        except (KeyError, DecodeError):
            # Left pending: XAUTOCLAIM dead-letters it after max_deliveries, and it never
            # fails the reads of the entries around it.
            log.error("%s: event %s cannot be decoded", self.group, entry_id.decode())
            return False
        event.event_id = entry_id.decode()
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
