"""Incident ingest throughput and latency, and Redis memory per resolved incident.

The incidents service (and for /v2/enqueue the gateway) run as their own processes, as
deployed, against the session's Redis; the load comes from this process. Run with
`.venv/bin/pytest tests/benchmarks/test_incidents_bench.py -s` to see the figures (they
are also in the benchmark JSON's extra_info).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hdrh.histogram import HdrHistogram
from pytest_benchmark.fixture import BenchmarkFixture
from redis.asyncio import Redis

from tests.e2e.stack import free_port
from tocsin.client.channel import create_channel
from tocsin.client.client import TocsinClient
from tocsin.client.endpoints import DEFAULTS, Endpoints
from tocsin.incidents import keys
from tocsin.incidents.domain import resolve
from tocsin.incidents.service_store import ServiceStore
from tocsin.incidents.store import IncidentStore
from tocsin.runtime.clock import SystemClock
from tocsin.runtime.embedded_redis import EmbeddedRedis
from tocsin.runtime.events import INCIDENT_SHARDS, stream_key
from tocsin.runtime.redis import connect_redis
from tocsin.v1 import common_pb2, incidents_pb2, incidents_pb2_grpc

KEY = "be" * 16
REPEATS_PER_ROUND = 2000
CONCURRENCY = 64
NEW_INCIDENT_RATE = 200
NEW_INCIDENTS = 600


# The gateway as its own process, started through start_gateway (the same set-up as
# `tocsin serve gateway`) so the script can pick its Redis and clock.
_GATEWAY = """
import asyncio, uvloop
from tocsin.gateway.server import start_gateway
from tocsin.runtime.clock import SystemClock
from tocsin.runtime.embedded_redis import EmbeddedRedis
from tocsin.runtime.config import load_config

async def main():
    server, task, _ = await start_gateway(load_config(), SystemClock())
    await task

uvloop.run(main())
"""


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str]) -> Iterator[int]:
    process = subprocess.Popen([sys.executable, *args], env=os.environ | env)
    try:
        yield process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


@dataclass(frozen=True)
class Stack:
    grpc: str
    http: str
    pids: dict[str, int]  # incidents, gateway, redis

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by each process of the stack and by this (load) process."""
        used = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}
        return used | {"load generator": time.process_time()}


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measured(stack: Stack, count: int, run: Callable[[], float]) -> tuple[float, dict[str, int]]:
    """`run`'s rate, and the CPU microseconds per alert each process spent on it."""
    before = stack.cpu_seconds()
    rate = run()
    after = stack.cpu_seconds()
    return rate, {name: round((after[name] - before[name]) / count * 1e6) for name in after}


async def _wait_serving(target: str) -> None:
    async with create_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(200):
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"incidents service at {target} did not start")


@pytest.fixture(scope="module")
def stack(redis_server: EmbeddedRedis) -> Iterator[Stack]:
    """The incidents service and the gateway as processes; their addresses."""
    grpc_addr = f"127.0.0.1:{free_port()}"
    http_addr = f"127.0.0.1:{free_port()}"
    env = {
        "TOCSIN_REDIS_URL": redis_server.url,
        "TOCSIN_INCIDENTS_ADDR": grpc_addr,
        "TOCSIN_HTTP_ADDR": http_addr,
        "TOCSIN_EVENTS_API_RATE": "0",
        "TOCSIN_LOG_LEVEL": "WARNING",
    }
    incidents = ["-m", "tocsin.cli.main", "serve", "incidents"]
    with _process(incidents, env) as incidents_pid, _process(["-c", _GATEWAY], env) as gateway:
        asyncio.run(_setup(grpc_addr, http_addr))
        assert redis_server.pid is not None
        pids = {"incidents": incidents_pid, "gateway": gateway, "redis": redis_server.pid}
        yield Stack(grpc_addr, http_addr, pids)


async def _setup(grpc_addr: str, http_addr: str) -> None:
    await _wait_serving(grpc_addr)
    async with create_channel(grpc_addr) as channel:
        stub = incidents_pb2_grpc.IncidentServiceStub(channel)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.CreateService(
                incidents_pb2.CreateServiceRequest(
                    service=incidents_pb2.Service(id="bench", integration_key=KEY)
                )
            )
    async with httpx.AsyncClient() as http:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                await http.get(f"http://{http_addr}/healthz")
                return
            await asyncio.sleep(0.05)


