"""The timeline outbox (runtime/timeline_outbox.py): notes other services queue in Redis
reach the incident's timeline once, in order, with the writer's trace on the ESCALATED
event; what can never be applied is dropped (logged) without holding back the rest; a dead
consumer's entries are taken over; the worker loop survives a failing entry. A real
incidents server on the standalone Redis and on the 3-master Cluster."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.incidents.harness import Served, event_kinds, events_of, trigger_request
from tocsin.runtime.loops import WorkerHealth
from tocsin.runtime.timeline_outbox import (
    GROUP,
    REQUEST_FIELD,
    STREAM_KEY,
    TimelineOutbox,
    TimelineOutboxConsumer,
)
from tocsin.v1 import incidents_pb2

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def note(
    incident_id: str,
    message: str,
    key: str,
    kind: incidents_pb2.TimelineKind.ValueType = incidents_pb2.TIMELINE_KIND_NOTIFICATION,
) -> incidents_pb2.AppendTimelineRequest:
    return incidents_pb2.AppendTimelineRequest(
        incident_id=incident_id,
        entry=incidents_pb2.TimelineEntry(kind=kind, message=message),
        idempotency_key=key,
    )


async def timeline(served: Served, incident_id: str) -> list[str]:
    reply = await served.stub.GetIncident(
        incidents_pb2.GetIncidentRequest(incident_id=incident_id, include_timeline=True)
    )
    return [entry.message for entry in reply.incident.timeline[1:]]  # after TRIGGERED


async def pending(served: Served) -> int:
    summary = await served.redis.xpending(STREAM_KEY, GROUP)
    return int(summary["pending"])


async def new_incident(served: Served, dedup_key: str) -> str:
    reply = await served.stub.Trigger(trigger_request(dedup_key=dedup_key))
    return reply.incident.id


async def test_queued_notes_are_appended_once_in_order_with_the_writers_trace(
    served: Served,
) -> None:
    first, second = await new_incident(served, "a"), await new_incident(served, "b")
    outbox = TimelineOutbox(served.redis)
    await outbox.append(
        [
            note(
                first,
                "Escalation level 1 paged alice",
                "t1/0",
                incidents_pb2.TIMELINE_KIND_ESCALATED,
            ),
            note(second, "SMS to bob queued", "n2/0"),
            note(first, "SMS to alice queued", "n1/0"),
        ],
        TRACEPARENT,
    )
    # A redone hop queues its notes again: the idempotency keys drop the repeats.
    await outbox.append([note(first, "SMS to alice queued", "n1/0")])
    await outbox.append([note(first, "SMS to alice delivered", "n1/1")])
    consumer = served.running.timeline_outbox
    assert await consumer.drain_once() == 5
    assert await consumer.drain_once() == 0
    assert await timeline(served, first) == [
        "Escalation level 1 paged alice",
        "SMS to alice queued",
        "SMS to alice delivered",
    ]
    assert await timeline(served, second) == ["SMS to bob queued"]
    events = await events_of(served.redis, first)
    assert event_kinds(events) == ["TRIGGERED", "ESCALATED"]
    assert events[1].note == "Escalation level 1 paged alice"
    assert events[1].traceparent.split("-")[1] == TRACEPARENT.split("-")[1]
    assert await pending(served) == 0


async def test_entries_that_can_never_be_applied_are_dropped_without_holding_others(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    incident = await new_incident(served, "c")
    outbox = TimelineOutbox(served.redis)
    await outbox.append([note("99999", "for an incident that does not exist", "x/0")])
    await outbox.append([note("not-a-number", "an invalid incident id", "x/1")])
    await served.redis.xadd(STREAM_KEY, {REQUEST_FIELD: b"\xff\xff not protobuf"})
    await outbox.append([note(incident, "SMS to alice queued", "n/0")])
    with caplog.at_level(logging.WARNING, logger="tocsin.runtime.timeline_outbox"):
        assert await served.running.timeline_outbox.drain_once() == 4
    assert await timeline(served, incident) == ["SMS to alice queued"]
    assert await pending(served) == 0  # all acknowledged: none comes back
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "99999" in messages and "cannot be decoded" in messages


async def test_a_dead_consumers_entries_are_taken_over_and_a_poison_entry_given_up(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    incident = await new_incident(served, "d")

    async def dies(request: incidents_pb2.AppendTimelineRequest, traceparent: str) -> None:
        raise RuntimeError("the process died while appending")

    dying = TimelineOutboxConsumer(served.redis, dies, "incidents-dying")
    await TimelineOutbox(served.redis).append(
        [note(incident, "SMS to alice queued", "n/0"), note(incident, "SMS delivered", "n/1")]
    )
    assert await dying.drain_once() == 2
    assert await pending(served) == 2  # read, never applied: still owed
    assert await timeline(served, incident) == []

    apply = served.running.servicer.append_timeline
    heir = TimelineOutboxConsumer(served.redis, apply, "incidents-heir", claim_idle_ms=0)
    assert await heir.claim_stale() == 2
    assert await timeline(served, incident) == ["SMS to alice queued", "SMS delivered"]
    assert await pending(served) == 0

    # An entry that fails every time is given up after max_deliveries, not retried forever.
    await TimelineOutbox(served.redis).append([note(incident, "poison", "n/2")])
    poisoned = TimelineOutboxConsumer(
        served.redis, dies, "incidents-poisoned", claim_idle_ms=0, max_deliveries=2
    )
    await poisoned.drain_once()  # delivery 1
    with caplog.at_level(logging.ERROR, logger="tocsin.runtime.timeline_outbox"):
        assert await poisoned.claim_stale() == 1  # delivery 2: failed again, kept
        assert await pending(served) == 1
        assert await poisoned.claim_stale() == 1  # delivery 3: past the limit
    assert await pending(served) == 0
    assert "failed too often" in caplog.text


async def test_the_worker_loop_appends_as_notes_arrive_and_survives_a_failure(
    served: Served,
) -> None:
    incident = await new_incident(served, "e")
    failures = 0
    apply = served.running.servicer.append_timeline

    async def flaky(request: incidents_pb2.AppendTimelineRequest, traceparent: str) -> None:
        nonlocal failures
        if request.entry.message == "flaky" and failures == 0:
            failures += 1
            raise ConnectionError("incidents' Redis connection dropped")
        await apply(request, traceparent)

    consumer = TimelineOutboxConsumer(
        served.redis, flaky, "incidents-loop", block_ms=50, claim_idle_ms=200
    )
    stop, health = asyncio.Event(), WorkerHealth()
    loop = asyncio.create_task(consumer.run(stop, health))
    try:
        await TimelineOutbox(served.redis).append(
            [note(incident, "flaky", "n/0"), note(incident, "after it", "n/1")]
        )
        for _ in range(200):  # real time: the loop's own reads and its claim interval
            if len(await timeline(served, incident)) == 2:
                break
            await asyncio.sleep(0.025)
        # The failed entry was retried (taken over after claim_idle_ms) and the one after
        # it waited for it: the incident's order holds.
        assert await timeline(served, incident) == ["flaky", "after it"]
        assert failures == 1
        assert not loop.done()
        assert not health.problems()
    finally:
        stop.set()
        await loop
    assert await pending(served) == 0


async def test_a_restarted_consumer_retries_its_own_entries_once_and_moves_on(
    served: Served,
) -> None:
    """A consumer restarted under its old name first applies what it read before and did
    not finish. An entry that fails again stays pending (for `claim_stale`) and is not
    read again and again: the loop goes on to new entries."""
    incident = await new_incident(served, "f")
    poison_attempts = 0
    apply = served.running.servicer.append_timeline

    async def dies(request: incidents_pb2.AppendTimelineRequest, traceparent: str) -> None:
        raise RuntimeError("the process died while appending")

    async def poison_fails(request: incidents_pb2.AppendTimelineRequest, traceparent: str) -> None:
        nonlocal poison_attempts
        if request.entry.message == "poison":
            poison_attempts += 1
            raise ConnectionError("still failing")
        await apply(request, traceparent)

    outbox = TimelineOutbox(served.redis)
    await outbox.append([note(incident, "poison", "n/0")])
    before = TimelineOutboxConsumer(served.redis, dies, "incidents-restarted")
    assert await before.drain_once() == 1  # read, failed: pending to this name
    await outbox.append([note("99999", "for another incident", "x/0")])
    await outbox.append([note(incident, "after the restart", "n/1")])

    after = TimelineOutboxConsumer(
        served.redis, poison_fails, "incidents-restarted", block_ms=50, claim_idle_ms=60_000
    )
    stop = asyncio.Event()
    loop = asyncio.create_task(after.run(stop, WorkerHealth()))
    try:
        for _ in range(200):  # real time: the loop's own reads
            if "after the restart" in await timeline(served, incident):
                break
            await asyncio.sleep(0.025)
        assert await timeline(served, incident) == ["after the restart"]
        assert poison_attempts == 1
        assert await pending(served) == 1  # the poison entry, left for claim_stale
    finally:
        stop.set()
        await loop
