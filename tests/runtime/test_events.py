"""The incident-events streams: in-order delivery, takeover of a dead consumer's entries,
dead-lettering of an entry that always fails. Standalone and Cluster."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from redis.asyncio.connection import AbstractConnection

from tests.redis_wire import sent_commands
from tocsin.runtime import events
from tocsin.runtime.events import (
    CONSUMER_GROUPS,
    EVENT_FIELD,
    EventConsumer,
    dead_letter_key,
    ensure_groups,
    incident_shard,
    stream_key,
)
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import incidents_pb2

TRIGGERED = incidents_pb2.INCIDENT_EVENT_KIND_TRIGGERED
ACKED = incidents_pb2.INCIDENT_EVENT_KIND_ACKNOWLEDGED


async def publish(
    redis: RedisClient, incident_id: str, kind: incidents_pb2.IncidentEventKind.ValueType
) -> None:
    event = incidents_pb2.IncidentEvent(kind=kind, incident=incidents_pb2.Incident(id=incident_id))
    await redis.xadd(
        stream_key(incident_shard(incident_id)), {EVENT_FIELD: event.SerializeToString()}
    )


class Recorder:
    """A handler recording the incidents of the events it handled, in order."""

    def __init__(self) -> None:
        self.handled: list[str] = []
        self._changed = asyncio.Condition()

    async def __call__(self, event: incidents_pb2.IncidentEvent) -> None:
        async with self._changed:
            self.handled.append(event.incident.id)
            self._changed.notify_all()

    async def handled_at_least(self, count: int) -> None:
        async with asyncio.timeout(10), self._changed:
            await self._changed.wait_for(lambda: len(self.handled) >= count)


@pytest.fixture
async def groups(any_redis: RedisClient) -> RedisClient:
    await ensure_groups(any_redis, CONSUMER_GROUPS, "0")
    return any_redis


async def test_each_event_is_handled_once_in_order_per_incident(groups: RedisClient) -> None:
    seen: list[tuple[str, int]] = []

    async def handler(event: incidents_pb2.IncidentEvent) -> None:
        seen.append((event.incident.id, event.kind))

    for incident in ("17", "33", "18"):
        await publish(groups, incident, TRIGGERED)
        await publish(groups, incident, ACKED)
    consumer = EventConsumer(groups, "escalation", handler)
    assert await consumer.drain_once() == 6
    assert await consumer.drain_once() == 0
    for incident in ("17", "33", "18"):
        assert [k for i, k in seen if i == incident] == [TRIGGERED, ACKED]
    other_group: list[str] = []

    async def other(event: incidents_pb2.IncidentEvent) -> None:
        other_group.append(event.incident.id)

    assert await EventConsumer(groups, "notification", other).drain_once() == 6


async def test_entries_of_a_dead_consumer_are_taken_over(
    groups: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "_IN_PLACE_RETRY_S", ())

    async def crash(event: incidents_pb2.IncidentEvent) -> None:
        raise RuntimeError("process died mid-handler")

    await publish(groups, "5", TRIGGERED)
    dying = EventConsumer(groups, "escalation", crash, consumer="dying")
    await dying.drain_once()
    taken: list[str] = []

    async def handler(event: incidents_pb2.IncidentEvent) -> None:
        taken.append(event.incident.id)

    survivor = EventConsumer(groups, "escalation", handler, consumer="survivor", claim_idle_ms=0)
    assert await survivor.drain_once() == 0  # nothing new: the entry is the dead one's
    assert await survivor.claim_stale() == 1
    assert taken == ["5"]
    assert await survivor.claim_stale() == 0


async def test_an_entry_that_always_fails_is_dead_lettered(
    groups: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "_IN_PLACE_RETRY_S", ())
    attempts = 0

    async def broken(event: incidents_pb2.IncidentEvent) -> None:
        nonlocal attempts
        attempts += 1
        raise ValueError("bad entry")

    await publish(groups, "2", TRIGGERED)
    consumer = EventConsumer(groups, "escalation", broken, claim_idle_ms=0, max_deliveries=3)
    await consumer.drain_once()
    for _ in range(5):
        await consumer.claim_stale()
    assert attempts == 3
    assert await groups.xlen(dead_letter_key(2)) == 1
    pending = await groups.xpending(stream_key(2), "escalation")
    assert pending["pending"] == 0


async def test_one_xack_per_read_for_the_entries_handled(
    redis: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An alert storm's events cost the consumer one XACK per read, not one per event;
    an entry whose handler failed stays pending, and every event carries its entry id."""
    monkeypatch.setattr(events, "_IN_PLACE_RETRY_S", ())
    await ensure_groups(redis, CONSUMER_GROUPS, "0")
    for _ in range(50):
        await publish(redis, "16", TRIGGERED)  # all in shard 0
    await publish(redis, "32", ACKED)  # shard 0 too; its handler fails
    ids: list[str] = []

    async def handler(event: incidents_pb2.IncidentEvent) -> None:
        if event.kind == ACKED:
            raise RuntimeError("not now")
        ids.append(event.event_id)

    await redis.config_resetstat()
    # one read of up to 64 entries of the lane
    assert await EventConsumer(redis, "escalation", handler, batch=64).drain_once() == 51
    stats = await redis.info("commandstats")
    assert stats["cmdstat_xack"]["calls"] == 1
    entries: Any = await redis.xrange(stream_key(0))
    assert ids == [entry_id.decode() for entry_id, _ in entries[:50]]
    pending = await redis.xpending(stream_key(0), "escalation")
    assert pending["pending"] == 1


