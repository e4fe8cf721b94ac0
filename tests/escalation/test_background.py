"""The escalation process with its background loops on, on the standalone server and on
the 3-master Redis Cluster: it pages by itself as the clock moves, and rides out a lease
heartbeat that keeps failing (with what a cut-off Cluster client raises), its gRPC
health NOT_SERVING meanwhile and SERVING again after."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.exceptions import RedisClusterException

from tests.escalation.stack import FullStack, user
from tests.notification.stack import ALICE, BOB, SMS
from tests.services import LOOPBACK_ANY_PORT
from tocsin.escalation import server as escalation_server
from tocsin.escalation.server import LEASE_MS, SERVICE_NAME, EscalationProcess
from tocsin.runtime.events import INCIDENT_SHARDS
from tocsin.runtime.service import ServiceDeps

EVERY_SHARD = frozenset(range(INCIDENT_SHARDS))


async def serving_status(port: int) -> str:
    # A plain channel: tocsin's own avoids a replica that is not serving.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_background_loops_escalate_and_ride_out_a_failing_heartbeat(
    any_stack: FullStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = any_stack
    await stack.paging.add_user("alice", ALICE, [(SMS, 0)])
    await stack.paging.add_user("bob", BOB, [(SMS, 0)])
    await stack.policy(([user("alice")], 5), ([user("bob")], 5))
    deps = ServiceDeps(stack.paging.config, stack.paging.redis, stack.paging.clock, stack.client)
    running, port = await escalation_server.create_server(deps, LOOPBACK_ANY_PORT)
    assert isinstance(running, EscalationProcess) and running.leases is not None
    running.workers.fail_after_s = 0.3
    leases = running.leases
    heartbeat = leases.heartbeat
    failing = [RedisClusterException("Redis Cluster cannot be connected")]

    async def faulty_heartbeat() -> frozenset[int]:
        if failing:
            raise failing[0]
        return await heartbeat()

    async def until(check: Callable[[], Awaitable[bool]]) -> None:
        """Let time pass second by second, as it does (heartbeats, polls), until `check()`."""
        async with asyncio.timeout(15):
            while not await check():
                stack.paging.clock.advance(seconds=1)
                await asyncio.sleep(0.05)

    async def until_status(status: str) -> None:
        await until(lambda: _is(serving_status(port), status))

    async def bob_paged() -> bool:
        return any(page.to == BOB for page in stack.pager.pages("sms"))

    # notification starts the pages escalation queues, as in production
    async with stack.paging.pages_running():
        try:
            assert await serving_status(port) == "SERVING"
            assert leases.owned == EVERY_SHARD
            await stack.paging.trigger("disk full on db1", mirror=False)
            await stack.pager.expect_sms("alice", "disk full on db1")  # the consumer's doing

            monkeypatch.setattr(leases, "heartbeat", faulty_heartbeat)
            await until_status("NOT_SERVING")
            # Health turns on real time (fail_after_s), leases run out on the clock: once a
            # whole lease has passed without a heartbeat, nothing is owned (however few clock
            # seconds the loop above let pass on a loaded machine).
            stack.paging.clock.advance(seconds=LEASE_MS / 1000)
            assert leases.owned == frozenset()
            failing.clear()
            await until_status("SERVING")
            assert leases.owned == EVERY_SHARD

            stack.paging.clock.advance(minutes=5)  # level 2 is due (and a little overdue)
            await until(bob_paged)
            await stack.pager.expect_sms("bob", "disk full on db1")  # the timer worker's doing
            await stack.pager.expect_no_more_pages()
            assert all(not task.done() for task in running.tasks)
        finally:
            await running.stop(0)


async def _is(value: Awaitable[object], expected: object) -> bool:
    return await value == expected
