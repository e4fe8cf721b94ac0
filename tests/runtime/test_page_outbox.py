"""The page streams' consumers: a dead notification's pages are taken over, every shard's
stream at once, on either Redis layout."""

from __future__ import annotations

from redis.asyncio import RedisCluster

from tests.redis_wire import recording_writes
from tocsin.runtime.page_outbox import page_consumers, stream_key
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import notification_pb2

SHARDS = (3, 9)


async def test_a_dead_consumers_pages_on_several_shards_are_taken_over_at_once(
    any_redis: RedisClient,
) -> None:
    applied: list[str] = []

    async def apply(request: notification_pb2.NotifyRequest, traceparent: str) -> None:
        applied.append(request.idempotency_key)

    async def refuse(request: notification_pb2.NotifyRequest, traceparent: str) -> None:
        raise AssertionError("the dead consumer applies nothing")

    for consumer in page_consumers(any_redis, refuse, "dead"):
        await consumer.start()
    for shard in SHARDS:
        request = notification_pb2.NotifyRequest(
            incident_id=str(16 + shard), user_id="alice", idempotency_key=f"page-{shard}"
        )
        await any_redis.xadd(stream_key(shard), {"r": request.SerializeToString(), "tp": ""})
    for shard in SHARDS:  # read by a notification process that then died
        await any_redis.xreadgroup("notification", "dead", {stream_key(shard): ">"})

    heirs = page_consumers(any_redis, apply, "heir")
    for heir in heirs:
        heir.claim_idle_ms = 0  # the dead one's lease is long over
    with recording_writes(lambda command: command[0].upper() == b"XAUTOCLAIM") as claims:
        taken = [await heir.claim_stale() for heir in heirs]

    assert sum(taken) == len(SHARDS)
    assert sorted(applied) == [f"page-{shard}" for shard in SHARDS]
    for shard in SHARDS:  # applied, so acknowledged and deleted: never applied again
        assert await any_redis.xlen(stream_key(shard)) == 0
    # On one server one consumer claims the 16 streams in one round trip; on a Cluster
    # each shard's consumer claims its own stream.
    expected = 16 if isinstance(any_redis, RedisCluster) else 1
    assert len(claims) == expected
    assert sum(len(write) for write in claims) == 16
