"""Incident ingest throughput and latency, and Redis memory per resolved incident.

The incidents service (and for /v2/enqueue the gateway) run as their own processes, as
deployed, against the session's Redis; the load comes from this process, open loop
(loadtests.openloop: each alert has an intended send time, latency counts from it), so a
rate the stack cannot absorb shows as a lower absorbed rate and growing latency. Each
run also reports the CPU each process spent per alert. Run with
`.venv/bin/pytest tests/benchmarks/test_incidents_bench.py --benchmark-enable -s` to see
the figures (they are also in the benchmark JSON's extra_info); without
--benchmark-enable each runs briefly, as a smoke test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hdrh.histogram import HdrHistogram
from pytest_benchmark.fixture import BenchmarkFixture
from redis.asyncio import Redis

from loadtests.http1 import HttpLoad
from loadtests.openloop import Outcome, Progress, latency_histogram, open_loop
from tests.e2e.stack import free_port
from tocsin.client.channel import create_channel
from tocsin.client.client import TocsinClient
from tocsin.client.endpoints import DEFAULTS, Endpoints
from tocsin.incidents import keys
from tocsin.incidents.domain import resolve
from tocsin.incidents.service_store import ServiceStore
from tocsin.incidents.store import IncidentStore
from tocsin.runtime.auth import process_service_token
from tocsin.runtime.clock import SystemClock
from tocsin.runtime.embedded_redis import EmbeddedRedis
from tocsin.runtime.events import INCIDENT_SHARDS, shard_streams
from tocsin.runtime.redis import connect_redis
from tocsin.v1 import common_pb2, incidents_pb2, incidents_pb2_grpc

KEY = "be" * 16
REPEAT_RATES = (2000, 2500, 3000)
REPEAT_SECONDS = float(os.environ.get("TOCSIN_BENCH_REPEAT_SECONDS", "5"))
"""How long each rate is offered (e.g. 20 to see whether a backlog grows)."""
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
        "TOCSIN_SERVICE_TOKEN": process_service_token(),  # the gateway's, as `tocsin up` gives it
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


Send = Callable[[int], Awaitable[Outcome]]


@contextlib.asynccontextmanager
async def _client_sender(target: str) -> AsyncIterator[Send]:
    """TocsinClient.trigger, which batches concurrent triggers into TriggerBatch calls."""
    request = _repeat_request()
    async with TocsinClient(Endpoints(**(DEFAULTS | {"incidents": target})), token="") as client:
        await client.trigger(request)  # the incident is open: every alert below repeats

        async def send(_: int) -> Outcome:
            reply = await client.trigger(request, timeout=60)
            return Outcome(not reply.created, "opened a new incident")

        yield send


@contextlib.asynccontextmanager
async def _unary_sender(target: str) -> AsyncIterator[Send]:
    """One Trigger call per alert, over 4 channels: what a client without batching gets."""
    channels = [create_channel(target) for _ in range(4)]
    stubs = [incidents_pb2_grpc.IncidentServiceStub(c) for c in channels]
    request = _repeat_request()
    try:
        await stubs[0].Trigger(request)

        async def send(i: int) -> Outcome:
            reply = await stubs[i % 4].Trigger(request, timeout=60)
            return Outcome(not reply.created, "opened a new incident")

        yield send
    finally:
        for channel in channels:
            await channel.close()


Offer = Callable[[int, int], Coroutine[Any, Any, tuple[HdrHistogram, dict[str, int], float]]]
"""Offer (rate, count): latencies (us), errors by kind, seconds from the first due time to
the last reply."""


def _through(sender: Callable[[], contextlib.AbstractAsyncContextManager[Send]]) -> Offer:
    """An Offer from a per-request sender (one task per request, loadtests.openloop)."""

    async def offer(rate: int, count: int) -> tuple[HdrHistogram, dict[str, int], float]:
        async with sender() as send:
            histogram = latency_histogram()
            start = time.monotonic_ns() + 20_000_000
            shots = await open_loop(rate, count, start, send, Progress([0] * 4), histogram, False)
            return histogram, dict(shots.errors), (time.monotonic_ns() - start) / 1e9

    return offer


def _events_api(address: str) -> Offer:
    """POST /v2/enqueue from loadtests.http1 (~50 us per request, where aiohttp takes
    ~300 us), over 256 keep-alive connections."""
    event = {
        "routing_key": KEY,
        "event_action": "trigger",
        "dedup_key": "http-storm",
        "payload": {"summary": "CPU above 90% on api-7", "source": "api-7", "severity": "error"},
    }
    host, port = address.rsplit(":", 1)

    async def offer(rate: int, count: int) -> tuple[HdrHistogram, dict[str, int], float]:
        load = HttpLoad(host, int(port), "/v2/enqueue", json.dumps(event).encode(), 256, 202)
        result = await load.run(rate, count)
        return result.histogram, dict(result.errors), result.seconds

    return offer


REFUSED = "HTTP 429"


def _measure(offer: Offer, rate: int, count: int) -> dict[str, Any]:
    histogram, errors, seconds = asyncio.run(offer(rate, count))
    refused = errors.pop(REFUSED, 0)
    return {
        "offered_per_s": rate,
        "offered": count,
        "absorbed_per_s": round((count - refused) / seconds),
        # 429 with Retry-After is the gateway's backpressure (at most 128 triggers of one
        # routing key in flight per gateway), which senders retry: counted, not an error.
        "refused_429": refused,
        "errors": sum(errors.values()),
        "latency_ms": {
            p: round(histogram.get_value_at_percentile(p) / 1000, 1) for p in (50, 99, 100)
        },
    }


def _absorb(
    benchmark: BenchmarkFixture, stack: Stack, name: str, offer: Offer, rates: tuple[int, ...]
) -> None:
    """Each offered rate for REPEAT_SECONDS (a fraction of a second as a smoke test)."""
    seconds = 0.25 if benchmark.disabled else REPEAT_SECONDS
    runs: list[dict[str, Any]] = []

    def offer_each_rate() -> None:
        for rate in rates:
            count = round(rate * seconds)
            before = stack.cpu_seconds()
            run = _measure(offer, rate, count)
            after = stack.cpu_seconds()
            run["cpu_us_per_alert"] = {
                process: round((after[process] - before[process]) / count * 1e6)
                for process in after
            }
            runs.append(run)
            print(f"\nrepeat alerts over {name}: {run}")

    benchmark.pedantic(offer_each_rate, rounds=1, iterations=1)
    benchmark.extra_info[f"repeat_alerts_{name}"] = runs


def test_repeat_alerts_absorbed_over_grpc(benchmark: BenchmarkFixture, stack: Stack) -> None:
    """Through TocsinClient.trigger (TriggerBatch), as tocsin's services send alerts."""
    _absorb(benchmark, stack, "grpc", _through(lambda: _client_sender(stack.grpc)), REPEAT_RATES)
    assert not any(run["errors"] for run in benchmark.extra_info["repeat_alerts_grpc"])


def test_repeat_alerts_absorbed_over_events_api(benchmark: BenchmarkFixture, stack: Stack) -> None:
    _absorb(benchmark, stack, "/v2/enqueue", _events_api(stack.http), REPEAT_RATES)
    runs = benchmark.extra_info["repeat_alerts_/v2/enqueue"]
    assert not any(run["errors"] for run in runs)
    # How many the per-key in-flight cap refuses depends on the machine's load (the cap
    # bounds throughput at 128 / latency): reported, not asserted; some must get through.
    assert all(run["refused_429"] < run["offered"] for run in runs)


def test_repeat_alerts_absorbed_over_unary_trigger(
    benchmark: BenchmarkFixture, stack: Stack
) -> None:
    """For comparison: one Trigger call per alert (past its capacity, calls time out)."""
    unary = _through(lambda: _unary_sender(stack.grpc))
    _absorb(benchmark, stack, "unary Trigger", unary, (500, 1000))


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
            for stream in shard_streams(shard):  # every lane
                stream_bytes += int(await redis.memory_usage(stream, samples=0) or 0)
                events += await redis.xlen(stream)
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
