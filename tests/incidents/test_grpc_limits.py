"""gRPC limits against hostile or runaway clients, through a real incidents server.

Message size (4 MiB, every server), calls in flight per connection
(TOCSIN_GRPC_MAX_CONCURRENT_STREAMS) and WatchIncidents streams per process
(TOCSIN_MAX_WATCH_STREAMS: each holds 16 blocking Redis reads from the shared pool)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tests.incidents.harness import Served, create_payments, serve_incidents
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.grpcserver import MAX_MESSAGE_BYTES
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import incidents_pb2


@asynccontextmanager
async def served_with(redis: RedisClient, env: Mapping[str, str]) -> AsyncIterator[Served]:
    async with serve_incidents(redis, ManualClock(), env) as served:
        await create_payments(served.stub)
        yield served


async def watching(served: Served, since: Timestamp) -> grpc.aio.UnaryStreamCall:
    """A WatchIncidents stream whose handler runs: it has replayed its first event."""
    call = served.stub.WatchIncidents(incidents_pb2.WatchIncidentsRequest(since=since))
    await asyncio.wait_for(call.read(), timeout=10)
    return call


async def an_incident(served: Served) -> Timestamp:
    """Trigger one incident; a time just before it, for watchers to replay it from."""
    seconds, micros = await served.redis.time()
    await served.stub.Trigger(
        incidents_pb2.TriggerRequest(service_id="payments-api", dedup_key="a", summary="a")
    )
    return Timestamp(seconds=seconds - 1, nanos=micros * 1000)


async def test_a_message_over_4_mib_is_resource_exhausted(redis: RedisClient) -> None:
    async with served_with(redis, {}) as served:
        huge = "x" * (MAX_MESSAGE_BYTES + 1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await served.stub.Trigger(
                incidents_pb2.TriggerRequest(service_id="payments-api", summary=huge)
            )
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # One just under the limit is read (and normalised: the summary is cut, not refused).
        reply = await served.stub.Trigger(
            incidents_pb2.TriggerRequest(
                service_id="payments-api", dedup_key="big", summary="x" * (1024 * 1024)
            )
        )
        assert reply.incident.id


async def test_watch_streams_past_the_cap_are_resource_exhausted(redis: RedisClient) -> None:
    async with served_with(redis, {"TOCSIN_MAX_WATCH_STREAMS": "2"}) as served:
        since = await an_incident(served)
        first, second = await watching(served, since), await watching(served, since)
        third = served.stub.WatchIncidents(incidents_pb2.WatchIncidentsRequest(since=since))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(third.read(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "TOCSIN_MAX_WATCH_STREAMS" in (refused.value.details() or "")
        # Unary calls are not affected, and a closed stream frees its place.
        await served.stub.ListServices(incidents_pb2.ListServicesRequest())
        first.cancel()
        for _ in range(100):
            try:
                again = await watching(served, since)
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("a watch stream's place was not freed")
        again.cancel()
        second.cancel()


async def test_calls_in_flight_per_connection_are_capped(redis: RedisClient) -> None:
    """With 3 streams per connection (the channel's health watch, two WatchIncidents), a
    further call on the connection waits for a free stream (at the client) instead of
    adding load to the server."""
    env = {"TOCSIN_GRPC_MAX_CONCURRENT_STREAMS": "3", "TOCSIN_MAX_WATCH_STREAMS": "10"}
    async with served_with(redis, env) as served:
        since = await an_incident(served)
        first, second = await watching(served, since), await watching(served, since)
        waiting = asyncio.ensure_future(
            served.stub.ListServices(incidents_pb2.ListServicesRequest())
        )
        done, _ = await asyncio.wait([waiting], timeout=0.5)
        assert not done, "a call ran beside three open streams"
        first.cancel()
        reply = await asyncio.wait_for(waiting, timeout=5)
        assert [s.id for s in reply.services] == ["payments-api"]
        second.cancel()


async def test_forty_watchers_leave_the_redis_pool_to_alerts(redis: RedisClient) -> None:
    """Each stream holds 16 blocking Redis reads: 40 of them took the whole 512-connection
    pool and a Trigger failed after the pool's 10 s wait. At the default cap, 16 run,
    the rest are refused, and alerts go through at once."""
    async with served_with(redis, {}) as served:
        since = await an_incident(served)
        calls = [
            served.stub.WatchIncidents(incidents_pb2.WatchIncidentsRequest(since=since))
            for _ in range(40)
        ]
        try:
            firsts = await asyncio.wait_for(
                asyncio.gather(*(call.read() for call in calls), return_exceptions=True), 15
            )
            refused = [f for f in firsts if isinstance(f, grpc.aio.AioRpcError)]
            assert len(refused) == 40 - 16
            assert {f.code() for f in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            reply = await asyncio.wait_for(
                served.stub.Trigger(
                    incidents_pb2.TriggerRequest(
                        service_id="payments-api", dedup_key="b", summary="b"
                    )
                ),
                timeout=2,
            )
            assert reply.incident.id
        finally:
            for call in calls:
                call.cancel()
