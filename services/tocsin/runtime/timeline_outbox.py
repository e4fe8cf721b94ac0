"""The timeline outbox: other services' timeline entries, carried to incidents by a stream.

Escalation writes a note for every level it fires ("Escalation level 1 paged alice") and
notification one for every page it sends ("SMS to alice queued"). Each used to be an
AppendTimeline call: a gRPC round trip per note, two per new incident, on the page path's
processes while the page was going out (a bare gRPC hop costs about 0.7 ms of CPU on the
reference machine, client and server together). Now the writer XADDs the
`AppendTimelineRequest` to one stream, `tocsin:{timeline-outbox}:stream` (one Redis round
trip, the notes of a hop in one pipeline), and the incidents service applies them, many a
read, off the page path, with the same validation and the same idempotency key as the RPC
(which stays, for callers outside the stack).

The contract is the stream and its fields: `r`, the `AppendTimelineRequest` protobuf;
`tp`, the writer's W3C traceparent ('' = none), which the ESCALATED event an entry may
publish carries, as the RPC's call context did. Writing it needs the stack's Redis
credentials, which only the services hold.

Guarantees. An entry is appended at most once (its idempotency key, as with the RPC) and
at least once if its write returned: the consumer group keeps an entry pending until the
incidents process that read it has applied it (XACK after, pipelined with its next read),
and a process that died holding entries has them taken over (XAUTOCLAIM) after
`claim_idle_ms`. An entry that can never be applied (its incident expired, an invalid
entry) is logged and acknowledged; one that keeps failing for another reason is given up
after `max_deliveries` tries, logged. A write that fails is the writer's to log, as a
failed AppendTimeline was: a note is best effort and never holds a page back. Entries of
one incident are applied in the order they were written when one incidents process reads
them (the usual case); with several replicas two of them may apply one incident's notes
out of order. Every note carries its own time (`entry.at`), which the timeline shows.

The stream is capped at `MAXLEN` entries (approximately): a consumer down for longer than
the cap's worth of notes loses the oldest, as the RPC's callers lost notes while incidents
was down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from google.protobuf.message import DecodeError
from redis.exceptions import ResponseError

from tocsin.runtime.errors import InvalidArgument, NotFound
from tocsin.runtime.loops import LoopGuard, WorkerHealth, lone_guard
from tocsin.runtime.redis import RedisClient, blocking_ms
from tocsin.v1 import incidents_pb2

log = logging.getLogger(__name__)

STREAM_KEY = "tocsin:{timeline-outbox}:stream"
GROUP = "incidents"
REQUEST_FIELD = b"r"
TRACE_FIELD = b"tp"
MAXLEN = 100_000
"""About this many entries are kept (XADD MAXLEN ~): minutes of notes at any rate the
page path reaches, for a consumer that was away."""

Apply = Callable[[incidents_pb2.AppendTimelineRequest, str], Awaitable[object]]
"""Apply one entry (the request, the writer's traceparent; what it returns is ignored).
Raises NotFound or InvalidArgument for an entry that can never be applied; anything else
is retried."""


class TimelineOutbox:
    """The writers' side: queue timeline entries for incidents to append."""

    def __init__(self, redis: RedisClient, maxlen: int = MAXLEN) -> None:
        self.redis = redis
        self.maxlen = maxlen

    async def append(
        self, requests: Sequence[incidents_pb2.AppendTimelineRequest], traceparent: str = ""
    ) -> None:
        """Queue `requests`, in order, in one round trip (MULTI: a reader sees all of them
        or none). Raises what Redis raised."""
        if not requests:
            return
        if len(requests) == 1:
            fields = _fields(requests[0], traceparent.encode())
            await self.redis.xadd(STREAM_KEY, fields, maxlen=self.maxlen, approximate=True)
            return
        pipe = self.redis.pipeline(transaction=True)  # a hop's notes arrive together
        self.queue(pipe, requests, traceparent)
        await pipe.execute()

    def queue(
        self, pipe: Any, requests: Sequence[incidents_pb2.AppendTimelineRequest], traceparent: str
    ) -> None:
        """Add the XADDs of `requests` to `pipe`, to go with other commands (e.g.
        `TimerStore.complete_with`: a hop's notes with the completion of its timer)."""
        trace = traceparent.encode()
        for request in requests:
            pipe.xadd(STREAM_KEY, _fields(request, trace), maxlen=self.maxlen, approximate=True)


def _fields(request: incidents_pb2.AppendTimelineRequest, trace: bytes) -> dict[Any, Any]:
    return {REQUEST_FIELD: request.SerializeToString(), TRACE_FIELD: trace}


class TimelineOutboxConsumer:
    """The incidents side: read the outbox in a consumer group and apply its entries.

    One loop per process: a blocking XREADGROUP of up to `batch` entries, applied
    concurrently (entries of one incident in stream order), acknowledged with the next
    read in one pipeline; with `linger_ms`, after a read that did not fill a batch, the
    loop waits that long (real time) before reading again. It does not by default: at 80
    new incidents/s a 20 ms linger delayed level 0 (created -> fired p50 19 ms against 3-4)
    and the first SMS (p50 41-51 ms against 13-26), measured in interleaved runs
    (BENCHMARKS.md), while under load the reads fill up by themselves. Every
    `claim_idle_ms / 2` it takes over entries left pending that long (a dead replica's,
    or its own that failed)."""

    def __init__(
        self,
        redis: RedisClient,
        apply: Apply,
        consumer: str,
        *,
        block_ms: int = 1000,
        batch: int = 256,
        linger_ms: int = 0,
        claim_idle_ms: int = 10_000,
        max_deliveries: int = 10,
    ) -> None:
        self.redis = redis
        self.apply = apply
        self.consumer = consumer
        self.block_ms = blocking_ms(redis, block_ms)
        self.batch = batch
        self.linger_ms = linger_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.applied = 0
        self._done: list[bytes] = []
        """Entries finished (applied or given up) and not acknowledged yet."""
        self._started = False

    async def start(self) -> None:
        """Create the group (from the stream's start: entries written before it exist);
        once per consumer."""
        if self._started:
            return
        try:
            await self.redis.xgroup_create(STREAM_KEY, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._started = True

    async def run(self, stop: asyncio.Event, health: WorkerHealth | None = None) -> None:
        """Apply entries until `stop` is set; any error is logged, backed off, retried."""
        name = "incidents timeline outbox"
        guard: LoopGuard = lone_guard(name, stop) if health is None else health.guard(name, stop)
        loop = asyncio.get_running_loop()
        own_pending = True  # after a restart, what this consumer read and did not finish
        next_claim = loop.time() + self.claim_idle_ms / 2000
        while not stop.is_set():
            async with guard:
                await self.start()
                if own_pending:
                    await self._resume()
                    own_pending = False
                read = len(await self._step(">", self.block_ms))
                if loop.time() >= next_claim:  # real time: XAUTOCLAIM judges Redis's idle
                    next_claim = loop.time() + self.claim_idle_ms / 2000
                    await self.claim_stale()
                if 0 < read < self.batch and self.linger_ms:
                    await asyncio.sleep(self.linger_ms / 1000)
        try:  # what was applied last is not delivered again to the next consumer
            await self._ack()
        except Exception as error:  # redelivered, and dropped by its idempotency key
            log.warning("timeline outbox: last acknowledgements not sent: %s", error)

    async def drain_once(self) -> int:
        """Apply what the outbox holds now, without blocking (for tests); how many."""
        await self.start()
        count = 0
        while read := await self._step(">", None):
            count += len(read)
        await self._ack()
        return count

    async def _resume(self) -> None:
        """Apply what this consumer read before a restart and did not finish, once each:
        the reads of its own pending list move past what they returned (an entry that
        fails again stays pending, for `claim_stale`, rather than being read forever)."""
        start = "0"
        while read := await self._step(start, None):
            start = read[-1].decode()

    async def _step(self, start_id: str, block_ms: int | None) -> list[bytes]:
        """Acknowledge what is done and read (in one round trip), apply what came; the
        ids that came."""
        done, self._done = self._done, []
        pipe = self.redis.pipeline(transaction=False)
        if done:
            pipe.xack(STREAM_KEY, GROUP, *done)
        pipe.xreadgroup(
            GROUP, self.consumer, {STREAM_KEY: start_id}, count=self.batch, block=block_ms
        )
        try:
            replies: list[Any] = await pipe.execute()
        except BaseException as error:
            self._done[:0] = done  # XACK is idempotent: with the next read
            if isinstance(error, ResponseError) and "NOGROUP" in str(error):
                self._started = False  # Redis lost the group (no persistence): create it
            raise
        entries = replies[-1][0][1] if replies[-1] else []
        ids = [entry_id for entry_id, _ in entries]
        # own pending entries come back with no fields once trimmed away: nothing to apply
        self._done += [entry_id for entry_id, fields in entries if not fields]
        await self._apply_all([(entry_id, fields) for entry_id, fields in entries if fields])
        return ids

    async def _ack(self) -> None:
        done, self._done = self._done, []
        if done:
            await self.redis.xack(STREAM_KEY, GROUP, *done)

    async def _apply_all(self, entries: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Apply `entries`: different incidents concurrently, one incident's in order."""
        by_incident: dict[str, list[tuple[bytes, incidents_pb2.AppendTimelineRequest, str]]] = {}
        for entry_id, fields in entries:
            try:
                request = incidents_pb2.AppendTimelineRequest.FromString(fields[REQUEST_FIELD])
            except (KeyError, DecodeError):
                log.error("timeline outbox entry %s cannot be decoded; dropped", entry_id)
                self._done.append(entry_id)
                continue
            traceparent = fields.get(TRACE_FIELD, b"").decode(errors="replace")
            by_incident.setdefault(request.incident_id, []).append((entry_id, request, traceparent))
        await asyncio.gather(*(self._apply_in_order(items) for items in by_incident.values()))

    async def _apply_in_order(
        self, items: list[tuple[bytes, incidents_pb2.AppendTimelineRequest, str]]
    ) -> None:
        for entry_id, request, traceparent in items:
            try:
                await self.apply(request, traceparent)
                self.applied += 1
            except (NotFound, InvalidArgument) as error:
                log.warning(
                    "timeline outbox entry %s for incident %s not appended: %s",
                    entry_id.decode(),
                    request.incident_id,
                    error,
                )
            except Exception:
                log.exception(
                    "timeline outbox entry %s for incident %s failed; retried later",
                    entry_id.decode(),
                    request.incident_id,
                )
                return  # this incident's later entries wait for it (pending, reclaimed)
            self._done.append(entry_id)

    async def claim_stale(self) -> int:
        """Take over entries pending past `claim_idle_ms` (a dead replica's, or this
        one's that failed) and apply them; give up on those delivered more than
        `max_deliveries` times. How many were taken over."""
        reply: Any = await self.redis.xautoclaim(
            STREAM_KEY, GROUP, self.consumer, self.claim_idle_ms, start_id="0-0", count=self.batch
        )
        entries = [(entry_id, fields) for entry_id, fields in reply[1] if fields]
        self._done += [entry_id for entry_id, fields in reply[1] if not fields]
        if entries:
            rows = await self.redis.xpending_range(
                STREAM_KEY, GROUP, entries[0][0], entries[-1][0], len(entries) * 2
            )
            deliveries = {row["message_id"]: int(row["times_delivered"]) for row in rows}
            keep = []
            for entry_id, fields in entries:
                if deliveries.get(entry_id, 0) > self.max_deliveries:
                    log.error("timeline outbox entry %s failed too often; dropped", entry_id)
                    self._done.append(entry_id)
                else:
                    keep.append((entry_id, fields))
            await self._apply_all(keep)
        await self._ack()
        return len(entries)
