"""The gateway's Starlette application: routes from each edge module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import Route

from tocsin.client.client import TocsinClient
from tocsin.gateway.health import healthz
from tocsin.runtime.clock import Clock
from tocsin.runtime.config import Config


def create_app(config: Config, client: TocsinClient, clock: Clock) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.close()

    app = Starlette(routes=[Route("/healthz", healthz, methods=["GET"])], lifespan=lifespan)
    app.state.config = config
    app.state.client = client
    app.state.clock = clock
    return app
