"""The ingest path's event-rule cache (incidents/rule_store.py, RuleCache): with its
refresh loop running no alert waits for the version check (it was one Redis round trip
before trigger.lua for every alert more than a second after the last, a lone alert's
every time); a change made through another replica is still seen within the interval;
without the loop, an alert checks for itself. Real time (the check interval is
monotonic time, as in a deployment), kept short here. Standalone and Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from tests.runtime.test_loops import eventually
from tocsin.incidents.rule_store import RuleCache, RuleStore
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.loops import WorkerHealth
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import routing_pb2

INTERVAL_S = 0.2


def suppress_everything(service_id: str) -> routing_pb2.EventRuleSet:
    return routing_pb2.EventRuleSet(
        service_id=service_id,
        rules=[
            routing_pb2.EventRule(id="all", actions=routing_pb2.EventRuleActions(suppress=True))
        ],
    )


def counting_inline_checks(cache: RuleCache) -> list[int]:
    """How many times an alert (a `sets()` caller) checked the version itself."""
    checks = [0]
    check = cache._check

    async def counted() -> None:
        checks[0] += 1
        await check()

    cache._check = counted  # type: ignore[method-assign]
    return checks


@pytest.fixture
async def stores(any_redis: RedisClient) -> tuple[RuleStore, RuleStore]:
    clock = ManualClock(1_764_000_000_000)
    return RuleStore(any_redis, clock), RuleStore(any_redis, clock)


@pytest.fixture
async def refreshing() -> AsyncIterator[Callable[[RuleCache], None]]:
    stop = asyncio.Event()
    health = WorkerHealth()
    loops: list[asyncio.Task[None]] = []

    def start(cache: RuleCache) -> None:
        loops.append(asyncio.create_task(cache.run(stop, health)))

    yield start
    stop.set()
    await asyncio.gather(*loops)


async def test_with_the_refresh_running_no_alert_checks_the_version(
    stores: tuple[RuleStore, RuleStore], refreshing: Callable[[RuleCache], None]
) -> None:
    here, other_replica = stores
    cache = RuleCache(here, INTERVAL_S)
    inline = counting_inline_checks(cache)
    refreshing(cache)
    await eventually(lambda: cache._checked_at is not None)  # the loop's first check
    for _ in range(8):  # alerts over ten intervals, none within an interval of the last
        await asyncio.sleep(INTERVAL_S / 4 + INTERVAL_S)
        assert "" not in await cache.sets()
    assert inline[0] == 0
    # and a change made elsewhere still reaches the alerts within the interval
    await other_replica.put(suppress_everything(""))
    seen: list[bool] = []

    async def alert() -> bool:
        seen.append("" in await cache.sets())
        return seen[-1]

    for _ in range(50):
        if await alert():
            break
        await asyncio.sleep(INTERVAL_S / 10)
    assert seen[-1], "another replica's change never reached the alerts"
    assert len(seen) <= 10 + 2  # within the interval (and the loop's half of it)
    assert inline[0] == 0


async def test_without_the_refresh_an_alert_checks_after_the_interval(
    stores: tuple[RuleStore, RuleStore],
) -> None:
    here, other_replica = stores
    cache = RuleCache(here, INTERVAL_S)
    inline = counting_inline_checks(cache)
    assert await cache.sets() == {}
    assert inline[0] == 1
    await other_replica.put(suppress_everything("payments-api"))
    assert await cache.sets() == {}  # within the interval: the copy
    assert inline[0] == 1
    await asyncio.sleep(INTERVAL_S * 1.5)
    assert "payments-api" in await cache.sets()
    assert inline[0] == 2


async def test_a_failing_refresh_keeps_the_last_rules_and_alerts_check_for_themselves(
    stores: tuple[RuleStore, RuleStore], refreshing: Callable[[RuleCache], None]
) -> None:
    here, other_replica = stores
    await other_replica.put(suppress_everything("payments-api"))
    cache = RuleCache(here, INTERVAL_S)
    refreshing(cache)
    await eventually(lambda: cache._checked_at is not None)
    assert "payments-api" in await cache.sets()
    inline = counting_inline_checks(cache)

    async def unreachable() -> int:
        raise ConnectionError("Redis is away")

    here.version = unreachable  # type: ignore[method-assign]
    await asyncio.sleep(INTERVAL_S * 2)  # the loop fails (logged, backing off)
    assert "payments-api" in await cache.sets()  # the last rules, checked by the alert
    assert inline[0] == 1
