"""The service on its own: background tasks follow incident events, own shards, stop cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.exceptions import RedisClusterException

from tests.notification.stack import ALICE, SMS, VOICE, PagingStack, paging_stack
from tests.services import LOOPBACK_ANY_PORT
from tocsin.notification.server import SHARD_LEASE_MS, NotificationService, create_server
from tocsin.notification.servicer import SERVICE_NAME
from tocsin.runtime.events import INCIDENT_SHARDS, incident_shard
from tocsin.runtime.leases import ShardLeases
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.service import ServiceDeps
from tocsin.v1 import common_pb2, incidents_pb2


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Wait (wall clock, for I/O between tasks) until `check()` holds."""
    async with asyncio.timeout(timeout_s):
        while not await check():  # noqa: ASYNC110 - polling what other tasks write to Redis
            await asyncio.sleep(0.02)


async def test_background_tasks_follow_events_and_release_their_shards(
    stack: PagingStack,
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0), (VOICE, 600)])
    deps = ServiceDeps(stack.config, stack.redis, stack.clock, peers=stack.client)
    running, _ = await create_server(deps, LOOPBACK_ANY_PORT, background=True)
    assert isinstance(running, NotificationService)
    parts = running.parts
    stopped = False
    try:
        incident_id = await stack.trigger("disk full on db1", mirror=False)
        shard = incident_shard(incident_id)
        await eventually(
            lambda: _is(
                parts.store.incident_status(incident_id), incidents_pb2.INCIDENT_STATUS_TRIGGERED
            )
        )
        assert parts.leases.owned == frozenset(range(INCIDENT_SHARDS))
        await parts.pager.notify(incident_id, "alice", "k", "")
        await parts.sender.idle()
        await stack.pager.expect_sms("alice")
        assert await parts.store.timers.pending_count(shard) == 1  # the call, in 10 minutes

        await stack.client.incidents.Acknowledge(
            incidents_pb2.AcknowledgeRequest(
                incident_id=incident_id,
                actor=common_pb2.Actor(channel=common_pb2.CHANNEL_CLI, display="bob"),
            )
        )

        await eventually(lambda: _is(parts.store.timers.pending_count(shard), 0))
        await running.stop(0)
        stopped = True
        owners = await stack.redis.hgetall("tocsin:{leases:notification}:owners")
        assert owners == {}
    finally:
        if not stopped:
            await running.stop(0)


async def _is(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def serving_status(port: int) -> str:
    # A plain channel: tocsin's own avoids a replica that is not serving.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


@pytest.fixture
async def any_stack(any_redis: RedisClient) -> AsyncIterator[PagingStack]:
    """The paging stack on the standalone server, then on the 3-master Redis Cluster."""
    async with paging_stack(any_redis) as paging:
        yield paging
        paging.pager.check_all_expected()


async def test_health_is_not_serving_while_a_worker_keeps_failing_and_serving_once_it_recovers(
    any_stack: PagingStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = any_stack  # on the standalone server, then on the Redis Cluster
    deps = ServiceDeps(stack.config, stack.redis, stack.clock, peers=stack.client)
    running, port = await create_server(deps, LOOPBACK_ANY_PORT, background=True)
    assert isinstance(running, NotificationService)
    running.workers.fail_after_s = 0.3
    leases = running.parts.leases
    heartbeat = leases.heartbeat
    failing = [RedisClusterException("Redis Cluster cannot be connected")]
    every_shard = frozenset(range(INCIDENT_SHARDS))

    async def faulty_heartbeat() -> frozenset[int]:
        if failing:
            raise failing[0]  # what a cut-off Cluster client raises (not a RedisError)
        return await heartbeat()

    async def until_status(status: str) -> None:
        """Let time pass (heartbeats come due) until the health check says `status`."""
        async with asyncio.timeout(15):
            while await serving_status(port) != status:
                stack.clock.advance(seconds=1)
                await asyncio.sleep(0.05)

    try:
        await until_status("SERVING")
        await eventually(lambda: _is(_owned(leases), every_shard))
        monkeypatch.setattr(leases, "heartbeat", faulty_heartbeat)
        await until_status("NOT_SERVING")
        # Health turns on real time (fail_after_s), leases run out on the clock: once a
        # whole lease has passed without a heartbeat, nothing is owned (however few clock
        # seconds the loop above let pass on a loaded machine).
        stack.clock.advance(seconds=SHARD_LEASE_MS / 1000)
        assert leases.owned == frozenset()

        failing.clear()
        await until_status("SERVING")
        assert leases.owned == every_shard
        # ...and the consumer still follows incident events.
        incident_id = await stack.trigger("disk full on db1", mirror=False)
        await eventually(
            lambda: _is(
                running.parts.store.incident_status(incident_id),
                incidents_pb2.INCIDENT_STATUS_TRIGGERED,
            )
        )
        assert all(not task.done() for task in running.tasks)
    finally:
        await running.stop(0)


async def _owned(leases: ShardLeases) -> frozenset[int]:
    return leases.owned
