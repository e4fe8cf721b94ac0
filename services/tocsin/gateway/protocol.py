"""The gateway's HTTP/1.1 protocol: uvicorn's, with deadlines and a connection cap.

Guarantee: a client cannot hold a connection without sending a request at a useful pace,
and connections that hold no request in progress cannot keep real requests out.

- Headers: a request's line and headers must arrive within `header_timeout` of the
  connection opening (or of the previous response on a kept-alive connection), and be at
  most MAX_HEADER_BYTES; else 408 (or 431) and the connection is closed (closed without
  an answer if not one byte of a request came: see `_refuse`). uvicorn has no
  such deadline: its keep-alive timer is cancelled by any byte, so a client sending a
  header byte now and then (slowloris) kept its connection for ever.
- Body: the whole body must arrive within `body_timeout` of the headers; else 408 (if no
  response has started) and the connection is closed, and the endpoint sees a disconnect.
- Connections: at most `max_connections` are open. One more evicts the connection that
  has waited longest for its request's headers (an idle keep-alive connection or a
  trickler): real requests send their headers at once, so they are never the ones
  evicted. If every connection has a request in progress, the new one gets 503.
  The cap is kept below the process's file-descriptor limit, so accept() never fails
  with EMFILE and the listening socket keeps working.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
"""Request line and headers; 431 beyond (Twilio's and Alertmanager's are under 2 KiB)."""
FD_RESERVE = 64
"""File descriptors kept free for everything but client connections (gRPC, logs)."""

_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-length: 0\r\nconnection: close\r\n\r\n"
)
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n"
    b"content-length: 0\r\nconnection: close\r\n\r\n"
)


@dataclass(frozen=True)
class HttpLimits:
    header_timeout: float
    body_timeout: float
    max_connections: int


def connection_cap(configured: int) -> int:
    """`configured`, lowered to stay FD_RESERVE below the soft RLIMIT_NOFILE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft - FD_RESERVE))


def guarded_protocol(limits: HttpLimits) -> type[HttpToolsProtocol]:
    """The protocol class to give uvicorn (`http=`), enforcing `limits`."""
    cap = connection_cap(limits.max_connections)
    if cap < limits.max_connections:
        log.warning(
            "TOCSIN_HTTP_MAX_CONNECTIONS=%d lowered to %d: the file-descriptor limit is %d",
            limits.max_connections,
            cap,
            cap + FD_RESERVE,
        )

    class GuardedHttpProtocol(_GuardedHttpProtocol):
        _limits = limits
        _cap = cap

    return GuardedHttpProtocol


class _GuardedHttpProtocol(HttpToolsProtocol):
    _limits: HttpLimits
    _cap: int

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, object],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_since: float | None = None
        """When this connection began waiting for a request's headers; None while not."""
        self._header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()
        if len(self.connections) > self._cap:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self._waiting_since = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._waiting_since is None:
            super().data_received(data)
            return
        self._header_bytes += len(data)  # with any body bytes that came along
        super().data_received(data)
        if self._waiting_since is not None and self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(_TOO_LARGE)

    def on_headers_complete(self) -> None:
        self._waiting_since = None
        self._arm(self._limits.body_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_deadline()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._await_headers()

    # Deadlines

    def _await_headers(self) -> None:
        self._waiting_since = self.loop.time()
        self._header_bytes = 0
        self._arm(self._limits.header_timeout)

    def _arm(self, seconds: float) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        self._refuse(_TIMEOUT)

    def _refuse(self, response: bytes) -> None:
        """Answer `response` unless a response has begun, and close the connection. An
        idle connection (not one byte of a request since it opened or since its last
        response) is closed without an answer, as a keep-alive timeout closes it: a 408
        written there waits in the socket for a client that sends a request at that moment
        (or reuses the pooled connection later), which reads it as its request's answer and
        takes a request the gateway never saw for a refused one; a plain close is what
        clients retry on a new connection."""
        if self.transport.is_closing():
            return
        idle = self._waiting_since is not None and self._header_bytes == 0
        if idle and response is _TIMEOUT:
            pass
        elif self._waiting_since is not None or not self.cycle.response_started:
            self.transport.write(response)
        self._waiting_since = None
        self._cancel_deadline()
        self.transport.close()

    def _make_room(self) -> None:
        """Evict the connection waiting longest for headers, or refuse this one."""
        oldest: _GuardedHttpProtocol | None = None
        for connection in self.connections:
            if not isinstance(connection, _GuardedHttpProtocol) or connection is self:
                continue
            since = connection._waiting_since
            if since is not None and (oldest is None or since < (oldest._waiting_since or 0.0)):
                oldest = connection
        if oldest is not None:
            log.debug("connection cap reached: closing %s, waiting for headers", oldest.client)
            oldest._refuse(_TIMEOUT)
        else:
            log.warning("connection cap (%d) reached with every request in progress", self._cap)
            self._refuse(_BUSY)
