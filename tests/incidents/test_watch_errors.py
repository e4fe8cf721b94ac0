"""A watch whose stream reads fail with anything at all (not only a RedisError: a Cluster
client raises RedisClusterException, a connection closed under it AttributeError) ends
with UNAVAILABLE instead of hanging forever with a dead reader."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import RedisClusterException

from tocsin.incidents.watch import watch_events
from tocsin.runtime.errors import Unavailable
from tocsin.runtime.redis import RedisClient


class FailingReads:
    """`inner`, with every XREAD raising `fault`."""

    def __init__(self, inner: RedisClient, fault: Exception) -> None:
        self.inner, self.fault = inner, fault

    def __getattr__(self, name: str) -> Any:
        if name == "xread":

            async def xread(*args: Any, **kwargs: Any) -> Any:
                raise self.fault

            return xread
        return getattr(self.inner, name)


@pytest.mark.parametrize(
    "fault",
    [
        RedisClusterException("Redis Cluster cannot be connected"),
        AttributeError("'NoneType' object has no attribute 'writelines'"),
    ],
)
async def test_a_watch_whose_reads_fail_ends_unavailable(
    any_redis: RedisClient, fault: Exception
) -> None:
    events = watch_events(FailingReads(any_redis, fault))  # type: ignore[arg-type]
    with pytest.raises(Unavailable, match="incident events cannot be read"):
        async with asyncio.timeout(5):
            await anext(events)
