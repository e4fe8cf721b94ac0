"""Starting real service servers in tests: real Redis, real sockets, a ManualClock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from tocsin.client.client import TocsinClient
from tocsin.client.endpoints import Endpoints
from tocsin.runtime.auth import process_service_token
from tocsin.runtime.clock import Clock
from tocsin.runtime.config import Address, load_config
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.service import RunningService, ServiceDeps

LOOPBACK_ANY_PORT = Address("127.0.0.1", 0)
CreateServer = Callable[[ServiceDeps, Address | None], Awaitable[tuple[RunningService, int]]]


@asynccontextmanager
async def running(
    create_server: CreateServer,
    redis: RedisClient,
    clock: Clock,
    env: dict[str, str] | None = None,
) -> AsyncIterator[tuple[RunningService, str]]:
    """One service on an ephemeral loopback port; yields it and its "host:port"."""
    deps = ServiceDeps(config=load_config(env or {}), redis=redis, clock=clock)
    service, port = await create_server(deps, LOOPBACK_ANY_PORT)
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        await service.stop(0)


def client_for(token: str | None = None, **targets: str) -> TocsinClient:
    """A client whose named services point at test servers ("scheduling": "127.0.0.1:1234");
    by default with the service credential of servers started in this process (it stands
    in for tocsin's other services)."""
    token = process_service_token() if token is None else token
    unused = "127.0.0.1:9"  # discard port: calls to a service the test did not start fail fast
    values = {
        name: targets.get(name, unused)
        for name in ("scheduling", "incidents", "escalation", "notification", "history")
    }
    return TocsinClient(Endpoints(http=targets.get("http", unused), **values), token=token)
