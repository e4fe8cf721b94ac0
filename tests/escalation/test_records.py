"""The escalation timer payloads, each with one codec (escalation/codec.py), round-tripped
through lua/write_escalation.lua and the timer library on a real Redis: what the store
arms is what a firing reads, and payloads stored by the previous version still decode."""

from __future__ import annotations

import pytest

from tocsin.escalation.codec import HopPage, HopPayload, LevelTimerPayload
from tocsin.escalation.domain import Escalation, Level, Policy, Status, Target
from tocsin.escalation.store import EscalationStore, Hop, hop_timer_id, level_timer_id
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.errors import AlreadyExists, Conflict
from tocsin.runtime.events import incident_shard
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import escalation_pb2 as pb

INCIDENT = "58"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(redis: RedisClient, clock: ManualClock) -> EscalationStore:
    return EscalationStore(redis, clock, retention_ms=86_400_000)


def _state(now_ms: int) -> Escalation:
    level = Level((Target("user", "ana"), Target("schedule", "ops")), 60_000)
    return Escalation(
        incident_id=INCIDENT,
        policy=Policy("web", "Web", (level, level)),
        status=Status.ACTIVE,
        next_level=1,
        loop=0,
        next_fire_ms=now_ms,
        version=4,
        epoch=2,
        started_ms=now_ms - 60_000,
    )


async def test_the_level_and_hop_payloads_written_are_the_ones_a_firing_reads(
    store: EscalationStore, clock: ManualClock
) -> None:
    state = _state(clock.now_ms())
    hop = Hop(
        hop_timer_id(INCIDENT, 2, 0, 0),
        HopPayload(
            INCIDENT,
            2,
            (HopPage(0, 0, "ana", ""), HopPage(0, 0, "bo", "ops")),
            ({"kind": "warning", "text": "nobody on call for ops"},),
            TRACEPARENT,
            service_id="payments-api",
            summary="disk full on db1",
            number=41,
            created_ms=clock.now_ms() - 5,
        ),
    )

    assert await store.write(state, 0, traceparent=TRACEPARENT, hop=hop)

    shard = incident_shard(INCIDENT)
    level = await store.timers.claim(level_timer_id(INCIDENT), shard, 30_000)
    outbox = await store.timers.claim(hop.timer_id, shard, 30_000)
    assert level is not None and outbox is not None
    assert LevelTimerPayload.decode(level.payload) == LevelTimerPayload(4, TRACEPARENT)
    assert HopPayload.decode(outbox.payload) == hop.payload


async def test_the_write_that_arms_a_hop_claims_it_and_a_lost_claim_comes_back(
    any_redis: RedisClient, clock: ManualClock
) -> None:
    """On a standalone Redis and on a Cluster (the script's keys share the shard's slot)."""
    store = EscalationStore(any_redis, clock, retention_ms=86_400_000)
    state = _state(clock.now_ms())
    hop = Hop(hop_timer_id(INCIDENT, 2, 1, 0), HopPayload(INCIDENT, 2, (), (), TRACEPARENT))
    shard = incident_shard(INCIDENT)

    written, claimed = await store.write_hop(
        state, 0, traceparent=TRACEPARENT, hop=hop, lease_ms=15_000
    )

    assert written and claimed is not None
    assert claimed.timer_id == hop.timer_id
    assert HopPayload.decode(claimed.payload) == hop.payload
    # Claimed already: a worker polling the shard gets the level timer, not the hop.
    due = await store.timers.claim_due(shard, 10, 15_000)
    assert [t.timer_id for t in due] == [level_timer_id(INCIDENT)]
    # The claimer died: when its lease runs out the worker gets the hop, and the dead
    # claim can no longer complete it.
    clock.advance(seconds=15.001)
    again = await store.timers.claim_due(shard, 10, 15_000)
    assert hop.timer_id in [t.timer_id for t in again]
    assert not await store.timers.complete(claimed)
    # A stale write claims nothing.
    assert await store.write_hop(state, 0, traceparent=TRACEPARENT, hop=hop, lease_ms=15_000) == (
        False,
        None,
    )


def test_payloads_stored_by_the_previous_version_still_decode() -> None:
    # Exactly what the previous version's json.dumps wrote (default separators).
    old_level = b'{"v": 7, "tp": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}'
    old_hop = (
        b'{"incident": "58", "epoch": 1, "pages": [[0, 1, "ana", "ops"]], '
        b'"notes": [{"kind": "exhausted"}], "tp": ""}'
    )

    assert LevelTimerPayload.decode(old_level) == LevelTimerPayload(7, TRACEPARENT)
    assert HopPayload.decode(old_hop) == HopPayload(
        "58", 1, (HopPage(0, 1, "ana", "ops"),), ({"kind": "exhausted"},), ""
    )


async def test_a_policy_update_is_a_compare_and_set_on_its_version(
    store: EscalationStore,
) -> None:
    policy = pb.EscalationPolicy(id="web", name="Web")
    created = await store.create_policy(policy)
    with pytest.raises(AlreadyExists):
        await store.create_policy(policy)

    renamed = pb.EscalationPolicy(id="web", name="Web team", version=created.version)
    updated = await store.update_policy(renamed)

    assert (updated.version, (await store.get_policy("web")).name) == (2, "Web team")
    with pytest.raises(Conflict, match="at version 2"):
        await store.update_policy(pb.EscalationPolicy(id="web", name="stale", version=1))
    any_version = await store.update_policy(pb.EscalationPolicy(id="web", name="Any"))
    assert (any_version.version, (await store.get_policy("web")).name) == (3, "Any")
