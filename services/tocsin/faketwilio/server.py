"""Run the fake Twilio: inside a test's event loop, or as its own process
(`tocsin fake-twilio --port N`, `python -m tocsin.faketwilio --port N`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator, Generator, Sequence

import uvicorn
from starlette.types import ASGIApp

from tocsin.faketwilio.app import create_app
from tocsin.faketwilio.fake import FakeTwilio

ACCOUNT_SID_ENV = "TWILIO_ACCOUNT_SID"
AUTH_TOKEN_ENV = "TWILIO_AUTH_TOKEN"


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its SIGINT/SIGTERM handlers: the host process owns its signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on accepted sockets whose
    # proto says TCP, and without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


def _base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def serve_asgi(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn in the running loop; yields its base URL.

    The socket is bound and listening before this yields, so clients can connect at once.
    Used for the fake and for the small webhook receivers tests spin up.
    """
    sock = _listening_socket(host, port)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = _EmbeddedServer(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        yield _base_url(sock)
    finally:
        server.should_exit = True
        await task
        sock.close()


@contextlib.asynccontextmanager
async def create_fake_twilio(
    account_sid: str,
    auth_token: str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    callback_delay_s: float = 0.0,
) -> AsyncIterator[FakeTwilio]:
    """Serve a FakeTwilio in the running loop; yields it with `base_url` set."""
    fake = FakeTwilio(account_sid, auth_token, callback_delay_s=callback_delay_s)
    try:
        async with serve_asgi(create_app(fake), host, port) as base_url:
            fake.base_url = base_url
            yield fake
    finally:
        await fake.aclose()


async def _serve_forever(host: str, port: int, account_sid: str, auth_token: str) -> None:
    fake = FakeTwilio(account_sid, auth_token)
    sock = _listening_socket(host, port)
    fake.base_url = _base_url(sock)
    config = uvicorn.Config(create_app(fake), log_level="warning", access_log=False, lifespan="off")
    print(f"fake twilio listening on {fake.base_url}", flush=True)
    try:
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        await fake.aclose()
        sock.close()


def run(host: str, port: int, account_sid: str, auth_token: str) -> None:
    """Serve until SIGINT/SIGTERM. Prints `fake twilio listening on <url>` when ready."""
    asyncio.run(_serve_forever(host, port, account_sid, auth_token))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tocsin fake-twilio",
        description="A local Twilio-compatible server for tests and load tests. "
        f"Credentials come from ${ACCOUNT_SID_ENV} and ${AUTH_TOKEN_ENV}.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    account_sid, auth_token = os.environ.get(ACCOUNT_SID_ENV), os.environ.get(AUTH_TOKEN_ENV)
    for name, value in ((ACCOUNT_SID_ENV, account_sid), (AUTH_TOKEN_ENV, auth_token)):
        if not value:
            print(f"tocsin fake-twilio: environment variable {name} is not set", file=sys.stderr)
            return 2
    assert account_sid and auth_token
    run(args.host, args.port, account_sid, auth_token)
    return 0
