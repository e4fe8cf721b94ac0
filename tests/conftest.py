"""Shared fixtures. Redis: real servers from tests/redis_servers.py, never a mock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from tests.redis_servers import (
    RedisServers,
    crash_and_restart,
    flush_cluster,
    flush_standalone,
)
from tocsin.runtime.embedded_redis import EmbeddedCluster, EmbeddedRedis
from tocsin.runtime.redis import RedisClient, connect_redis


@pytest.fixture(scope="session")
def redis_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServers]:
    servers = RedisServers(tmp_path_factory.mktemp("redis"))
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def redis_server(redis_servers: RedisServers) -> EmbeddedRedis:
    """The session's standalone server (started on first use)."""
    return redis_servers.standalone()


@pytest.fixture(scope="session")
def redis_cluster_server(redis_servers: RedisServers) -> EmbeddedCluster:
    """The session's 3-master Redis Cluster (started on first use)."""
    return redis_servers.cluster()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """URL of the standalone server, flushed for this test."""
    flush_standalone(redis_server)
    return redis_server.url


@pytest.fixture(params=["standalone", pytest.param("cluster", marks=pytest.mark.cluster)])
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """URL of the standalone server, then of the cluster (redis+cluster://), flushed."""
    if request.param == "cluster":
        cluster: EmbeddedCluster = request.getfixturevalue("redis_cluster_server")
        flush_cluster(cluster)
        return cluster.url
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client of the flushed standalone server."""
    client = await connect_redis(redis_url)
    assert isinstance(client, Redis)
    yield client
    await client.aclose()


@pytest.fixture
async def any_redis(any_redis_url: str) -> AsyncIterator[RedisClient]:
    """A client of the flushed standalone server, then of the flushed cluster."""
    client = await connect_redis(any_redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def crash_redis(redis_server: EmbeddedRedis) -> Callable[[], None]:
    """Call to kill -9 the standalone server and restart it (same port, same AOF)."""
    return lambda: crash_and_restart(redis_server)


@pytest.fixture(scope="session")
def _session_span_exporter() -> InMemorySpanExporter:
    """One global tracer provider for the test session (OpenTelemetry allows one per
    process), exporting to memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.fixture
def spans(_session_span_exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    """The finished spans of this test (the session exporter, cleared first)."""
    _session_span_exporter.clear()
    return _session_span_exporter
