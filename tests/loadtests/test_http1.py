"""The lean open-loop HTTP load generator against a real uvicorn server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from loadtests.http1 import HttpLoad


def _app(bodies: list[dict[str, str]]) -> Starlette:
    async def take(request: Request) -> JSONResponse:
        bodies.append(await request.json())
        # Every fifth request is refused, to show errors are counted by status.
        return JSONResponse({}, status_code=429 if len(bodies) % 5 == 0 else 202)

    return Starlette(routes=[Route("/take", take, methods=["POST"])])


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, list[dict[str, str]]]]:
    bodies: list[dict[str, str]] = []
    config = uvicorn.Config(_app(bodies), host="127.0.0.1", port=0, log_level="warning")
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve())
    for _ in range(500):
        if uv.started:
            break
        await asyncio.sleep(0.01)
    yield uv.servers[0].sockets[0].getsockname()[1], bodies
    uv.should_exit = True
    await task


async def test_every_request_is_sent_once_and_answered(
    server: tuple[int, list[dict[str, str]]],
) -> None:
    port, bodies = server
    load = HttpLoad("127.0.0.1", port, "/take", json.dumps({"n": "x"}).encode(), 8, 202)
    result = await load.run(rate=2000, count=300)
    assert len(bodies) == 300 and all(body == {"n": "x"} for body in bodies)
    assert result.errors == {"HTTP 429": 60}
    assert result.histogram.get_total_count() == 240
    # 300 requests due over 0.15 s: the run cannot be shorter than the schedule.
    assert result.seconds >= 0.149


async def test_a_server_that_goes_away_fails_the_rest() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()  # accept, then hang up at once

    tcp = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    async with tcp:
        load = HttpLoad("127.0.0.1", port, "/take", b"{}", 2, 202)
        result = await asyncio.wait_for(load.run(rate=1000, count=50), timeout=10)
    assert sum(result.errors.values()) == 50
    assert result.histogram.get_total_count() == 0
