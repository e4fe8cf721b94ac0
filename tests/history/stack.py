"""The whole paging stack plus the history service, in one event loop on a ManualClock:
`run_until_quiet` also drains the archive's consumer and timeline copier."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tests.escalation.stack import FullStack, full_stack
from tests.services import LOOPBACK_ANY_PORT, client_for
from tocsin.client.client import TocsinClient
from tocsin.history import server as history_server
from tocsin.history.server import HistoryService
from tocsin.runtime.config import load_config
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.service import ServiceDeps


@dataclass
class HistoryStack:
    full: FullStack
    history: HistoryService
    address: str
    client: TocsinClient
    """A client of every service of the stack, history included."""

    @property
    def targets(self) -> dict[str, str]:
        endpoints = self.client.endpoints
        return {
            name: getattr(endpoints, name)
            for name in ("scheduling", "incidents", "escalation", "notification", "history")
        }

    async def archive_quiet(self) -> int:
        total = 0
        while True:
            done = await self.history.parts.consumer.drain_once()
            done += await self.history.parts.archiver.sync_once()
            total += done
            if not done:
                return total

    async def run_until_quiet(self) -> int:
        total = await self.full.run_until_quiet()
        return total + await self.archive_quiet()

    async def tick(self, **advance: float) -> int:
        total = await self.full.tick(**advance)
        return total + await self.archive_quiet()


@contextlib.asynccontextmanager
async def history_stack(redis: RedisClient, database_url: str) -> AsyncIterator[HistoryStack]:
    async with full_stack(redis) as full:
        endpoints = full.client.endpoints
        env = {
            "TOCSIN_SCHEDULING_ADDR": endpoints.scheduling,
            "TOCSIN_INCIDENTS_ADDR": endpoints.incidents,
            "TOCSIN_DATABASE_URL": database_url,
        }
        deps = ServiceDeps(load_config(env), redis, full.paging.clock)
        running, port = await history_server.create_server(
            deps, LOOPBACK_ANY_PORT, background=False
        )
        client = client_for(
            scheduling=endpoints.scheduling,
            incidents=endpoints.incidents,
            notification=endpoints.notification,
            escalation=full.escalation_address,
            history=f"127.0.0.1:{port}",
        )
        try:
            yield HistoryStack(full, running, f"127.0.0.1:{port}", client)
        finally:
            await client.close()
            await running.stop(0)
            if deps.peers is not None:
                await deps.peers.close()