async def test_a_lane_stuck_on_its_event_does_not_hold_back_another_lane(
    groups: RedisClient,
) -> None:
    """Lanes of a shard are handled concurrently, each in order: while a handler of one
    lane hangs (a peer that does not answer), the events of another lane of the same
    shard are handled, in order, and the stuck lane's later events wait for it."""
    stuck = asyncio.Event()
    order: list[str] = []
    handled = asyncio.Condition()

    async def handler(event: incidents_pb2.IncidentEvent) -> None:
        if event.incident.id == "16" and not stuck.is_set():
            await stuck.wait()
        async with handled:
            order.append(event.incident.id)
            handled.notify_all()

    async def until_handled(count: int) -> None:
        async with asyncio.timeout(10), handled:
            await handled.wait_for(lambda: len(order) >= count)

    def event(incident_id: str, kind: incidents_pb2.IncidentEventKind.ValueType) -> Any:
        pb = incidents_pb2.IncidentEvent(kind=kind, incident=incidents_pb2.Incident(id=incident_id))
        return {EVENT_FIELD: pb.SerializeToString()}

    # shard 0: incident 16 (and 48 behind it) on lane 1, incidents 32 and 64 on lane 2
    await groups.xadd(stream_key(0, 1), event("16", TRIGGERED))
    await groups.xadd(stream_key(0, 1), event("48", TRIGGERED))
    await groups.xadd(stream_key(0, 2), event("32", TRIGGERED))
    await groups.xadd(stream_key(0, 2), event("32", ACKED))
    await groups.xadd(stream_key(0, 2), event("64", TRIGGERED))
    consumer = EventConsumer(groups, "escalation", handler, shards=[0], block_ms=200)
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    try:
        await until_handled(3)
        assert order == ["32", "32", "64"]  # lane 2 in order, lane 1 still stuck on 16
        stuck.set()
        await until_handled(5)
        assert order[3:] == ["16", "48"]
    finally:
        stop.set()
        await running
    # everything handled was acknowledged (at the latest when the consumer stopped)
    await consumer.drain_once()
    for lane in (1, 2):
        assert (await groups.xpending(stream_key(0, lane), "escalation"))["pending"] == 0


