"""No background loop dies silently, health reflects the loops, and blocking reads never
race the client's socket timeout: on the standalone server and on the 3-master Cluster.

Faults are injected where a loop meets Redis (a wrapper raising what redis-py 8 was seen
to raise on a Cluster: RedisClusterException, an AttributeError from a connection closed
under a task, or anything else), and for real by stopping the redis-server processes with
SIGSTOP. Waiting here is for real-time I/O (socket timeouts, backoff), never for an
escalation: leases and timers run on a ManualClock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from redis.asyncio import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException

from tests.redis_servers import flush_cluster, flush_standalone
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.embedded_redis import EmbeddedCluster, EmbeddedRedis
from tocsin.runtime.events import (
    EVENT_FIELD,
    EventConsumer,
    ensure_groups,
    incident_shard,
    stream_key,
)
from tocsin.runtime.leases import ShardLeases
from tocsin.runtime.loops import LoopGuard, WorkerHealth, probe_redis
from tocsin.runtime.redis import (
    DEFAULT_SOCKET_TIMEOUT_S,
    RedisClient,
    connect_redis,
    create_redis,
    socket_timeout_s,
)
from tocsin.runtime.timers import ClaimedTimer, TimerStore, TimerWorker
from tocsin.v1 import incidents_pb2

SHARDS = 8
ALL = frozenset(range(SHARDS))
LEASE_MS = 10_000

FAULTS = [
    pytest.param(RedisClusterException("Redis Cluster cannot be connected"), id="cluster"),
    pytest.param(AttributeError("'NoneType' object has no attribute 'writelines'"), id="attr"),
    pytest.param(RuntimeError("anything else"), id="runtime"),
]


async def eventually(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """Wait (wall clock: socket timeouts and backoff are real time) until `check()`."""
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - polling what other tasks do
            await asyncio.sleep(0.02)


def with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


class Faulty:
    """`inner`, except that `method` raises `fault` while `failing` is set."""

    def __init__(self, inner: Any, method: str, fault: BaseException) -> None:
        self.inner, self.method, self.fault = inner, method, fault
        self.failing = True
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name != self.method:
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.failing:
                raise self.fault
            return await attr(*args, **kwargs)

        return call


@contextmanager
def running(*work: Any) -> Iterator[asyncio.Event]:
    """Run `work(stop)` coroutines' factories as tasks; stop and cancel them after."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(factory(stop)) for factory in work]
    try:
        yield stop
        for task in tasks:
            assert not task.done(), f"a loop ended: {task}"
    finally:
        stop.set()
        for task in tasks:
            task.cancel()


# -- timeouts --------------------------------------------------------------------------


async def test_client_timeouts_outlast_every_blocking_read(any_redis_url: str) -> None:
    client = create_redis(any_redis_url)
    short = create_redis(with_query(any_redis_url, "socket_timeout=3"))
    try:
        # redis-py 8's default (5 s) equals the consumer's 5 s XREADGROUP BLOCK.
        assert socket_timeout_s(client) == DEFAULT_SOCKET_TIMEOUT_S >= 15
        consumer = EventConsumer(client, "notification", _ignore, block_ms=5_000)
        assert consumer.block_ms == 5_000
        # A user's own, shorter timeout shortens the block instead of racing it.
        assert socket_timeout_s(short) == 3
        assert EventConsumer(short, "notification", _ignore, block_ms=5_000).block_ms == 1_000
    finally:
        await client.aclose()
        await short.aclose()


async def _ignore(event: incidents_pb2.IncidentEvent) -> None:
    pass


