"""The gateway's Starlette application: routes from each edge module.

Every edge module exposes `routes`; add a new one to `EDGE_MODULES`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from tocsin.client.client import TocsinClient
from tocsin.gateway import alertmanager, events_api, health, ical, twilio_webhooks
from tocsin.runtime.clock import Clock
from tocsin.runtime.config import Config

EDGE_MODULES = (events_api, alertmanager, health, ical, twilio_webhooks)  # busiest first


def create_app(config: Config, client: TocsinClient, clock: Clock) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.close()

    routes: list[BaseRoute] = [route for module in EDGE_MODULES for route in module.routes]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.config = config
    app.state.client = client
    app.state.clock = clock
    return app
