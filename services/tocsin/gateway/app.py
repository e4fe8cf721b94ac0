"""The gateway's Starlette application: routes from each edge module.

Every edge module exposes `routes`; add a new one to `EDGE_MODULES`. The web console
(tocsin/console/) is mounted last, at `/`. Every HTTP request is
timed into `tocsin.http.server.duration` (runtime/metrics.py) by route template, method and
status, the fast path included.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute
from starlette.types import Message, Receive, Scope, Send

from tocsin.client.client import TocsinClient
from tocsin.console import app as console_app
from tocsin.gateway import (
    alertmanager,
    events_api,
    health,
    heartbeats,
    ical,
    links,
    oidc,
    slack_interactions,
    twilio_webhooks,
)
from tocsin.runtime.clock import Clock
from tocsin.runtime.config import Config
from tocsin.runtime.metrics import HTTP_DURATION

EDGE_MODULES = (
    events_api,
    alertmanager,
    health,
    heartbeats,
    ical,
    twilio_webhooks,
    slack_interactions,
    links,
)  # busiest first


def create_app(config: Config, client: TocsinClient, clock: Clock) -> EventsFastPath:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await console.close()
        await client.close()

    console = console_app.Console(config, client, clock)
    routes: list[BaseRoute] = [route for module in EDGE_MODULES for route in module.routes]
    # /auth/oidc/*, when TOCSIN_OIDC_* is set; a browser's sign-in lands in the console
    routes += oidc.routes_for(config, client, on_browser_sign_in=console.signed_in)
    routes += console_app.routes()
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.config = config
    app.state.client = client
    app.state.clock = clock
    app.state.console = console
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
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_timed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if scope["path"] == "/v2/enqueue" and scope["method"] == "POST":
                scope["app"] = self.app
                await self._enqueue(scope, receive, send_timed)
                scope["route"] = _ENQUEUE_ROUTE
            else:
                await self.app(scope, receive, send_timed)
        except ClientDisconnect:
            # The client went away, or was cut off for sending too slowly (protocol.py):
            # there is nobody to answer, and nothing was written for a half-read body.
            pass
        except Exception:
            status = status or 500  # uvicorn logs it and answers 500
            raise
        finally:
            record_request(scope, status, time.perf_counter() - started)


_ENQUEUE_ROUTE = events_api.routes[0]
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def record_request(scope: Scope, status: int, seconds: float) -> None:
    """tocsin.http.server.duration, labelled by the matched route's template (`other` when
    none matched), the method (`other` beyond the standard ones) and the status (`500` when
    an exception reached uvicorn, `none` when the client left before an answer)."""
    route = scope.get("route")
    method = scope.get("method", "")
    HTTP_DURATION.record(
        seconds,
        {
            "route": getattr(route, "path", None) or "other",
            "method": method if method in _METHODS else "other",
            "status": str(status) if status else "none",
        },
    )
