"""ListIncidents filters and paging, retention (TTL and index trimming), WatchIncidents.
Standalone Redis and Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tests.incidents.harness import Served, cli_actor, create_payments, serve_incidents
from tocsin.incidents import keys
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.events import incident_shard
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import common_pb2, incidents_pb2

TRIGGERED = incidents_pb2.INCIDENT_STATUS_TRIGGERED
ACKNOWLEDGED = incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED
RESOLVED = incidents_pb2.INCIDENT_STATUS_RESOLVED
SEVERITIES = (
    common_pb2.SEVERITY_INFO,
    common_pb2.SEVERITY_WARNING,
    common_pb2.SEVERITY_ERROR,
    common_pb2.SEVERITY_CRITICAL,
)


async def _open(served: Served, count: int) -> list[incidents_pb2.Incident]:
    """`count` incidents on two services, a minute apart, oldest first; every third is
    acknowledged by alice and every fifth resolved."""
    await served.stub.CreateService(
        incidents_pb2.CreateServiceRequest(service=incidents_pb2.Service(id="search"))
    )
    opened = []
    for i in range(count):
        served.clock.advance(minutes=1)
        reply = await served.stub.Trigger(
            incidents_pb2.TriggerRequest(
                service_id="payments-api" if i % 2 == 0 else "search",
                dedup_key=f"key-{i}",
                summary=f"Disk {'FULL' if i % 4 == 0 else 'slow'} on host-{i}",
                severity=SEVERITIES[i % 4],
            )
        )
        incident = reply.incident
        if i % 3 == 0:
            incident = (
                await served.stub.Acknowledge(
                    incidents_pb2.AcknowledgeRequest(incident_id=incident.id, actor=cli_actor())
                )
            ).incident
        if i % 5 == 0:
            incident = (
                await served.stub.Resolve(incidents_pb2.ResolveRequest(incident_id=incident.id))
            ).incident
        opened.append(incident)
    return opened


async def _all_pages(served: Served, request: incidents_pb2.ListIncidentsRequest) -> list[str]:
    ids: list[str] = []
    while True:
        reply = await served.stub.ListIncidents(request)
        assert len(reply.incidents) <= max(request.page_size, 1)
        ids += [incident.id for incident in reply.incidents]
        if not reply.next_page_token:
            return ids
        request.page_token = reply.next_page_token


async def test_pages_cover_every_incident_newest_first_once(served: Served) -> None:
    opened = await _open(served, 23)
    newest_first = [incident.id for incident in reversed(opened)]
    assert await _all_pages(served, incidents_pb2.ListIncidentsRequest(page_size=5)) == (
        newest_first
    )
    first = await served.stub.ListIncidents(incidents_pb2.ListIncidentsRequest())
    assert [i.id for i in first.incidents] == newest_first
    assert not first.next_page_token


async def test_filters_combine(served: Served) -> None:
    opened = await _open(served, 20)

    def expected(predicate: Callable[[incidents_pb2.Incident], bool]) -> list[str]:
        return [i.id for i in reversed(opened) if predicate(i)]

    cases = [
        (
            incidents_pb2.ListIncidentsRequest(service_ids=["search"]),
            lambda i: i.service_id == "search",
        ),
        (
            incidents_pb2.ListIncidentsRequest(statuses=[TRIGGERED, ACKNOWLEDGED]),
            lambda i: i.status != RESOLVED,
        ),
        (incidents_pb2.ListIncidentsRequest(statuses=[RESOLVED]), lambda i: i.status == RESOLVED),
        (
            incidents_pb2.ListIncidentsRequest(severities=[common_pb2.SEVERITY_CRITICAL]),
            lambda i: i.severity == common_pb2.SEVERITY_CRITICAL,
        ),
        (
            incidents_pb2.ListIncidentsRequest(summary_contains="disk full"),
            lambda i: "FULL" in i.summary,
        ),
        (
            incidents_pb2.ListIncidentsRequest(
                acknowledged_by="alice", service_ids=["payments-api"]
            ),
            lambda i: i.acknowledged_by.display == "alice" and i.service_id == "payments-api",
        ),
        (
            incidents_pb2.ListIncidentsRequest(
                created_after=opened[5].created_at, created_before=opened[12].created_at
            ),
            lambda i: (
                opened[5].created_at.ToMilliseconds()
                <= i.created_at.ToMilliseconds()
                < opened[12].created_at.ToMilliseconds()
            ),
        ),
    ]
    for request, predicate in cases:
        want = expected(predicate)
        assert want, request
        request.page_size = 3
        assert await _all_pages(served, request) == want, request


async def test_list_rejects_bad_filters(served: Served) -> None:
    bad = [
        (incidents_pb2.ListIncidentsRequest(page_size=-1), "page_size"),
        (incidents_pb2.ListIncidentsRequest(page_token="not-a-token"), "page_token"),
        (incidents_pb2.ListIncidentsRequest(statuses=[9]), "statuses[0]"),  # type: ignore[list-item]
        (
            incidents_pb2.ListIncidentsRequest(
                created_after=Timestamp(seconds=200), created_before=Timestamp(seconds=100)
            ),
            "created_before",
        ),
    ]
    for request, field in bad:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await served.stub.ListIncidents(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in refused.value.details()


async def test_resolved_incidents_expire_and_leave_the_index(
    any_redis: RedisClient, clock: ManualClock
) -> None:
    async with serve_incidents(any_redis, clock, {"TOCSIN_RETENTION": "2d"}) as served:
        await create_payments(served.stub)
        old = (
            await served.stub.Trigger(
                incidents_pb2.TriggerRequest(
                    service_id="payments-api", dedup_key="old", summary="old"
                )
            )
        ).incident
        still_open = (
            await served.stub.Trigger(
                incidents_pb2.TriggerRequest(
                    service_id="payments-api", dedup_key="open", summary="open"
                )
            )
        ).incident
        await served.stub.Resolve(incidents_pb2.ResolveRequest(incident_id=old.id))
        for key in (keys.incident_key(old.id), keys.alerts_key(old.id), keys.timeline_key(old.id)):
            assert 2 * 86400 - 5 <= await any_redis.ttl(key) <= 2 * 86400
        assert await any_redis.ttl(keys.incident_key(still_open.id)) == -1

        store = served.running.store
        clock.advance(days=1)
        assert await store.trim_indexes() == 0
        clock.advance(days=1, minutes=1)
        assert await store.trim_indexes() == 1
        resolved_index = keys.status_index_key(incident_shard(old.id), RESOLVED)
        assert await any_redis.zcard(resolved_index) == 0
        listed = await served.stub.ListIncidents(incidents_pb2.ListIncidentsRequest())
        assert [i.id for i in listed.incidents] == [still_open.id]  # open ones are kept


async def test_list_skips_incidents_that_expired_before_trimming(served: Served) -> None:
    opened = await _open(served, 6)
    gone = opened[0]  # resolved (i % 5 == 0)
    assert gone.status == RESOLVED
    for key in (keys.incident_key(gone.id), keys.alerts_key(gone.id), keys.timeline_key(gone.id)):
        await served.redis.delete(key)  # what EXPIRE does at the end of retention
    listed = await _all_pages(served, incidents_pb2.ListIncidentsRequest(page_size=2))
    assert listed == [i.id for i in reversed(opened[1:])]


async def _collect(
    stream: AsyncIterator[incidents_pb2.WatchIncidentsResponse], count: int
) -> list[incidents_pb2.IncidentEvent]:
    events = []
    async for reply in stream:
        events.append(reply.event)
        if len(events) == count:
            return events
    raise AssertionError("stream ended")


async def test_watch_replays_since_then_follows_live(served: Served) -> None:
    seconds, micros = await served.redis.time()
    since = Timestamp(seconds=seconds, nanos=micros * 1000)
    await served.stub.CreateService(
        incidents_pb2.CreateServiceRequest(service=incidents_pb2.Service(id="search"))
    )
    first = (
        await served.stub.Trigger(
            incidents_pb2.TriggerRequest(service_id="payments-api", dedup_key="a", summary="a")
        )
    ).incident
    await served.stub.Trigger(
        incidents_pb2.TriggerRequest(service_id="search", dedup_key="b", summary="b")
    )
    await served.stub.Acknowledge(incidents_pb2.AcknowledgeRequest(incident_id=first.id))

    call = served.stub.WatchIncidents(
        incidents_pb2.WatchIncidentsRequest(service_ids=["payments-api"], since=since)
    )
    try:
        replayed = await asyncio.wait_for(_collect(call, 2), timeout=10)
        assert [e.kind for e in replayed] == [
            incidents_pb2.INCIDENT_EVENT_KIND_TRIGGERED,
            incidents_pb2.INCIDENT_EVENT_KIND_ACKNOWLEDGED,
        ]
        assert all(e.event_id and e.incident.id == first.id for e in replayed)
        await served.stub.Resolve(incidents_pb2.ResolveRequest(incident_id=first.id))
        live = await asyncio.wait_for(_collect(call, 1), timeout=10)
        assert live[0].kind == incidents_pb2.INCIDENT_EVENT_KIND_RESOLVED
        assert live[0].incident.status == RESOLVED
    finally:
        call.cancel()
