"""The incident archive end to end: every service real (Redis, sockets, the fake Twilio),
the history service on SQLite and on PostgreSQL, a ManualClock.

An incident resolved with the note "restarted certbot" is found by search after its Redis
copy expired; `similar` for a new incident of the same kind lists it first with that
note; replaying the outbox (twice) and rebuilding leave the archive unchanged; the
report's MTTA and MTTR are the scripted scenario's timestamps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.escalation.stack import user
from tests.history.stack import HistoryStack, history_stack
from tests.notification.stack import ALICE, BOB, SMS
from tocsin.history.store import alerts, events, incidents
from tocsin.incidents import keys
from tocsin.runtime.events import INCIDENT_SHARDS, shard_streams
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import common_pb2, history_pb2, incidents_pb2

ALICE_ACTOR = common_pb2.Actor(user_id="alice", channel=common_pb2.CHANNEL_CLI)


@pytest.fixture
async def stack(redis: RedisClient, database_url: str) -> AsyncIterator[HistoryStack]:
    async with history_stack(redis, database_url) as stack:
        await stack.full.paging.add_user("alice", ALICE, [(SMS, 0)])
        await stack.full.paging.add_user("bob", BOB, [(SMS, 0)])
        await stack.full.policy(([user("alice")], 5), ([user("bob")], 10))
        yield stack
        await stack.run_until_quiet()
        stack.full.pager.check_all_expected()


async def trigger(stack: HistoryStack, summary: str, dedup_key: str) -> str:
    reply = await stack.client.incidents.Trigger(
        incidents_pb2.TriggerRequest(
            service_id="payments-api", summary=summary, dedup_key=dedup_key, source="www1"
        )
    )
    await stack.run_until_quiet()
    return reply.incident.id


async def ack(stack: HistoryStack, incident_id: str) -> None:
    await stack.client.incidents.Acknowledge(
        incidents_pb2.AcknowledgeRequest(incident_id=incident_id, actor=ALICE_ACTOR)
    )
    await stack.run_until_quiet()


async def note(stack: HistoryStack, incident_id: str, text: str) -> None:
    await stack.client.incidents.AddNote(
        incidents_pb2.AddNoteRequest(incident_id=incident_id, text=text, actor=ALICE_ACTOR)
    )
    await stack.run_until_quiet()


async def resolve(stack: HistoryStack, incident_id: str) -> None:
    await stack.client.incidents.Resolve(
        incidents_pb2.ResolveRequest(incident_id=incident_id, actor=ALICE_ACTOR)
    )
    await stack.run_until_quiet()


async def expire_in_redis(redis: RedisClient, incident_id: str) -> None:
    """What retention does, now: the incident's keys expire (Redis' own EXPIRE)."""
    base = keys.incident_key(incident_id)
    for key in (base, keys.timeline_key(incident_id), base + ":alerts"):
        await redis.pexpire(key, 1)
    await asyncio.sleep(0.05)
    assert not await redis.exists(base)


async def certbot_incident(stack: HistoryStack) -> str:
    incident_id = await trigger(stack, "TLS certificate of www expires in 3 days", "cert-expiry")
    await stack.full.pager.expect_sms("alice", "TLS certificate")
    await stack.tick(minutes=2)
    await ack(stack, incident_id)
    await stack.tick(minutes=4)
    await note(stack, incident_id, "restarted certbot")
    await resolve(stack, incident_id)
    return incident_id


async def test_a_resolution_note_is_found_after_redis_forgot_the_incident(
    stack: HistoryStack, redis: RedisClient
) -> None:
    incident_id = await certbot_incident(stack)
    await expire_in_redis(redis, incident_id)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stack.client.incidents.GetIncident(
            incidents_pb2.GetIncidentRequest(incident_id=incident_id)
        )
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND

    reply = await stack.client.history.SearchIncidents(
        history_pb2.SearchIncidentsRequest(query="certbot")
    )
    assert [hit.incident.incident.id for hit in reply.hits] == [incident_id]
    (hit,) = reply.hits
    assert [n.text for n in hit.incident.notes] == ["restarted certbot"]
    assert "certbot" in hit.snippet
    assert hit.incident.incident.status == incidents_pb2.INCIDENT_STATUS_RESOLVED
    assert hit.incident.seconds_to_acknowledge == 120
    assert hit.incident.seconds_to_resolve == 360

    # Stemming and the filters: "certificates" finds "certificate"; other services and
    # another acknowledger find nothing; alice as the acknowledger finds it.
    async def ids(**request: object) -> list[str]:
        found = await stack.client.history.SearchIncidents(
            history_pb2.SearchIncidentsRequest(**request)  # type: ignore[arg-type]
        )
        return [h.incident.incident.id for h in found.hits]

    assert await ids(query="certificates www") == [incident_id]
    assert await ids(query="certbot", service_ids=["other"]) == []
    assert await ids(query="certbot", acknowledged_by="bob") == []
    assert await ids(query="certbot", acknowledged_by="alice") == [incident_id]
    assert await ids(query="certbot", severities=[common_pb2.SEVERITY_INFO]) == []
    assert await ids(query="nginx") == []

    archived = await stack.client.history.GetArchivedIncident(
        history_pb2.GetArchivedIncidentRequest(incident_id=incident_id)
    )
    pages = [(p.user_id, p.level) for p in archived.incident.pages]
    assert pages == [("alice", 0)]
    kinds = [e.kind for e in archived.incident.incident.timeline]
    assert incidents_pb2.TIMELINE_KIND_ESCALATED in kinds
    assert kinds[-1] == incidents_pb2.TIMELINE_KIND_RESOLVED
    assert [a.summary for a in archived.incident.incident.alerts] == [
        "TLS certificate of www expires in 3 days"
    ]


async def test_similar_lists_the_earlier_incident_of_the_same_kind_with_its_note_first(
    stack: HistoryStack, redis: RedisClient
) -> None:
    old = await certbot_incident(stack)
    unrelated = await trigger(stack, "TLS handshake errors on api", "tls-errors")
    await stack.full.pager.expect_sms("alice", "TLS handshake")
    await resolve(stack, unrelated)
    await expire_in_redis(redis, old)
    await stack.tick(hours=30)

    new = await trigger(stack, "TLS certificate of www expires in 2 days", "cert-expiry")
    await stack.full.pager.expect_sms("alice", "expires in 2 days")
    reply = await stack.client.history.SimilarIncidents(
        history_pb2.SimilarIncidentsRequest(incident_id=new)
    )
    listed = [(s.incident.incident.id, s.reason) for s in reply.incidents]
    assert listed == [
        (old, history_pb2.SIMILARITY_REASON_SAME_DEDUP_KEY),
        (unrelated, history_pb2.SIMILARITY_REASON_SAME_SERVICE_TEXT),
    ]
    first = reply.incidents[0].incident
    assert [n.text for n in first.notes] == ["restarted certbot"]
    assert first.incident.resolved_by.user_id == "alice"
    assert first.seconds_to_resolve == 360
    await resolve(stack, new)


async def _archive_rows(stack: HistoryStack) -> dict[str, list[tuple[object, ...]]]:
    return await stack.history.parts.store.dump()


async def test_replaying_the_outbox_twice_and_rebuilding_change_nothing(
    stack: HistoryStack, redis: RedisClient
) -> None:
    first = await certbot_incident(stack)
    second = await trigger(stack, "queue backlog on payments", "backlog")
    await stack.full.pager.expect_sms("alice", "queue backlog")
    await stack.tick(minutes=5)
    await stack.full.pager.expect_sms("bob", "queue backlog")
    await ack(stack, second)
    before = await _archive_rows(stack)
    assert len(before["incidents"]) == 2 and len(before["pages"]) == 3
    assert {r[0] for r in before["incidents"]} == {int(first), int(second)}

    for _ in range(2):  # every event delivered to the history group again
        for shard in range(INCIDENT_SHARDS):
            for key in shard_streams(shard):
                await redis.xgroup_setid(key, "history", "0")
        assert await stack.archive_quiet() > 0
        assert await _archive_rows(stack) == before

    replayed = await stack.client.history.RebuildArchive(history_pb2.RebuildArchiveRequest())
    from_stream = [row for row in before["events"] if not str(row[1]).startswith("timeline:")]
    assert replayed.events == len(from_stream)
    assert await _archive_rows(stack) == before

    # A damaged archive (rows lost) is rebuilt from the streams' retained history.
    store = stack.history.parts.store
    async with store.engine.begin() as conn:
        for table in (alerts, events, incidents):
            await conn.execute(table.delete())
    await stack.client.history.RebuildArchive(history_pb2.RebuildArchiveRequest())
    await stack.archive_quiet()
    assert await _archive_rows(stack) == before
    found = await stack.client.history.SearchIncidents(
        history_pb2.SearchIncidentsRequest(query="certbot")
    )
    assert [h.incident.incident.id for h in found.hits] == [first]
    await resolve(stack, second)


async def test_report_mtta_and_mttr_are_the_scenarios_timestamps(stack: HistoryStack) -> None:
    clock = stack.full.paging.clock
    start_ms = clock.now_ms()
    # 1: acknowledged after 3 minutes, resolved after 10.
    one = await trigger(stack, "disk full on db1", "disk-db1")
    await stack.full.pager.expect_sms("alice", "disk full")
    await stack.tick(minutes=3)
    await ack(stack, one)
    await stack.tick(minutes=7)
    await resolve(stack, one)
    # 2: acknowledged after 1 minute, resolved after 2.
    two = await trigger(stack, "disk full on db2", "disk-db2")
    await stack.full.pager.expect_sms("alice", "db2")
    await stack.tick(minutes=1)
    await ack(stack, two)
    await stack.tick(minutes=1)
    await resolve(stack, two)
    # 3: alice does not answer; level 2 pages bob after 5 minutes; bob resolves at 6.
    three = await trigger(stack, "disk full on db3", "disk-db3")
    await stack.full.pager.expect_sms("alice", "db3")
    await stack.tick(minutes=5)
    await stack.full.pager.expect_sms("bob", "db3")
    await stack.tick(minutes=1)
    await resolve(stack, three)

    report = await stack.client.history.GetReport(history_pb2.GetReportRequest())
    total = report.total
    assert (total.times.incidents, total.times.acknowledged, total.times.resolved) == (3, 3, 3)
    # time to first response: 180, 60 and 360 s (three was resolved without an ack).
    assert total.times.mtta_median_seconds == 180
    assert total.times.mtta_p90_seconds == pytest.approx(180 + 0.8 * 180)
    # time to resolve: 600, 120, 360 s.
    assert total.times.mttr_median_seconds == 360
    assert total.times.mttr_p90_seconds == pytest.approx(360 + 0.8 * 240)
    assert (total.pages, total.paged_incidents, total.escalated_incidents) == (4, 3, 1)
    assert total.escalation_rate == pytest.approx(1 / 3)
    assert [s.service_id for s in report.services] == ["payments-api"]
    assert [(w.week, w.times.incidents, w.pages) for w in report.weeks] == [("2026-W48", 3, 4)]
    people = {p.user_id: p for p in report.people}
    # 03:00 UTC on Friday 27 November is 03:00 in London (the users' zone): night.
    assert people["alice"].time_zone == "Europe/London"
    assert (people["alice"].pages, people["alice"].nights) == (3, 3)
    assert people["alice"].by_hour[3] == 3 and sum(people["alice"].by_hour) == 3
    assert (people["bob"].pages, people["bob"].nights) == (1, 1)
    assert report.since.ToMilliseconds() == clock.now_ms() - 30 * 86_400_000
    assert report.until.ToMilliseconds() == clock.now_ms()

    only_after = history_pb2.GetReportRequest()
    only_after.since.FromMilliseconds(start_ms + 1)
    assert (await stack.client.history.GetReport(only_after)).total.times.incidents == 2
