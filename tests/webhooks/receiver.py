"""A real webhook receiver for tests (aiohttp on loopback): verifies every signature the
way the README tells receivers to, de-duplicates by event id, records the order, and can
answer with errors or hang on chosen requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tocsin.notification.channels.webhook import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    verify_signature,
)


@dataclass
class Receiver:
    secret: str
    url: str = ""
    answers: list[int] = field(default_factory=list)
    """Statuses for the next requests instead of 200."""
    fail_when: Callable[[dict[str, Any]], int | None] = lambda body: None
    """A status for a request by its body (None: the usual answer)."""
    hold: asyncio.Event | None = None
    """While set to an unset event, requests wait for it before answering."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    """Every request: status answered, whether the signature verified, event id, body."""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def accepted(self) -> list[dict[str, Any]]:
        """The bodies answered 2xx, each event once (the receiver's de-duplication)."""
        seen: set[str] = set()
        out = []
        for request in self.requests:
            if request["status"] == 200 and request["event_id"] not in seen:
                seen.add(request["event_id"])
                out.append(request["body"])
        return out


@asynccontextmanager
async def running_receiver(secret: str) -> AsyncIterator[Receiver]:
    received = Receiver(secret)

    async def hook(request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw)
        received.arrived.set()
        if received.hold is not None:
            await received.hold.wait()
        status = received.fail_when(body)
        if status is None:
            status = received.answers.pop(0) if received.answers else 200
        received.requests.append(
            {
                "status": status,
                "verified": verify_signature(
                    received.secret,
                    request.headers.get(TIMESTAMP_HEADER, ""),
                    raw,
                    request.headers.get(SIGNATURE_HEADER, ""),
                ),
                "event_id": request.headers.get(EVENT_ID_HEADER),
                "webhook_id": request.headers.get("X-Tocsin-Webhook-Id"),
                "body": body,
            }
        )
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook/{token}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    received.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook/tok-5678"
    try:
        yield received
    finally:
        await runner.cleanup()
