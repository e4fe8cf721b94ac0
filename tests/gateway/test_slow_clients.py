"""Slow and hostile HTTP clients cannot keep real requests out (gateway/protocol.py).

A real gateway on a real socket, real time (this is socket I/O), with 1 s deadlines so
that nothing waits long: hundreds of connections trickling headers or a body are answered
408 and closed after the deadline while a real alert is accepted at once; with the file
descriptors of a small container, the connection cap evicts tricklers so that real
requests still get in."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import httpx
import pytest

from tests.gateway.test_events_api import ALERTMANAGER_TRIGGER
from tests.gateway.test_twilio_webhooks import TWILIO_ENV
from tests.incidents.harness import PAYMENTS_KEY, Served
from tocsin.gateway.server import start_gateway
from tocsin.runtime.auth import process_service_token
from tocsin.runtime.config import Address, load_config

DEADLINES = {
    "TOCSIN_HTTP_HEADER_TIMEOUT": "1s",
    "TOCSIN_HTTP_BODY_TIMEOUT": "1s",
    "TOCSIN_HTTP_KEEPALIVE_TIMEOUT": "1s",
}
HEADERS_STARTED = b"POST /v2/enqueue HTTP/1.1\r\nHost: tocsin\r\n"
BODY_STARTED = (
    b"POST /v2/enqueue HTTP/1.1\r\nHost: tocsin\r\ncontent-type: application/json\r\n"
    b"content-length: 100000\r\n\r\n{"
)


@asynccontextmanager
async def gateway(served: Served, env: Mapping[str, str]) -> AsyncIterator[int]:
    config = load_config({"TOCSIN_INCIDENTS_ADDR": served.target, **env})
    server, task, port = await start_gateway(config, served.clock, Address("127.0.0.1", 0))
    try:
        yield port
    finally:
        server.should_exit = True
        await task


async def trickle(port: int, start: bytes, drip: bytes, opened: asyncio.Event) -> bytes:
    """Send `start`, then `drip` every 0.2 s until the server closes; what it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(start)
    opened.set()
    answer = b""
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(4096), 0.2)
            except TimeoutError:
                writer.write(drip)
                continue
            if not chunk:
                return answer
            answer += chunk
    except ConnectionError:
        return answer
    finally:
        writer.close()


async def send_alert(port: int) -> tuple[int, float]:
    """A real Events API trigger on a new connection: its status and how long it took."""
    began = time.monotonic()
    async with httpx.AsyncClient(timeout=3) as http:
        reply = await http.post(f"http://127.0.0.1:{port}/v2/enqueue", json=ALERTMANAGER_TRIGGER)
    return reply.status_code, time.monotonic() - began


async def test_tricklers_are_closed_after_the_deadline_and_real_alerts_get_in(
    served: Served, capfd: pytest.CaptureFixture[str]
) -> None:
    # Deadlines long enough that the last trickler is still open when the alert is answered.
    deadlines = {**DEADLINES, "TOCSIN_HTTP_HEADER_TIMEOUT": "3s", "TOCSIN_HTTP_BODY_TIMEOUT": "3s"}
    async with gateway(served, deadlines) as port:
        tricklers = []
        for i in range(320):
            opened = asyncio.Event()
            start, drip = (HEADERS_STARTED, b"x") if i % 2 else (BODY_STARTED, b" ")
            tricklers.append(asyncio.create_task(trickle(port, start, drip, opened)))
            await opened.wait()
        status, _ = await send_alert(port)
        assert status == 202
        # Answered beside them, not after a deadline freed a slot: the newest is still open.
        assert not tricklers[-1].done(), "the alert waited until tricklers were cut off"

        # Before the deadlines they would trickle forever; now every one gets its 408.
        answers = await asyncio.wait_for(asyncio.gather(*tricklers), timeout=15)
        assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers)
    # Cutting a slow body off is no application error: no traceback per trickler.
    assert "Exception in ASGI application" not in capfd.readouterr().err


async def test_at_the_cap_tricklers_waiting_for_headers_make_room_else_503(
    served: Served,
) -> None:
    env = {"TOCSIN_HTTP_MAX_CONNECTIONS": "6", "TOCSIN_HTTP_BODY_TIMEOUT": "60s"}
    async with gateway(served, env) as port:
        tricklers = []
        for start, drip in [(HEADERS_STARTED, b"x")] + [(BODY_STARTED, b" ")] * 3:
            opened = asyncio.Event()
            tricklers.append(asyncio.create_task(trickle(port, start, drip, opened)))
            await opened.wait()
        assert (await send_alert(port))[0] == 202  # 5 connections: under the cap

        async def body_started() -> asyncio.StreamWriter:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(BODY_STARTED)
            await asyncio.sleep(0.1)
            return writer

        writers = [await body_started(), await body_started()]  # 6: the cap
        writers.append(await body_started())  # 7: the header trickler makes room
        evicted = await asyncio.wait_for(tricklers[0], timeout=2)
        assert evicted.startswith(b"HTTP/1.1 408 ")
        # Now every connection has a request in progress: one more is refused.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        answer = await asyncio.wait_for(reader.read(), timeout=2)
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert not any(task.done() for task in tricklers[1:])
        for each in writers:
            each.close()
        for task in tricklers:
            task.cancel()
        await asyncio.gather(*tricklers, return_exceptions=True)


