from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tocsin.runtime.clock import ManualClock
from tocsin.runtime.leases import ShardLeases, assign_shards
from tocsin.runtime.redis import RedisClient

SHARDS = 64
LEASE_MS = 10_000
ALL = frozenset(range(SHARDS))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def instance(redis: RedisClient, clock: ManualClock, name: str) -> ShardLeases:
    return ShardLeases(redis, clock, "timers", name, shards=SHARDS, lease_ms=LEASE_MS)


def test_assignment_is_deterministic_and_moves_little() -> None:
    two = assign_shards(["a", "b"], SHARDS)
    assert two == assign_shards(["b", "a", "a"], SHARDS)
    assert set(two.values()) == {"a", "b"}
    three = assign_shards(["a", "b", "c"], SHARDS)
    # Adding c only moves shards to c; nothing moves between a and b.
    assert all(three[s] in (two[s], "c") for s in range(SHARDS))
    assert assign_shards([], SHARDS) == {}


async def test_single_instance_owns_every_shard(any_redis: RedisClient, clock: ManualClock) -> None:
    alone = instance(any_redis, clock, "alone")
    assert alone.owned == frozenset()
    assert await alone.heartbeat() == ALL
    assert alone.owned == ALL


async def test_second_instance_splits_the_shards_without_overlap(
    any_redis: RedisClient, clock: ManualClock
) -> None:
    a = instance(any_redis, clock, "a")
    b = instance(any_redis, clock, "b")
    await a.heartbeat()
    for _ in range(3):
        clock.advance(seconds=1)
        await b.heartbeat()
        assert a.owned.isdisjoint(b.owned)
        clock.advance(seconds=1)
        await a.heartbeat()
        assert a.owned.isdisjoint(b.owned)

    desired = assign_shards(["a", "b"], SHARDS)
    assert a.owned == {s for s, owner in desired.items() if owner == "a"}
    assert b.owned == {s for s, owner in desired.items() if owner == "b"}
    assert a.owned | b.owned == ALL
    assert 20 <= len(a.owned) <= 44


async def test_survivor_takes_over_after_the_dead_lease_expires(
    any_redis: RedisClient, clock: ManualClock
) -> None:
    a = instance(any_redis, clock, "a")
    b = instance(any_redis, clock, "b")
    for _ in range(2):
        await a.heartbeat()
        await b.heartbeat()
    assert b.owned and a.owned | b.owned == ALL

    # b stops heartbeating. Until its leases run out, a must not take b's shards.
    clock.advance(seconds=9)
    assert await a.heartbeat() == ALL - b.owned
    clock.advance(seconds=1)
    assert b.owned == frozenset()  # b's own view expires too
    assert await a.heartbeat() == ALL


async def test_release_all_hands_shards_over_at_once(
    any_redis: RedisClient, clock: ManualClock
) -> None:
    a = instance(any_redis, clock, "a")
    b = instance(any_redis, clock, "b")
    for _ in range(2):
        await a.heartbeat()
        await b.heartbeat()
    await b.release_all()
    assert b.owned == frozenset()
    assert await a.heartbeat() == ALL


async def test_groups_are_independent(any_redis: RedisClient, clock: ManualClock) -> None:
    timers = ShardLeases(any_redis, clock, "timers", "x", shards=4, lease_ms=LEASE_MS)
    outbox = ShardLeases(any_redis, clock, "outbox", "y", shards=4, lease_ms=LEASE_MS)
    assert await timers.heartbeat() == {0, 1, 2, 3}
    assert await outbox.heartbeat() == {0, 1, 2, 3}


class ObservedLeases(ShardLeases):
    """Signals each completed heartbeat, so a test can wait for the background loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.beat = asyncio.Event()

    async def heartbeat(self) -> frozenset[int]:
        owned = await super().heartbeat()
        self.beat.set()
        return owned


async def next_beat(leases: ObservedLeases) -> None:
    await asyncio.wait_for(leases.beat.wait(), 5)
    leases.beat.clear()


async def test_run_heartbeats_on_the_clock_and_releases_on_stop(
    any_redis: RedisClient, clock: ManualClock
) -> None:
    a = ObservedLeases(any_redis, clock, "timers", "a", shards=SHARDS, lease_ms=LEASE_MS)
    b = instance(any_redis, clock, "b")
    stop = asyncio.Event()
    task = asyncio.create_task(a.run(stop))
    try:
        await next_beat(a)
        assert a.owned == ALL
        assert await b.heartbeat() == frozenset()  # a holds everything for now

        # a renews every third of a lease; on that beat it hands b its share.
        clock.advance(seconds=LEASE_MS / 3000)
        await next_beat(a)
        desired = assign_shards(["a", "b"], SHARDS)
        assert a.owned == {s for s, owner in desired.items() if owner == "a"}
        assert await b.heartbeat() == {s for s, owner in desired.items() if owner == "b"}
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert a.owned == frozenset()
    assert await b.heartbeat() == ALL  # released, not merely expired: no time has passed


def test_bad_names_are_rejected(clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="group"):
        ShardLeases(None, clock, "a{b}", "i", shards=1, lease_ms=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="instance_id"):
        ShardLeases(None, clock, "g", "i|j", shards=1, lease_ms=1)  # type: ignore[arg-type]
