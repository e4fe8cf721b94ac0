"""WhoIsOnCall over gRPC: the scheduling service in its own process (as deployed) with the
schedule of 5 layers, 30 users and 500 overrides; the calls come from this process, one
at a time, at random instants of a year. Figures: `pytest <this file> -s`."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta

import grpc
import pytest
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hdrh.histogram import HdrHistogram
from pytest_benchmark.fixture import BenchmarkFixture

from tests.benchmarks.test_scheduling_bench import USERS, YEAR_START, _big_schedule
from tests.e2e.stack import free_port
from tocsin.client.channel import create_channel
from tocsin.runtime.embedded_redis import EmbeddedRedis
from tocsin.scheduling.convert import timestamp
from tocsin.v1 import scheduling_pb2 as pb
from tocsin.v1 import scheduling_pb2_grpc

pytestmark = pytest.mark.benchmark
CALLS = 5000
_DAYS = {i: pb.Weekday.Value(n) for i, n in enumerate(pb.Weekday.keys()[1:])}


def big_schedule_message() -> pb.Schedule:
    """The benchmark schedule of test_scheduling_bench as the API takes it."""
    schedule = _big_schedule()
    message = pb.Schedule(id=schedule.id, name=schedule.name, time_zone=schedule.time_zone)
    for layer in schedule.layers:
        layer_message = pb.Layer(
            name=layer.name,
            start=layer.start.strftime("%Y-%m-%dT%H:%M"),
            rotation_length=str(layer.rotation_length),
            user_ids=layer.users,
        )
        for restriction in layer.restrictions:
            r = pb.Restriction(days=[_DAYS[d] for d in sorted(restriction.days)])
            setattr(r, "from", restriction.start.strftime("%H:%M"))
            r.to = restriction.end.strftime("%H:%M")
            layer_message.restrictions.append(r)
        message.layers.append(layer_message)
    for override in schedule.overrides:
        message.overrides.append(
            pb.Override(
                id=override.id,
                user_id=override.user,
                start=timestamp(override.start),
                end=timestamp(override.end),
            )
        )
    return message


@pytest.fixture(scope="module")
def scheduling_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis = EmbeddedRedis(tmp_path_factory.mktemp("sched-bench"))
    redis.start()
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "TOCSIN_REDIS_URL": redis.url, "TOCSIN_SCHEDULING_ADDR": address}
    env.pop("TOCSIN_API_TOKEN", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "tocsin.cli.main", "serve", "scheduling"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        asyncio.run(_wait_serving(address))
        yield address
    finally:
        process.terminate()
        process.wait(10)
        redis.stop()


async def _wait_serving(address: str) -> None:
    deadline = time.monotonic() + 20
    async with create_channel(address) as channel:
        while True:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.1)


async def _latencies(address: str, calls: int) -> HdrHistogram:
    histogram = HdrHistogram(1, 10_000_000, 3)
    rng = random.Random(7)
    async with create_channel(address) as channel:
        stub = scheduling_pb2_grpc.SchedulingServiceStub(channel)
        for user in USERS:
            await stub.CreateUser(pb.CreateUserRequest(user=pb.User(id=user, name=user)))
        await stub.CreateSchedule(pb.CreateScheduleRequest(schedule=big_schedule_message()))
        requests = [
            pb.WhoIsOnCallRequest(
                schedule_id="big",
                at=timestamp(YEAR_START + timedelta(seconds=rng.randrange(365 * 86400))),
            )
            for _ in range(calls + 200)
        ]
        for request in requests[:200]:  # warm up: channel, caches, plan
            await stub.WhoIsOnCall(request)
        for request in requests[200:]:
            started = time.perf_counter_ns()
            await stub.WhoIsOnCall(request)
            histogram.record_value((time.perf_counter_ns() - started) // 1000)
    return histogram


def test_who_is_on_call_over_grpc(benchmark: BenchmarkFixture, scheduling_process: str) -> None:
    calls = CALLS if benchmark.enabled else 50
    results: list[HdrHistogram] = []
    benchmark.pedantic(
        lambda: results.append(uvloop.run(_latencies(scheduling_process, calls))),
        rounds=1,
        iterations=1,
    )
    h = results[0]
    figures = {p: h.get_value_at_percentile(p) / 1000 for p in (50, 99, 99.9, 100)}
    benchmark.extra_info["who_is_on_call_grpc_ms"] = figures
    print(f"\nWhoIsOnCall over gRPC, {calls} calls (ms): {figures}")
    assert h.get_total_count() == calls