async def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(
    served: Served,
) -> None:
    async with gateway(served, DEADLINES) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /nowhere HTTP/1.1\r\nHost: tocsin\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404 ")
        # Closed by the 1 s keepalive timeout; without one the read would outlast 3 s.
        rest = await asyncio.wait_for(reader.read(), timeout=3)
        writer.close()
        assert b"HTTP/1.1 404" in head + rest  # then end of stream, nothing else


async def test_oversize_headers_get_431_and_oversize_bodies_413(served: Served) -> None:
    async with gateway(served, TWILIO_ENV) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEADERS_STARTED + b"".join(b"x-pad: %d\r\n" % i for i in range(8000)))
        answer = await asyncio.wait_for(reader.read(), timeout=3)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 431 ")

        # The per-endpoint body caps (README, "Limits at the HTTP edge"), sent chunked so
        # that no Content-Length announces them; the answer comes before the body ends.
        for path, cap, status in (
            (f"/v1/alertmanager/{PAYMENTS_KEY}", 16 * 1024 * 1024, b"413"),
            ("/twilio/sms", 64 * 1024, b"413"),
            ("/v2/enqueue", 512 * 1024, b"400"),
        ):
            answer = await post_chunked(port, path, cap + 65536)
            assert answer.startswith(b"HTTP/1.1 " + status), (path, answer)


async def post_chunked(port: int, path: str, size: int) -> bytes:
    """POST `size` bytes in 64 KiB chunks, stopping once the server answers; its answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: tocsin\r\ntransfer-encoding: chunked\r\n\r\n".encode()
    )
    answer = asyncio.create_task(reader.readuntil(b"\r\n\r\n"))
    try:
        for _ in range(size // 65536 + 1):
            if answer.done():
                break
            writer.write(b"10000\r\n" + b" " * 65536 + b"\r\n")
            try:
                await writer.drain()
            except ConnectionError:  # answered and closed while the rest was on its way
                break
        return await asyncio.wait_for(answer, timeout=5)
    finally:
        writer.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


GATEWAY_WITH_256_FDS = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from tocsin.gateway.server import serve
serve()
"""


async def test_with_256_file_descriptors_300_tricklers_do_not_keep_real_alerts_out(
    served: Served,
) -> None:
    """The issue's finding: 300 trickling connections on a gateway with 256 descriptors
    blocked real requests. The cap (256 - 64) evicts the longest-waiting trickler."""
    port = _free_port()
    env = {
        **os.environ,
        "TOCSIN_HTTP_ADDR": f"127.0.0.1:{port}",
        "TOCSIN_INCIDENTS_ADDR": served.target,
        "TOCSIN_HTTP_HEADER_TIMEOUT": "60s",
        "TOCSIN_HTTP_BODY_TIMEOUT": "60s",
        # The gateway process calls the in-process incidents server as `tocsin up`'s would:
        # with the service credential it was handed.
        "TOCSIN_SERVICE_TOKEN": process_service_token(),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", GATEWAY_WITH_256_FDS, env=env
    )
    tricklers: list[asyncio.Task[bytes]] = []
    try:
        async with httpx.AsyncClient(timeout=1) as http:
            for _ in range(100):
                try:
                    await http.get(f"http://127.0.0.1:{port}/nowhere")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        for i in range(300):
            opened = asyncio.Event()
            start, drip = (HEADERS_STARTED, b"x") if i % 2 else (BODY_STARTED, b" ")
            tricklers.append(asyncio.create_task(trickle(port, start, drip, opened)))
            await opened.wait()
        await asyncio.sleep(0.5)  # every trickler is accepted (or refused) by now
        for _ in range(3):
            # With 60 s deadlines a blocked alert would time out (3 s) rather than get in.
            status, _ = await send_alert(port)
            assert status == 202
        still_open = sum(not task.done() for task in tricklers)
        assert still_open <= 256 - 64, still_open
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=10)
        for task in tricklers:
            task.cancel()
        await asyncio.gather(*tricklers, return_exceptions=True)


async def test_a_connection_that_sent_nothing_is_closed_without_an_answer(
    served: Served,
) -> None:
    """Not one byte by the header deadline: closed, no 408. A 408 written there would wait
    in the socket for the client's next request on that pooled connection, which would
    read it as that request's answer (a refusal of an alert the gateway never saw)."""
    env = {**DEADLINES, "TOCSIN_HTTP_KEEPALIVE_TIMEOUT": "60s"}
    async with gateway(served, env) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await asyncio.wait_for(reader.read(), timeout=5)  # the 1 s header deadline
        writer.close()
        assert answer == b""
        # One byte of a request is no longer idle: that trickler gets its 408.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"P")
        answer = await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408 ")
