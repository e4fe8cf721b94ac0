from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.incidents.directory import served_with_directory
from tests.incidents.harness import Served, create_payments, serve_incidents
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.redis import RedisClient


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def served(any_redis: RedisClient, clock: ManualClock) -> AsyncIterator[Served]:
    """The incidents service over real gRPC, on the standalone server then the cluster,
    with the service `payments-api` (policy `payments`)."""
    async with serve_incidents(any_redis, clock) as served:
        await create_payments(served.stub)
        yield served


@pytest.fixture
async def served_with_peers(any_redis: RedisClient, clock: ManualClock) -> AsyncIterator[Served]:
    """`served`, with real scheduling (users bob, carol) and escalation (policies payments,
    other) servers that Reassign asks whether an assignee exists."""
    async with served_with_directory(any_redis, clock) as served:
        yield served
