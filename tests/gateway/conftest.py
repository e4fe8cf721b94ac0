"""The incidents service the gateway tests put the gateway in front of."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tests.incidents.harness import Served, create_payments, serve_incidents
from tocsin.runtime.clock import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def served(redis: Redis, clock: ManualClock) -> AsyncIterator[Served]:
    """The incidents service over real gRPC on standalone Redis, with `payments-api`."""
    async with serve_incidents(redis, clock) as served:
        await create_payments(served.stub)
        yield served
