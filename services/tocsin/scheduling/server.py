"""The scheduling service process."""

from __future__ import annotations

from tocsin.runtime.config import Address
from tocsin.runtime.grpcserver import start_grpc_server
from tocsin.runtime.service import RunningService, ServiceDeps, serve_blocking
from tocsin.scheduling.servicer import SchedulingServicer
from tocsin.scheduling.store import SchedulingStore
from tocsin.v1 import scheduling_pb2_grpc

SERVICE_NAME = "tocsin.v1.SchedulingService"


async def create_server(
    deps: ServiceDeps, addr: Address | None = None
) -> tuple[RunningService, int]:
    servicer = SchedulingServicer(SchedulingStore(deps.redis), deps.clock)
    grpc_server = await start_grpc_server(
        deps.config,
        addr or deps.config.grpc_listen_addr("scheduling"),
        lambda server: scheduling_pb2_grpc.add_SchedulingServiceServicer_to_server(
            servicer, server
        ),
        [SERVICE_NAME],
    )
    return RunningService(grpc_server), grpc_server.port


def serve() -> None:
    serve_blocking("scheduling", create_server)
