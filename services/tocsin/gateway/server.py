"""Run the gateway with uvicorn."""

from __future__ import annotations

import asyncio
import os

import uvicorn

from tocsin.gateway.app import create_app
from tocsin.runtime.clock import Clock, clock_from_env
from tocsin.runtime.config import Address, Config, load_config
from tocsin.runtime.service import configure_logging, peer_client
from tocsin.runtime.telemetry import setup_tracing


async def start_gateway(
    config: Config, clock: Clock, addr: Address | None = None
) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """Start the gateway in this event loop (port 0 picks a free port); for tests and `serve`."""
    addr = addr or config.http_addr
    config.check_bind(addr, "TOCSIN_HTTP_ADDR")
    app = create_app(config, peer_client(config), clock)
    server = uvicorn.Server(
        uvicorn.Config(app, host=addr.host, port=addr.port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise OSError(f"gateway could not listen on {addr}")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, port


async def _serve(config: Config) -> None:
    # The gRPC channels must be created inside the loop that uses them, so the app is
    # built here rather than handed to uvicorn.run (which makes its own loop later).
    app = create_app(config, peer_client(config), clock_from_env(os.environ))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.http_addr.host,
            port=config.http_addr.port,
            log_level="warning",
            timeout_graceful_shutdown=3,
        )
    )
    await server.serve()


def serve() -> None:
    import uvloop

    configure_logging()
    config = load_config()
    setup_tracing("gateway")
    config.check_bind(config.http_addr, "TOCSIN_HTTP_ADDR")
    uvloop.run(_serve(config))