async def test_incidents_of_a_lane_are_handled_at_once_each_in_order(
    groups: RedisClient,
) -> None:
    """A consumer with `incidents_at_once` handles different incidents of one lane
    concurrently and each incident's events in stream order: while the handler of
    incident 16's first event hangs (a slow Notify), incident 32, later in the same lane,
    is handled, and 16's next event waits for its first. With one at a time (the default)
    32 waits behind 16, which is what this guards against."""
    stuck = asyncio.Event()
    order: list[tuple[str, int]] = []
    handled = asyncio.Condition()
    running: set[str] = set()
    overlapped: list[str] = []

    async def handler(event: incidents_pb2.IncidentEvent) -> None:
        incident = event.incident.id
        if incident in running:
            overlapped.append(incident)  # two events of one incident at once: a defect
        running.add(incident)
        try:
            if incident == "16" and event.kind == TRIGGERED and not stuck.is_set():
                await stuck.wait()
            await asyncio.sleep(0)  # let another event of the incident in, if it could
            async with handled:
                order.append((incident, event.kind))
                handled.notify_all()
        finally:
            running.discard(incident)

    async def until_handled(count: int, within_s: float = 10) -> None:
        async with asyncio.timeout(within_s), handled:
            await handled.wait_for(lambda: len(order) >= count)

    async def consume(at_once: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        consumer = EventConsumer(
            groups, "escalation", handler, shards=[0], block_ms=200, incidents_at_once=at_once
        )
        stop = asyncio.Event()
        run = asyncio.create_task(consumer.run(stop))
        try:
            await publish(groups, "16", TRIGGERED)
            await publish(groups, "16", ACKED)
            await until_handled(0)
            await asyncio.sleep(0.05)  # 16 is in hand (stuck) before 32 arrives
            await publish(groups, "32", TRIGGERED)
            await publish(groups, "48", TRIGGERED)
            await publish(groups, "32", ACKED)
            with contextlib.suppress(TimeoutError):
                await until_handled(3, within_s=1.5)
            early = list(order)
            stuck.set()
            await until_handled(5)
            await asyncio.sleep(0.3)  # nothing more comes (nothing handled twice)
            seen = list(order)
        finally:
            stop.set()
            await run
        await consumer.drain_once()  # acknowledges what was handled before the stop
        assert (await groups.xpending(stream_key(0), "escalation"))["pending"] == 0
        return early, seen

    early, seen = await consume(16)
    assert early == [("32", TRIGGERED), ("48", TRIGGERED), ("32", ACKED)]
    assert seen[3:] == [("16", TRIGGERED), ("16", ACKED)]
    assert not overlapped
    order.clear()
    stuck.clear()
    early, seen = await consume(1)
    assert early == []  # one at a time: the lane waits for 16
    assert seen == [
        ("16", TRIGGERED),
        ("16", ACKED),
        ("32", TRIGGERED),
        ("48", TRIGGERED),
        ("32", ACKED),
    ]


async def test_a_lingering_consumer_leaves_the_first_moments_to_the_page_path(
    groups: RedisClient,
) -> None:
    """A group off the page path (history, outgoing webhooks) is woken by the same XADD
    as escalation and notification; with `linger_ms` it handles nothing until that long
    after its read, and what arrived meanwhile is handled with it. Without it (the page
    path's consumers) the event is handled at once."""
    seen: list[tuple[str, float]] = []
    handled = asyncio.Condition()

    async def handler(event: incidents_pb2.IncidentEvent) -> None:
        async with handled:
            seen.append((event.incident.id, asyncio.get_running_loop().time()))
            handled.notify_all()

    async def consume(linger_ms: int, shard: int) -> float:
        seen.clear()
        first, second = str(16 + shard), str(32 + shard)  # both in `shard`
        consumer = EventConsumer(
            groups,
            "history",
            handler,
            shards=[shard],
            block_ms=200,
            linger_ms=linger_ms,
            start_id="0",
            incidents_at_once=8,
        )
        await ensure_groups(groups, ["history"], "0", shards=2)
        stop = asyncio.Event()
        run = asyncio.create_task(consumer.run(stop))
        try:
            await asyncio.sleep(0.3)  # the shard's loop is blocked in its read
            published = asyncio.get_running_loop().time()
            await publish(groups, first, TRIGGERED)
            await asyncio.sleep(0.2)
            early = [incident for incident, _ in seen]
            await publish(groups, second, TRIGGERED)
            async with asyncio.timeout(10), handled:
                await handled.wait_for(lambda: len(seen) >= 2)
        finally:
            stop.set()
            await run
        assert [incident for incident, _ in seen] == [first, second]
        if linger_ms:
            assert early == []  # still lingering 0.2 s after the event
        else:
            assert early == [first]
        return seen[0][1] - published

    assert await consume(1_000, shard=0) >= 1.0
    assert await consume(0, shard=1) < 0.2


async def test_a_running_consumer_acknowledges_with_its_next_read(
    groups: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running consumer sends no XACK on its own: the entries its lane worker handled
    are acknowledged in the same round trip as the worker's next read of the lane (or the
    shard loop's next read), one round trip per read fewer. Every entry handled ends up
    acknowledged, on a Cluster too."""
    sends: list[list[bytes]] = []
    send = AbstractConnection.send_packed_command

    async def recording(self: Any, command: Any, check_health: bool = True) -> None:
        # the command names of this write (one command, or a pipeline's)
        sends.append([args[0].upper() for args in sent_commands(command)])
        await send(self, command, check_health)

    handler = Recorder()

    async def pending() -> int:
        counts = [
            (await groups.xpending(stream_key(0, lane), "escalation"))["pending"]
            for lane in range(8)
        ]
        return sum(counts)

    consumer = EventConsumer(groups, "escalation", handler, shards=[0], block_ms=2000)
    stop = asyncio.Event()
    monkeypatch.setattr(AbstractConnection, "send_packed_command", recording)
    running = asyncio.create_task(consumer.run(stop))
    try:
        for n in range(1, 9):  # one at a time, each on its own lane
            await groups.xadd(
                stream_key(0, n % 8),
                {
                    EVENT_FIELD: incidents_pb2.IncidentEvent(
                        kind=TRIGGERED, incident=incidents_pb2.Incident(id=str(16 * n))
                    ).SerializeToString()
                },
            )
            await handler.handled_at_least(n)
        for _ in range(1000):  # acknowledged once handled, within ten seconds
            if not await pending():
                break
            await asyncio.sleep(0.01)
        assert await pending() == 0
    finally:
        stop.set()
        await running
    assert len(handler.handled) == 8
    xacks = [names for names in sends if b"XACK" in names]
    assert xacks, "nothing was acknowledged through this process's connections"
    assert all(b"XREADGROUP" in names for names in xacks), xacks


async def test_a_lane_whose_worker_finished_is_read_again_at_once(groups: RedisClient) -> None:
    """While a lane's worker runs, the shard loop waits (blocking, up to `block_ms`) on the
    other lanes. When the worker finishes, its lane must be waited on again at once: an
    event arriving there next is handled in milliseconds, not when the loop's read of the
    other lanes ends (here up to 4 s; at 80 incidents/s this was the first page's 100 ms
    tail, the loop's `refill_ms`)."""
    release = asyncio.Event()
    started = asyncio.Event()
    second = asyncio.Event()

    async def handler(event: incidents_pb2.IncidentEvent) -> None:
        if event.incident.id == "16":
            started.set()
            await release.wait()  # a slow hop: the worker is busy
        else:
            second.set()

    consumer = EventConsumer(
        groups, "escalation", handler, shards=[0], block_ms=4000, refill_ms=60_000
    )
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    try:
        await publish(groups, "16", TRIGGERED)  # shard 0
        async with asyncio.timeout(10):
            await started.wait()
        release.set()
        # The worker ends; the loop's new read of its lane carries 16's acknowledgement:
        # once nothing is pending, it has (real time: the consumer's own round trips).
        for _ in range(1000):
            if not (await groups.xpending(stream_key(0), "escalation"))["pending"]:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the worker never acknowledged incident 16's event")
        await asyncio.sleep(0.05)  # the worker's task has returned; the loop has noticed
        await publish(groups, "32", TRIGGERED)  # the same shard and lane
        async with asyncio.timeout(1.0):  # the other lanes' read blocks up to 4 s
            await second.wait()
    finally:
        stop.set()
        await running


def _read_streams(args: list[bytes]) -> list[bytes]:
    """The stream keys an XREADGROUP command reads."""
    after = args[[a.upper() for a in args].index(b"STREAMS") + 1 :]
    return after[: len(after) // 2]


@pytest.mark.parametrize("at_once", [1, 4])
async def test_an_event_costs_its_lane_one_read_below_saturation(
    groups: RedisClient, monkeypatch: pytest.MonkeyPatch, at_once: int
) -> None:
    """Events arriving one at a time on a lane: each is brought by the one blocking read
    waiting on the lane, and the worker that handled it ends without reading the lane
    again (the read after it returns at once if entries came). A worker handling
    incidents at once hands the read it has waiting to the shard's loop rather than
    letting it run out. Before, each event cost its lane two reads (the worker's last
    read, always empty, then the loop's), three with incidents at once (its read waited
    out `refill_ms`)."""
    lane = stream_key(0)
    lane_reads = 0
    send = AbstractConnection.send_packed_command

    async def recording(self: Any, command: Any, check_health: bool = True) -> None:
        nonlocal lane_reads
        for args in sent_commands(command, None):
            if args[0].upper() == b"XREADGROUP" and _read_streams(args) == [lane.encode()]:
                lane_reads += 1
        await send(self, command, check_health)

    handler = Recorder()

    consumer = EventConsumer(
        groups, "escalation", handler, shards=[0], block_ms=4000, incidents_at_once=at_once
    )
    stop = asyncio.Event()
    monkeypatch.setattr(AbstractConnection, "send_packed_command", recording)
    running = asyncio.create_task(consumer.run(stop))
    events = 10
    try:
        for n in range(1, events + 1):
            await publish(groups, str(16 * n), TRIGGERED)  # shard 0, lane 0
            await handler.handled_at_least(n)
            # longer than `refill_ms`: a worker's read waiting on an empty lane would
            # have run out, and a worker that reads once more would have
            await asyncio.sleep(0.15)
    finally:
        stop.set()
        await running
    assert handler.handled == [str(16 * n) for n in range(1, events + 1)]
    # one read per event, plus the one waiting when the consumer stopped
    assert lane_reads <= events + 1, lane_reads
