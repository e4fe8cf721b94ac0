"""What reaches the archive after a resolution, and what leaves it by retention.

- Timeline entries appended after the resolution (a delivery outcome written by
  notification, which carries no event and no new version) are copied by the re-checks
  of the resolution's first hour; a note added hours later (no new version either) is
  copied because it is new to the archive, and is found by search.
- TOCSIN_ARCHIVE_RETENTION: the sweep deletes incidents resolved longer ago, with their
  alerts, events, timeline and pages, and keeps newer and open ones however old.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from tests.escalation.stack import user
from tests.history.stack import HistoryStack, history_stack
from tests.history.test_archive import (
    ack,
    certbot_incident,
    expire_in_redis,
    note,
    resolve,
    trigger,
)
from tests.notification.stack import ALICE, BOB, SMS
from tocsin.history.store import TABLES
from tocsin.runtime.config import ConfigError, load_config
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import history_pb2, incidents_pb2


@pytest.fixture
async def stack(redis: RedisClient, database_url: str) -> AsyncIterator[HistoryStack]:
    async with history_stack(redis, database_url) as stack:
        await stack.full.paging.add_user("alice", ALICE, [(SMS, 0)])
        await stack.full.paging.add_user("bob", BOB, [(SMS, 0)])
        await stack.full.policy(([user("alice")], 5), ([user("bob")], 10))
        yield stack
        await stack.run_until_quiet()
        stack.full.pager.check_all_expected()


async def archived_messages(stack: HistoryStack, incident_id: str) -> list[str]:
    reply = await stack.client.history.GetArchivedIncident(
        history_pb2.GetArchivedIncidentRequest(incident_id=incident_id)
    )
    return [entry.message for entry in reply.incident.incident.timeline]


async def append_late(stack: HistoryStack, incident_id: str, message: str) -> None:
    entry = incidents_pb2.TimelineEntry(
        kind=incidents_pb2.TIMELINE_KIND_NOTIFICATION,
        message=message,
        attributes={"status": "delivered", "user_id": "alice"},
    )
    entry.at.FromMilliseconds(stack.full.paging.clock.now_ms())
    await stack.client.incidents.AppendTimeline(
        incidents_pb2.AppendTimelineRequest(incident_id=incident_id, entry=entry)
    )


async def recheck_of(stack: HistoryStack, incident_id: str) -> int | None:
    row = await stack.history.parts.store.incident(incident_id)
    assert row is not None
    recheck: int | None = row.recheck_ms
    return recheck


async def test_entries_after_the_resolution_are_archived(stack: HistoryStack) -> None:
    incident_id = await certbot_incident(stack)
    assert await recheck_of(stack, incident_id) is not None
    await append_late(stack, incident_id, "SMS to alice delivered (late callback)")
    # Written to Redis after the last copy: not in the archive until a re-check.
    assert "SMS to alice delivered (late callback)" not in await archived_messages(
        stack, incident_id
    )
    await stack.tick(minutes=2)
    assert (await archived_messages(stack, incident_id))[-1] == (
        "SMS to alice delivered (late callback)"
    )

    # Past the late window with nothing new, the re-checks stop.
    for _ in range(10):
        await stack.tick(minutes=20)
    assert await recheck_of(stack, incident_id) is None

    # A note three hours after the resolution (no new version): archived and found.
    await stack.tick(hours=3)
    await note(stack, incident_id, "root cause: cron of certbot disabled by the upgrade")
    messages = await archived_messages(stack, incident_id)
    assert messages[-1] == "root cause: cron of certbot disabled by the upgrade"
    assert messages.count(messages[-1]) == 1
    found = await stack.client.history.SearchIncidents(
        history_pb2.SearchIncidentsRequest(query="cron upgrade")
    )
    assert [h.incident.incident.id for h in found.hits] == [incident_id]
    # The timeline is copied once: every position once, the note's entry last.
    store = stack.history.parts.store
    dumped = await store.dump()
    positions = [row[1] for row in dumped["timeline"] if row[0] == int(incident_id)]
    assert positions == list(range(len(messages)))


async def test_retention_deletes_what_was_resolved_before_it(
    stack: HistoryStack, redis: RedisClient
) -> None:
    old = await certbot_incident(stack)
    await expire_in_redis(redis, old)
    await stack.tick(days=40)
    still_open = await trigger(stack, "queue backlog on payments", "backlog")
    await stack.full.pager.expect_sms("alice", "queue backlog")
    await ack(stack, still_open)
    await stack.tick(days=30)
    recent = await trigger(stack, "disk full on db1", "disk-db1")
    await stack.full.pager.expect_sms("alice", "disk full")
    await resolve(stack, recent)
    await stack.tick(days=1)

    archiver = stack.history.parts.archiver
    store = stack.history.parts.store
    assert await archiver.sweep_once() == 0  # no retention configured: keep forever
    archiver.retention = timedelta(days=60)
    assert await archiver.sweep_once() == 1
    dumped = await store.dump()
    for table in TABLES:
        assert int(old) not in {row[0] for row in dumped[table.name]}, table.name
    kept = {row[0] for row in dumped["incidents"]}
    assert kept == {int(still_open), int(recent)}
    assert {row[0] for row in dumped["events"]} == kept
    # The open one stays however old; the other is deleted once past the retention.
    archiver.retention = timedelta(hours=1)
    assert await archiver.sweep_once() == 1
    assert {row[0] for row in (await store.dump())["incidents"]} == {int(still_open)}
    assert await archiver.sweep_once() == 0
    await resolve(stack, still_open)


def test_archive_retention_is_forever_or_no_shorter_than_redis() -> None:
    assert load_config({}).archive_retention is None
    assert load_config({"TOCSIN_ARCHIVE_RETENTION": "forever"}).archive_retention is None
    assert load_config({"TOCSIN_ARCHIVE_RETENTION": "730d"}).archive_retention == timedelta(
        days=730
    )
    with pytest.raises(ConfigError, match="TOCSIN_ARCHIVE_RETENTION"):
        load_config({"TOCSIN_ARCHIVE_RETENTION": "30d"})
    with pytest.raises(ConfigError, match="TOCSIN_ARCHIVE_RETENTION"):
        load_config({"TOCSIN_ARCHIVE_RETENTION": "soon"})