def _repeat_request() -> incidents_pb2.TriggerRequest:
    return incidents_pb2.TriggerRequest(
        integration_key=KEY,
        dedup_key="storm",
        summary="CPU above 90% on api-7",
        source="api-7",
        severity=common_pb2.SEVERITY_CRITICAL,
    )


async def _grpc_repeats(target: str, count: int) -> float:
    """Unary Trigger calls, 64 at a time over 4 channels."""
    channels = [create_channel(target) for _ in range(4)]
    stubs = [incidents_pb2_grpc.IncidentServiceStub(c) for c in channels]
    request = _repeat_request()
    remaining = iter(range(count))

    async def worker(stub: incidents_pb2_grpc.IncidentServiceStub) -> None:
        for _ in remaining:
            await stub.Trigger(request)

    try:
        await stubs[0].Trigger(request)
        started = time.perf_counter()
        await asyncio.gather(*(worker(stubs[i % 4]) for i in range(CONCURRENCY)))
        return count / (time.perf_counter() - started)
    finally:
        for channel in channels:
            await channel.close()


async def _client_repeats(target: str, count: int) -> float:
    """TocsinClient.trigger from 64 concurrent callers (it batches them)."""
    endpoints = Endpoints(**(DEFAULTS | {"incidents": target}))
    request = _repeat_request()
    remaining = iter(range(count))
    async with TocsinClient(endpoints, token="") as client:

        async def worker() -> None:
            for _ in remaining:
                reply = await client.trigger(request)
                assert not reply.created

        await client.trigger(request)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return count / (time.perf_counter() - started)


async def _http_repeats(address: str, count: int) -> float:
    """aiohttp as the load generator: httpx costs ~3 ms of CPU per request itself."""
    event = {
        "routing_key": KEY,
        "event_action": "trigger",
        "dedup_key": "http-storm",
        "payload": {"summary": "CPU above 90% on api-7", "source": "api-7", "severity": "error"},
    }
    url = f"http://{address}/v2/enqueue"
    remaining = iter(range(count))
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for _ in remaining:
                async with session.post(url, json=event) as reply:
                    assert reply.status == 202, await reply.text()

        async with session.post(url, json=event) as first:
            assert first.status == 202
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return count / (time.perf_counter() - started)


def _report(
    benchmark: BenchmarkFixture,
    stack: Stack,
    name: str,
    count: int,
    rounds: int,
    send: Callable[[str, int], Coroutine[Any, Any, float]],
    address: str,
) -> None:
    runs: list[tuple[float, dict[str, int]]] = []
    benchmark.pedantic(
        lambda: runs.append(_measured(stack, count, lambda: asyncio.run(send(address, count)))),
        rounds=rounds,
        iterations=1,
    )
    rates = [round(rate) for rate, _ in runs]
    benchmark.extra_info[f"repeat_alerts_per_second_{name}"] = rates
    benchmark.extra_info[f"cpu_us_per_alert_{name}"] = runs[-1][1]
    print(f"\nrepeat alerts over {name}: {rates} /s; CPU us per alert: {runs[-1][1]}")


def test_repeat_alerts_per_second_over_grpc(benchmark: BenchmarkFixture, stack: Stack) -> None:
    """Through TocsinClient.trigger (TriggerBatch), as services send alerts."""
    _report(benchmark, stack, "grpc", 3 * REPEATS_PER_ROUND, 3, _client_repeats, stack.grpc)


def test_repeat_alerts_per_second_over_unary_trigger(
    benchmark: BenchmarkFixture, stack: Stack
) -> None:
    """One Trigger call per alert: what a client without batching gets."""
    _report(benchmark, stack, "unary Trigger", REPEATS_PER_ROUND, 2, _grpc_repeats, stack.grpc)


def test_repeat_alerts_per_second_over_events_api(
    benchmark: BenchmarkFixture, stack: Stack
) -> None:
    _report(benchmark, stack, "/v2/enqueue", 2 * REPEATS_PER_ROUND, 3, _http_repeats, stack.http)


