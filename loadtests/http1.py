"""A lean open-loop HTTP/1.1 load generator: keep-alive connections, no task per request.

A load generator on the same two cores as the system it measures takes CPU from it:
aiohttp spends ~300 us per request here, as much as the gateway's own work on an event,
and even a task and a future per request cost ~150 us. Like wrk2, this one keeps a fixed
set of keep-alive connections and a schedule: each request is due at `start + i / rate`;
a due request goes out on an idle connection, or waits for the next reply if none is
idle. A reply is parsed by httptools (the C parser uvicorn uses) in a protocol callback,
records its latency from the request's due time (so queueing counts against it), and
sends the next waiting request at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import httptools
from hdrh.histogram import HdrHistogram

from loadtests.openloop import latency_histogram, record_us


@dataclass
class HttpLoadResult:
    histogram: HdrHistogram
    """Microseconds from each successful request's due time to its reply."""
    seconds: float
    """From the first due time to the last reply."""
    errors: Counter[str] = field(default_factory=Counter)
    """Failed requests by status (or by connection error)."""


class _Connection(asyncio.Protocol):
    def __init__(self, load: HttpLoad) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.due_ns = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        if not self.due_ns:
            return  # an answer to no request of ours (a 408 before an idle close)
        self.load.replied(self, self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.lost(self, exc)

    def send(self, due_ns: int) -> None:
        assert self.transport is not None
        self.due_ns = due_ns
        self.transport.write(self.load.request)


class HttpLoad:
    """POST one prebuilt request `count` times at `rate`/s over `connections` connections;
    a reply with status `expect` is a success."""

    def __init__(
        self, host: str, port: int, path: str, body: bytes, connections: int, expect: int
    ) -> None:
        self.host = host
        self.port = port
        self.connections = connections
        self.expect = expect
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.request = head.encode() + body
        self._all: list[_Connection] = []
        self._idle: list[_Connection] = []
        self._waiting: deque[int] = deque()
        self._result = HttpLoadResult(latency_histogram(), 0.0)
        self._remaining = 0
        self._finished: asyncio.Future[None] | None = None

    async def run(self, rate: float, count: int, start_delay_s: float = 0.02) -> HttpLoadResult:
        loop = asyncio.get_running_loop()
        self._finished = loop.create_future()
        self._remaining = count
        for _ in range(self.connections):
            _, connection = await loop.create_connection(
                lambda: _Connection(self), self.host, self.port
            )
            self._all.append(connection)
        self._idle = list(self._all)
        start = time.monotonic_ns() + int(start_delay_s * 1e9)
        sent = 0
        try:
            while sent < count:
                now = time.monotonic_ns()
                due = start + round(sent * 1e9 / rate)
                if due > now:
                    await asyncio.sleep((due - now) / 1e9)
                    continue
                while sent < count and start + round(sent * 1e9 / rate) <= now:
                    self._dispatch(start + round(sent * 1e9 / rate))
                    sent += 1
                await asyncio.sleep(0)  # let the replies in between due times
            await self._finished
        finally:
            for connection in self._all:
                if connection.transport is not None:
                    connection.transport.close()
        self._result.seconds = (time.monotonic_ns() - start) / 1e9
        return self._result

    def _dispatch(self, due_ns: int) -> None:
        if self._idle:
            self._idle.pop().send(due_ns)
        elif self._all:
            self._waiting.append(due_ns)
        else:
            self._result.errors["no connection left"] += 1
            self._done_one()

    def replied(self, connection: _Connection, status: int) -> None:
        if status == self.expect:
            record_us(self._result.histogram, time.monotonic_ns() - connection.due_ns)
        else:
            self._result.errors[f"HTTP {status}"] += 1
        connection.due_ns = 0
        self._done_one()
        if self._waiting:
            connection.send(self._waiting.popleft())
        else:
            self._idle.append(connection)

    def lost(self, connection: _Connection, exc: Exception | None) -> None:
        """A connection closed: its request in flight failed; so do the waiting ones
        if it was the last."""
        self._all.remove(connection)
        if connection in self._idle:
            self._idle.remove(connection)
        if connection.due_ns:
            self._result.errors[f"connection lost: {exc!r}"] += 1
            self._done_one()
        if not self._all:
            while self._waiting:
                self._waiting.popleft()
                self._result.errors["no connection left"] += 1
                self._done_one()

    def _done_one(self) -> None:
        self._remaining -= 1
        if self._remaining == 0 and self._finished is not None and not self._finished.done():
            self._finished.set_result(None)
