"""Events trimmed from the streams before the archive read them are not lost.

The producer trims each incident-events stream to about STREAM_MAXLEN entries whether or
not the history group read them. Here the archive reads nothing while an incident is
opened, acknowledged, noted and resolved, and the streams are trimmed past all of it (as
a long outage of the archive's database during a storm would): the trim watch sees it,
marks a reconciliation, and the reconciliation writes the incident from Redis's state,
note, pages and timeline included; the consumer then reads what is left, and the archive
is what it would have been. A stream merely unread (a new archive, nothing trimmed)
raises no alarm.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.escalation.stack import user
from tests.history.stack import HistoryStack, history_stack
from tests.history.test_archive import ALICE_ACTOR
from tests.notification.stack import ALICE, BOB, SMS
from tocsin.history.archiver import RECONCILE_MARK, trimmed_unread
from tocsin.runtime.events import INCIDENT_SHARDS, shard_streams
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import history_pb2, incidents_pb2


@pytest.fixture
async def stack(any_redis: RedisClient, database_url: str) -> AsyncIterator[HistoryStack]:
    async with history_stack(any_redis, database_url) as stack:
        await stack.full.paging.add_user("alice", ALICE, [(SMS, 0)])
        await stack.full.paging.add_user("bob", BOB, [(SMS, 0)])
        await stack.full.policy(([user("alice")], 5), ([user("bob")], 10))
        yield stack
        await stack.run_until_quiet()
        stack.full.pager.check_all_expected()


async def streams(redis: RedisClient) -> list[str]:
    return [
        key
        for shard in range(INCIDENT_SHARDS)
        for key in shard_streams(shard)
        if await redis.xlen(key)
    ]


async def test_an_incident_trimmed_unread_is_reconciled_from_redis(
    stack: HistoryStack, any_redis: RedisClient
) -> None:
    """Standalone and on a Cluster (the watch reads a shard's lanes in one script)."""
    redis = any_redis
    archiver = stack.history.parts.archiver
    store = stack.history.parts.store
    archiver.stream_maxlen = 1  # what this test's trims leave
    paging = stack.full  # the stack without the archive: nothing is archived meanwhile
    assert not await archiver.watch_trims_once()  # look once before

    opened = await paging.client.incidents.Trigger(
        incidents_pb2.TriggerRequest(
            service_id="payments-api", summary="TLS certificate of www expires", dedup_key="cert"
        )
    )
    incident_id = opened.incident.id
    await paging.run_until_quiet()
    await paging.pager.expect_sms("alice", "TLS certificate")
    await paging.tick(minutes=2)
    for call, request in (
        (
            paging.client.incidents.Acknowledge,
            incidents_pb2.AcknowledgeRequest(incident_id=incident_id, actor=ALICE_ACTOR),
        ),
        (
            paging.client.incidents.AddNote,
            incidents_pb2.AddNoteRequest(
                incident_id=incident_id, text="restarted certbot", actor=ALICE_ACTOR
            ),
        ),
        (
            paging.client.incidents.Resolve,
            incidents_pb2.ResolveRequest(incident_id=incident_id, actor=ALICE_ACTOR),
        ),
    ):
        await call(request)
        await paging.run_until_quiet()
    # A second incident whose last event stays in the stream.
    other = await paging.client.incidents.Trigger(
        incidents_pb2.TriggerRequest(
            service_id="payments-api", summary="queue backlog", dedup_key="backlog"
        )
    )
    await paging.run_until_quiet()
    await paging.pager.expect_sms("alice", "queue backlog")
    keys = await streams(redis)
    assert keys
    for key in keys:  # the producer's trim, past everything the archive had not read
        await redis.xtrim(key, maxlen=1, approximate=False)
    assert await store.incident(incident_id) is None

    assert await archiver.watch_trims_once()
    # The group is still behind the trim and nothing more was trimmed: no second alarm
    # (every second, each would have meant another reconciliation of every incident).
    assert not await archiver.watch_trims_once()
    assert await store.mark(RECONCILE_MARK) is not None
    assert await archiver.reconcile_once() == 2
    assert await store.mark(RECONCILE_MARK) is None
    await stack.archive_quiet()  # the consumer reads what is left; the copier copies

    found = await stack.client.history.SearchIncidents(
        history_pb2.SearchIncidentsRequest(query="certbot")
    )
    assert [h.incident.incident.id for h in found.hits] == [incident_id]
    (hit,) = found.hits
    assert [n.text for n in hit.incident.notes] == ["restarted certbot"]
    assert hit.incident.incident.status == incidents_pb2.INCIDENT_STATUS_RESOLVED
    assert hit.incident.seconds_to_acknowledge == 120
    archived = await stack.client.history.GetArchivedIncident(
        history_pb2.GetArchivedIncidentRequest(incident_id=incident_id)
    )
    assert [(p.user_id, p.level) for p in archived.incident.pages] == [("alice", 0)]
    assert archived.incident.incident.timeline[-1].kind == incidents_pb2.TIMELINE_KIND_RESOLVED
    acked = await stack.client.history.SearchIncidents(
        history_pb2.SearchIncidentsRequest(query="certbot", acknowledged_by="alice")
    )
    assert len(acked.hits) == 1
    assert (await store.incident(other.incident.id)) is not None

    # Caught up: no alarm, and reconciling again writes nothing.
    before = await store.dump()
    assert not await archiver.watch_trims_once()
    assert await archiver.reconcile_once() == 0
    assert await store.dump() == before
    await paging.client.incidents.Resolve(
        incidents_pb2.ResolveRequest(incident_id=other.incident.id, actor=ALICE_ACTOR)
    )


def test_the_loss_rule_on_redis_6_and_7() -> None:
    needed = (1_000, 1)
    # Redis 6.2: only a stream that has been trimmed (holds maxlen) and starts later.
    assert trimmed_unread(needed, (2_000, 0), 100, 100, None) == 1_000
    assert trimmed_unread(needed, (2_000, 0), 99, 100, None) is None  # never trimmed
    assert trimmed_unread(needed, (1_000, 1), 100, 100, None) is None
    assert trimmed_unread(needed, None, 0, 100, None) is None
    # Redis 7: what it deleted last says it.
    assert trimmed_unread(needed, (2_000, 0), 5, 100, (1_500, 0)) == 1_000
    assert trimmed_unread(needed, (1_000, 1), 5, 100, (1_000, 0)) is None
    assert trimmed_unread((0, 1), (5, 0), 5, 100, (0, 0)) is None
