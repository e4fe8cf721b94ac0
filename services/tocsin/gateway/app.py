"""The gateway's Starlette application: routes from each edge module.

Every edge module exposes `routes`; add a new one to `EDGE_MODULES`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from tocsin.client.client import TocsinClient
from tocsin.gateway import (
    alertmanager,
    events_api,
    health,
    ical,
    oidc,
    slack_interactions,
    twilio_webhooks,
)
from tocsin.runtime.clock import Clock
from tocsin.runtime.config import Config

EDGE_MODULES = (
    events_api,
    alertmanager,
    health,
    ical,
    twilio_webhooks,
    slack_interactions,
)  # busiest first


def create_app(config: Config, client: TocsinClient, clock: Clock) -> EventsFastPath:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.close()

    routes: list[BaseRoute] = [route for module in EDGE_MODULES for route in module.routes]
    routes += oidc.routes_for(config, client)  # /auth/oidc/*, when TOCSIN_OIDC_* is set
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.config = config
    app.state.client = client
    app.state.clock = clock
    return EventsFastPath(app)


class EventsFastPath:
    """POST /v2/enqueue straight to its endpoint, everything else through Starlette.

    In an alert storm the Events API is nearly all the traffic, and Starlette's middleware
    and routing cost ~10% of the gateway's CPU per event. The endpoint answers every
    error itself; an unexpected exception reaches uvicorn, which logs it and answers 500
    as Starlette's error middleware would. A client that disconnects mid-body (or is cut
    off by the gateway's deadlines) is no error: nothing is logged."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.state = app.state
        self._enqueue = events_api.enqueue_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if (
                scope["type"] == "http"
                and scope["path"] == "/v2/enqueue"
                and (scope["method"] == "POST")
            ):
                scope["app"] = self.app
                await self._enqueue(scope, receive, send)
            else:
                await self.app(scope, receive, send)
        except ClientDisconnect:
            # The client went away, or was cut off for sending too slowly (protocol.py):
            # there is nobody to answer, and nothing was written for a half-read body.
            pass
