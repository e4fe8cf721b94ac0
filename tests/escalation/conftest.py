from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.escalation.stack import FullStack, full_stack
from tocsin.runtime.redis import RedisClient


@pytest.fixture
async def stack(redis: RedisClient) -> AsyncIterator[FullStack]:
    """Every service, the fake Twilio and a ManualClock; fails on any unexpected page."""
    async with full_stack(redis) as full:
        yield full
        await full.run_until_quiet()
        full.pager.check_all_expected()


@pytest.fixture
async def any_stack(any_redis: RedisClient) -> AsyncIterator[FullStack]:
    """`stack` on the standalone server, then on the 3-master Redis Cluster: every
    service (scheduling, incidents, escalation, notification) runs on either."""
    async with full_stack(any_redis) as full:
        yield full
        await full.run_until_quiet()
        full.pager.check_all_expected()