async def _new_incident_latency(target: str) -> HdrHistogram:
    """Open loop: a new incident every 1/rate s; latency counts from the scheduled send
    time, so a stall shows up in every request it delays."""
    histogram = HdrHistogram(1, 60_000_000, 3)  # microseconds
    interval = 1 / NEW_INCIDENT_RATE
    async with create_channel(target) as channel:
        stub = incidents_pb2_grpc.IncidentServiceStub(channel)
        run = time.time_ns()

        async def one(n: int, scheduled: float) -> None:
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            reply = await stub.Trigger(
                incidents_pb2.TriggerRequest(
                    integration_key=KEY, dedup_key=f"new-{run}-{n}", summary=f"incident {n}"
                )
            )
            assert reply.created
            histogram.record_value(max(1, int((time.perf_counter() - scheduled) * 1e6)))

        start = time.perf_counter() + 0.1
        await asyncio.gather(*(one(n, start + n * interval) for n in range(NEW_INCIDENTS)))
    return histogram


def test_new_incident_latency_at_200_per_second(benchmark: BenchmarkFixture, stack: Stack) -> None:
    histograms: list[HdrHistogram] = []
    benchmark.pedantic(
        lambda: histograms.append(asyncio.run(_new_incident_latency(stack.grpc))),
        rounds=1,
        iterations=1,
    )
    h = histograms[0]
    figures = {p: h.get_value_at_percentile(p) / 1000 for p in (50, 99, 99.9, 100)}
    benchmark.extra_info["new_incident_latency_ms"] = figures
    print(f"\nnew incident latency at {NEW_INCIDENT_RATE}/s (ms): {figures}")


async def _memory_per_resolved_incident(url: str) -> dict[str, float]:
    redis = await connect_redis(url)
    assert isinstance(redis, Redis)
    try:
        clock = SystemClock()
        store = IncidentStore(redis, clock, timedelta(days=90))
        service = await ServiceStore(redis, clock).create(incidents_pb2.Service(id="memory"))
        actor = common_pb2.Actor(channel=common_pb2.CHANNEL_EVENTS_API, display="Alertmanager")
        per_key: dict[str, list[int]] = {"incident": [], "alerts": [], "timeline": []}
        for n in range(50):
            for _ in range(10):
                alert = incidents_pb2.Alert(
                    summary=f"[FIRING:1] HighErrorRate payments-api prod {n}",
                    source="api-7.prod.example.com",
                    severity=common_pb2.SEVERITY_ERROR,
                    links=[common_pb2.Link(href="http://alertmanager:9093/#/alerts", text="AM")],
                )
                alert.details.update({"num_firing": "1", "firing": "alertname=HighErrorRate"})
                result = await store.trigger(service, f"mem-{n}", alert, actor, "")
            incident_id = result.incident.id
            await store.change(incident_id, lambda c, now: resolve(c, actor, now), "")
            for name, key in (
                ("incident", keys.incident_key(incident_id)),
                ("alerts", keys.alerts_key(incident_id)),
                ("timeline", keys.timeline_key(incident_id)),
            ):
                per_key[name].append(int(await redis.memory_usage(key, samples=0) or 0))
        figures = {name: sum(sizes) / len(sizes) for name, sizes in per_key.items()}
        figures["total"] = sum(figures.values())
        # The outbox events until the streams are trimmed (12 per incident here).
        stream_bytes = events = 0
        for shard in range(INCIDENT_SHARDS):
            stream_bytes += int(await redis.memory_usage(stream_key(shard), samples=0) or 0)
            events += await redis.xlen(stream_key(shard))
        figures["stream_bytes_per_event"] = stream_bytes / events
        return figures
    finally:
        await redis.aclose()


def test_redis_memory_per_resolved_incident_with_ten_alerts(
    benchmark: BenchmarkFixture, redis_url: str
) -> None:
    results: list[dict[str, float]] = []
    benchmark.pedantic(
        lambda: results.append(asyncio.run(_memory_per_resolved_incident(redis_url))),
        rounds=1,
        iterations=1,
    )
    figures = {name: round(size) for name, size in results[0].items()}
    benchmark.extra_info["bytes_per_resolved_incident"] = figures
    print(f"\nRedis memory per resolved incident with 10 alerts (bytes): {figures}")
    assert figures["total"] > 0