async def test_an_idle_consumer_logs_nothing_drops_no_connection_and_delays_no_entry(
    any_redis_url: str, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    # The production shape scaled down: a block as long as the socket timeout (5 s and
    # 5 s under redis-py 8's default), here 0.4 s and 0.4 s. Before the fix, each idle
    # read that lost the race dropped its connection (redis-py then retried on a new
    # one): 6 reconnections in 2.5 s on the standalone server, 30 on the cluster.
    redis = await connect_redis(with_query(any_redis_url, "socket_timeout=0.4"))
    handled: dict[str, float] = {}
    loop = asyncio.get_running_loop()

    async def handler(event: incidents_pb2.IncidentEvent) -> None:
        handled[event.incident.id] = loop.time()

    consumer = EventConsumer(redis, "notification", handler, shards=range(2), block_ms=400)
    caplog.set_level(logging.WARNING)
    try:
        with running(consumer.run):
            await asyncio.sleep(0.5)  # connected and blocking
            with connections_received(request, any_redis_url) as received:
                before = received()
                await asyncio.sleep(2.5)  # idle: several blocks and socket timeouts long
                assert received() == before
            for incident_id in ("16", "17"):  # one on each shard
                published = loop.time()
                await _publish(redis, incident_id)
                await eventually(lambda i=incident_id: i in handled, timeout_s=5)  # type: ignore[misc]
                assert handled[incident_id] - published < 1.0
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    finally:
        await redis.aclose()


@contextmanager
def connections_received(request: pytest.FixtureRequest, url: str) -> Iterator[Callable[[], int]]:
    """A function counting the connections the server(s) of `url` accepted so far (asked
    over connections opened once, here, so asking adds none)."""
    if url.startswith("redis+cluster://"):
        cluster: EmbeddedCluster = request.getfixturevalue("redis_cluster_server")
        nodes = cluster.nodes
    else:
        nodes = [request.getfixturevalue("redis_server")]
    clients = [node.client() for node in nodes]

    def count() -> int:
        stats: list[Any] = [client.info("stats") for client in clients]
        return sum(int(s["total_connections_received"]) for s in stats)

    try:
        yield count
    finally:
        for client in clients:
            client.close()


async def _publish(redis: RedisClient, incident_id: str) -> None:
    event = incidents_pb2.IncidentEvent(
        kind=incidents_pb2.INCIDENT_EVENT_KIND_TRIGGERED,
        incident=incidents_pb2.Incident(id=incident_id),
    )
    await redis.xadd(
        stream_key(incident_shard(incident_id)), {EVENT_FIELD: event.SerializeToString()}
    )


# -- any exception: log, back off, go on; health follows ------------------------------


@pytest.mark.parametrize("fault", FAULTS)
async def test_lease_heartbeat_survives_any_exception(
    any_redis: RedisClient, fault: BaseException, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock()
    leases = ShardLeases(any_redis, clock, "loops", "a", SHARDS, LEASE_MS)
    faulty = Faulty(leases, "heartbeat", fault)
    monkeypatch.setattr(leases, "heartbeat", faulty.__getattr__("heartbeat"))
    health = WorkerHealth(fail_after_s=0.3)
    with running(lambda stop: leases.run(stop, health)):
        await eventually(lambda: faulty.calls >= 3 and not health.healthy)
        assert leases.owned == frozenset()
        faulty.failing = False
        await eventually(lambda: leases.owned == ALL and health.healthy)


async def test_a_replica_back_from_a_partition_takes_its_share_again(
    any_redis: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock()
    a = ShardLeases(any_redis, clock, "share", "a", SHARDS, LEASE_MS)
    b = ShardLeases(any_redis, clock, "share", "b", SHARDS, LEASE_MS)
    cut_off = Faulty(a, "heartbeat", RedisClusterException("Redis Cluster cannot be connected"))
    cut_off.failing = False
    monkeypatch.setattr(a, "heartbeat", cut_off.__getattr__("heartbeat"))
    health = WorkerHealth(fail_after_s=0.3)

    async def time_passes_until(check: Callable[[], bool]) -> None:
        async with asyncio.timeout(15):
            while not check():
                clock.advance(seconds=1)
                await asyncio.sleep(0.02)

    with running(lambda stop: a.run(stop, health), lambda stop: b.run(stop)):
        await time_passes_until(lambda: bool(a.owned and b.owned) and a.owned | b.owned == ALL)
        cut_off.failing = True  # a is partitioned away: b takes every shard
        await time_passes_until(lambda: b.owned == ALL and not a.owned)
        await eventually(lambda: not health.healthy)  # failing for 0.3 s of real time
        cut_off.failing = False  # healed: a rejoins and takes its share back
        await time_passes_until(
            lambda: bool(a.owned) and a.owned.isdisjoint(b.owned) and a.owned | b.owned == ALL
        )
        assert health.healthy


@pytest.mark.parametrize("fault", FAULTS)
async def test_timer_worker_survives_any_exception(
    any_redis: RedisClient, fault: BaseException, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock()
    store = TimerStore(any_redis, clock, shards=4)
    fired: list[str] = []

    async def handler(timer: ClaimedTimer) -> None:
        fired.append(timer.timer_id)

    worker = TimerWorker(store, clock, handler, lambda: range(4), poll_interval_ms=100)
    faulty = Faulty(store, "claim_due_and_next_wake", fault)
    monkeypatch.setattr(
        store, "claim_due_and_next_wake", faulty.__getattr__("claim_due_and_next_wake")
    )
    await store.arm("page-1", clock.now_ms(), b"")
    health = WorkerHealth(fail_after_s=0.3)
    with running(lambda stop: worker.run(stop, health)):
        await eventually(lambda: faulty.calls >= 3 and not health.healthy)
        assert fired == []
        faulty.failing = False
        await eventually(lambda: fired == ["page-1"] and health.healthy)


@pytest.mark.parametrize("fault", FAULTS)
async def test_consumer_survives_any_exception(
    any_redis: RedisClient, fault: BaseException
) -> None:
    handled: list[str] = []

    async def handler(event: incidents_pb2.IncidentEvent) -> None:
        handled.append(event.incident.id)

    await ensure_groups(any_redis, ["notification"], "0", 2)
    consumer = EventConsumer(any_redis, "notification", handler, shards=range(2), block_ms=100)
    faulty = Faulty(any_redis, "xreadgroup", fault)
    consumer.redis = faulty  # type: ignore[assignment]
    await _publish(any_redis, "16")
    health = WorkerHealth(fail_after_s=0.3)
    with running(lambda stop: consumer.run(stop, health)):
        await eventually(lambda: faulty.calls >= 6 and not health.healthy)
        assert handled == []
        faulty.failing = False
        await eventually(lambda: handled == ["16"] and health.healthy)


async def test_a_hung_iteration_and_an_ended_task_are_unhealthy() -> None:
    health = WorkerHealth(stuck_after_s=0.1)
    guard = health.guard("hangs")
    release = asyncio.Event()

    async def hang() -> None:
        async with guard:
            await release.wait()

    task = asyncio.create_task(hang())
    await eventually(lambda: not health.healthy)
    assert health.problems()[0].startswith("hangs: stuck")
    release.set()
    await task
    assert health.healthy

    stopping = asyncio.Event()
    ended = asyncio.create_task(asyncio.sleep(0))
    health.track("returns", ended, stopping)
    await ended
    await asyncio.sleep(0)
    assert health.problems() == ["returns: ended"]


async def test_cancellation_passes_through_a_guard() -> None:
    guard = LoopGuard("cancelled")

    async def body() -> None:
        async with guard:
            await asyncio.sleep(10)

    task = asyncio.create_task(body())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- Redis stopped, then back ---------------------------------------------------------


@pytest.fixture(params=["standalone", pytest.param("cluster", marks=pytest.mark.cluster)])
def stoppable_redis(request: pytest.FixtureRequest) -> tuple[str, list[int]]:
    """(URL, pids) of the flushed standalone server, then of the flushed cluster."""
    if request.param == "cluster":
        cluster: EmbeddedCluster = request.getfixturevalue("redis_cluster_server")
        flush_cluster(cluster)
        url, pids = cluster.url, [node.pid for node in cluster.nodes]
    else:
        server: EmbeddedRedis = request.getfixturevalue("redis_server")
        flush_standalone(server)
        url, pids = server.url, [server.pid]
    return url, [pid for pid in pids if pid is not None]


@contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    """SIGSTOP the redis-server processes (a partition: connections hang), then SIGCONT."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


@pytest.fixture
async def quick_client(stoppable_redis: tuple[str, list[int]]) -> AsyncIterator[RedisClient]:
    """A client that gives up on a silent Redis within about a second (the defaults ride
    out 15 s per reply and 8 retries: right for production, long for a test)."""
    url, _ = stoppable_redis
    client = create_redis(with_query(url, "socket_timeout=0.3&socket_connect_timeout=0.3"))
    retry = Retry(NoBackoff(), retries=1)
    if isinstance(client, RedisCluster):
        client.set_retry(retry)
        await client.initialize()
    else:
        client.connection_pool.connection_kwargs["retry"] = retry
        await client.ping()
    yield client
    await client.aclose()


async def test_a_lease_holder_cut_off_from_redis_takes_its_shards_again_after_healing(
    stoppable_redis: tuple[str, list[int]], quick_client: RedisClient
) -> None:
    _, pids = stoppable_redis
    clock = ManualClock()
    leases = ShardLeases(quick_client, clock, "rejoin", "a", SHARDS, LEASE_MS)
    await leases.heartbeat()
    assert leases.owned == ALL
    health = WorkerHealth(fail_after_s=0.5)
    with running(
        lambda stop: leases.run(stop, health),
        lambda stop: probe_redis(quick_client, health, stop, interval_s=0.1, stuck_after_s=0.5),
    ):
        with paused(pids):
            clock.advance(seconds=LEASE_MS / 1000 + 1)  # heartbeats due: Redis is away
            assert leases.owned == frozenset()
            await eventually(lambda: not health.healthy)
            await asyncio.sleep(3)  # a partition of a few seconds (kept under the
            # cluster's node timeout, so the cluster itself stays up)
            assert leases.owned == frozenset()
        # Time goes on after healing; within a few heartbeats the shards are back.
        async with asyncio.timeout(30):
            while leases.owned != ALL or not health.healthy:
                clock.advance(seconds=0.5)
                await asyncio.sleep(0.05)


@pytest.mark.cluster
async def test_the_probe_sees_one_cluster_master_stop_answering(
    redis_cluster_server: EmbeddedCluster,
) -> None:
    flush_cluster(redis_cluster_server)
    client = await connect_redis(with_query(redis_cluster_server.url, "socket_timeout=2"))
    health = WorkerHealth()
    try:
        with running(
            lambda stop: probe_redis(client, health, stop, interval_s=0.1, stuck_after_s=0.5)
        ):
            await eventually(lambda: health.healthy)
            last = redis_cluster_server.nodes[-1].pid  # not the node PINGed by default
            assert last is not None
            with paused([last]):
                await eventually(lambda: not health.healthy, timeout_s=5)
            await eventually(lambda: health.healthy, timeout_s=10)
    finally:
        await client.aclose()
