"""Run the gateway with uvicorn, behind the deadlines and cap of gateway/protocol.py."""

from __future__ import annotations

import asyncio
import os
from typing import Literal

import uvicorn

from tocsin.gateway.app import EventsFastPath, create_app
from tocsin.gateway.protocol import HttpLimits, guarded_protocol
from tocsin.runtime.auth import with_service_token
from tocsin.runtime.clock import Clock, clock_from_env
from tocsin.runtime.config import Address, Config, load_config
from tocsin.runtime.metrics import serve_process_metrics
from tocsin.runtime.service import configure_logging, peer_client, tune_gc
from tocsin.runtime.telemetry import setup_tracing


async def start_gateway(
    config: Config, clock: Clock, addr: Address | None = None
) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """Start the gateway in this event loop (port 0 picks a free port); for tests and `serve`."""
    addr = addr or config.http_addr
    config.check_bind(addr, "TOCSIN_HTTP_ADDR")
    app = create_app(config, peer_client(config), clock)
    server = uvicorn.Server(uvicorn_config(app, config, addr, lifespan="on"))
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
    metrics_server = await serve_process_metrics(config, "gateway")
    app = create_app(config, peer_client(config), clock_from_env(os.environ))
    server = uvicorn.Server(uvicorn_config(app, config, config.http_addr, lifespan="auto"))
    tune_gc()
    try:
        await server.serve()
    finally:
        if metrics_server is not None:
            await metrics_server.stop()


def uvicorn_config(
    app: EventsFastPath, config: Config, addr: Address, *, lifespan: Literal["on", "auto"]
) -> uvicorn.Config:
    """uvicorn's settings: the guarded protocol, keep-alive and shutdown times."""
    limits = HttpLimits(
        header_timeout=config.http_header_timeout.total_seconds(),
        body_timeout=config.http_body_timeout.total_seconds(),
        max_connections=config.http_max_connections,
    )
    return uvicorn.Config(
        app,
        host=addr.host,
        port=addr.port,
        http=guarded_protocol(limits),
        ws="none",  # no WebSocket routes: an Upgrade request is a plain HTTP request
        timeout_keep_alive=max(1, int(config.http_keepalive_timeout.total_seconds())),
        timeout_graceful_shutdown=3,
        log_level="warning",
        lifespan=lifespan,
    )


def serve() -> None:
    import uvloop

    config = with_service_token(load_config())
    configure_logging(config.log_level)
    setup_tracing("gateway")
    config.check_bind(config.http_addr, "TOCSIN_HTTP_ADDR")
    config.metrics_listen_addr("gateway")  # a refused metrics address stops it here
    uvloop.run(_serve(config))
