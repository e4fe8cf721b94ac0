"""Redis at maxmemory (issue 19): while it refuses writes (`OOM command not allowed`),
alerts get a retryable 503 with `Retry-After` and a clear message at the Events API and
Alertmanager endpoints, gRPC Trigger and TriggerBatch end UNAVAILABLE (never UNKNOWN),
the CLI prints one line, and the Redis probe makes the process unhealthy; once memory is
freed, a new alert pages and the level that fell due meanwhile fires.

The Redis is this test's own server (not the session's shared one), so its maxmemory
changes nothing for other tests. Every service is real; time is a ManualClock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError, ResponseError

from tests.escalation.stack import FullStack, full_stack, user
from tests.notification.stack import BOB, SMS
from tocsin.cli.output import describe_rpc_error
from tocsin.runtime.embedded_redis import EmbeddedRedis
from tocsin.runtime.loops import WorkerHealth, probe_redis
from tocsin.runtime.redis import connect_redis
from tocsin.v1 import incidents_pb2

CAROL = "+15005550012"


@contextlib.asynccontextmanager
async def own_redis(tmp_path: Path) -> AsyncIterator[Redis]:
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        client = await connect_redis(server.url)
        assert isinstance(client, Redis)
        try:
            yield client
        finally:
            await client.aclose()
    finally:
        server.stop()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[FullStack]:
    async with own_redis(tmp_path) as redis, full_stack(redis) as full:
        yield full
        await full.run_until_quiet()
        full.pager.check_all_expected()


def gateway_url(stack: FullStack) -> str:
    url = stack.pager.sms_webhook_url
    assert url is not None
    return url.removesuffix("/twilio/sms")


async def integration_key(stack: FullStack) -> str:
    reply = await stack.client.incidents.GetService(
        incidents_pb2.GetServiceRequest(id="payments-api")
    )
    return reply.service.integration_key


def event(key: str, dedup_key: str) -> dict[str, object]:
    return {
        "routing_key": key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {"summary": dedup_key, "source": "db1", "severity": "critical"},
    }


def alertmanager(summary: str) -> dict[str, object]:
    return {
        "version": "4",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": summary, "severity": "critical"},
                "annotations": {"summary": summary},
                "fingerprint": summary,
            }
        ],
    }


async def set_maxmemory(redis: Redis, limit: int) -> None:
    await redis.config_set("maxmemory-policy", "noeviction")
    await redis.config_set("maxmemory", limit)


async def unhealthy(health: WorkerHealth) -> bool:
    for _ in range(100):
        if health.problems():
            return True
        await asyncio.sleep(0.02)  # the probe's own interval, not an escalation
    return False


async def healthy(health: WorkerHealth) -> bool:
    for _ in range(100):
        if not health.problems():
            return True
        await asyncio.sleep(0.02)
    return False


async def test_alerts_are_refused_retryably_at_maxmemory_and_overdue_levels_fire_after(
    stack: FullStack,
) -> None:
    redis = stack.paging.redis
    assert isinstance(redis, Redis)
    await stack.paging.add_user("bob", BOB, [(SMS, 0)])
    await stack.paging.add_user("carol", CAROL, [(SMS, 0)])
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))
    key = await integration_key(stack)
    base = gateway_url(stack)
    health = WorkerHealth()
    stop = asyncio.Event()
    probe = asyncio.create_task(probe_redis(redis, health, stop, interval_s=0.02))
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            reply = await http.post("/v2/enqueue", json=event(key, "disk full on db1"))
            assert reply.status_code == 202, reply.text
            await stack.run_until_quiet()
            await stack.pager.expect_sms("bob", "disk full on db1")
            assert await healthy(health)

            await set_maxmemory(redis, 1)  # under what it holds: every write is refused
            with pytest.raises(OutOfMemoryError):
                await redis.set("probe", "x")

            reply = await http.post("/v2/enqueue", json=event(key, "cpu hot on web1"))
            assert reply.status_code == 503, reply.text
            assert reply.headers["retry-after"] == "5"
            assert "out of memory" in reply.json()["message"]

            reply = await http.post(f"/v1/alertmanager/{key}", json=alertmanager("web1 down"))
            assert reply.status_code == 503, reply.text
            assert reply.headers["retry-after"] == "5"
            assert "out of memory" in reply.json()["message"]

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stack.client.incidents.Trigger(
                    incidents_pb2.TriggerRequest(
                        service_id="payments-api", summary="cpu hot", dedup_key="cpu hot"
                    )
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            line = describe_rpc_error(refused.value)
            assert "\n" not in line and "out of memory" in line, line
            assert "tocsin up" not in line, line
            batch = await stack.client.incidents.TriggerBatch(
                incidents_pb2.TriggerBatchRequest(
                    items=[
                        incidents_pb2.TriggerBatchItem(
                            request=incidents_pb2.TriggerRequest(
                                service_id="payments-api", summary="ram", dedup_key="ram"
                            )
                        )
                    ]
                )
            )
            assert batch.results[0].error.code == grpc.StatusCode.UNAVAILABLE.value[0]
            assert "out of memory" in batch.results[0].error.message

            assert await unhealthy(health), "the probe did not notice Redis refusing writes"
            assert "maxmemory" in health.problems()[0]

            # carol's level falls due while Redis refuses writes: nobody is paged yet.
            stack.paging.clock.advance(minutes=5, seconds=1)
            with contextlib.suppress(ResponseError):
                await stack.escalation.worker.run_once()  # type: ignore[union-attr]
            await stack.paging.settle()
            await stack.pager.expect_no_more_pages()

            await set_maxmemory(redis, 0)  # memory freed (no limit)
            assert await healthy(health)
            await stack.run_until_quiet()
            await stack.pager.expect_sms("carol", "disk full on db1")
            reply = await http.post("/v2/enqueue", json=event(key, "cpu hot on web1"))
            assert reply.status_code == 202, reply.text
            await stack.run_until_quiet()
            await stack.pager.expect_sms("bob", "cpu hot on web1")
    finally:
        stop.set()
        await probe
