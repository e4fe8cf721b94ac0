"""Round-robin levels: the order a firing tries the targets in, and the turn drawn once per
incident from a counter per policy and level (real Redis, standalone and Cluster)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from tocsin.escalation.domain import Target, round_robin_order
from tocsin.escalation.store import EscalationStore
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.redis import RedisClient

A, B, C = Target("user", "a"), Target("user", "b"), Target("schedule", "c")


def test_the_turn_and_the_loop_pick_who_goes_first_and_the_rest_follow_in_turn() -> None:
    assert round_robin_order((A, B, C), 0, 0) == (A, B, C)
    assert round_robin_order((A, B, C), 1, 0) == (B, C, A)
    assert round_robin_order((A, B, C), 2, 0) == (C, A, B)
    assert round_robin_order((A, B, C), 3, 0) == (A, B, C)
    assert round_robin_order((A, B, C), 1, 1) == (C, A, B)  # a repeat loop: the next one
    assert round_robin_order((), 5, 0) == ()


async def test_each_incident_draws_one_turn_however_often_it_asks(any_redis: RedisClient) -> None:
    store = EscalationStore(any_redis, ManualClock(), int(timedelta(days=1).total_seconds() * 1000))
    turns = await asyncio.gather(*(store.round_robin_turn("support", 0, str(i)) for i in range(20)))
    assert sorted(turns) == list(range(20))  # concurrent incidents never share a turn
    again = [await store.round_robin_turn("support", 0, str(i)) for i in range(20)]
    assert again == turns  # a retried firing gets the same turn
    assert await store.round_robin_turn("support", 1, "0") == 0  # another level counts apart
    assert await store.round_robin_turn("other", 0, "0") == 0  # another policy too
