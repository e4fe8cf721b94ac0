"""A lean HTTP/1.1 load client: keep-alive connections, one request at a time on each.

A load generator on the same two cores as the system it measures takes CPU from it:
aiohttp spends ~300 us per request here, about as much as the gateway's own work on an
event. This client writes prebuilt requests and parses replies with httptools (the C
parser uvicorn uses), for a few tens of microseconds per request.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import httptools


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reply: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        reply, self.reply = self.reply, None
        body, self.body = b"".join(self.body), []
        if reply is not None and not reply.done():
            reply.set_result((self.parser.get_status_code(), body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(exc or ConnectionError("connection closed"))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None and self.reply is None
        self.reply = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.reply


class KeepAliveClient:
    """POSTs to one server over `connections` keep-alive connections (`async with`)."""

    def __init__(self, host: str, port: int, connections: int) -> None:
        self.host = host
        self.port = port
        self.connections = connections
        self._idle: asyncio.Queue[_Connection] = asyncio.Queue()

    async def __aenter__(self) -> KeepAliveClient:
        loop = asyncio.get_running_loop()
        for _ in range(self.connections):
            _, connection = await loop.create_connection(_Connection, self.host, self.port)
            self._idle.put_nowait(connection)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        while not self._idle.empty():
            connection = self._idle.get_nowait()
            if connection.transport is not None:
                connection.transport.close()

    def request(self, path: str, body: bytes) -> bytes:
        """A prebuilt JSON POST of `body` to `path`, to pass to `send` any number of times."""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send a prebuilt request on an idle connection; (status, body) of the reply."""
        connection = await self._idle.get()
        reply = await connection.send(request)  # a connection that failed is dropped
        self._idle.put_nowait(connection)
        return reply
