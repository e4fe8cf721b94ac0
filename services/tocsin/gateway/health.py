"""`GET /healthz`: 200 once every gRPC service reports SERVING, else 503 naming the rest.

`GET /readyz` (the gateway's Kubernetes readiness): the same for only the services the
gateway calls (scheduling, incidents, notification). Clients call only replicas that
report SERVING, so a service counts as SERVING while at least one replica does.

A service reports NOT_SERVING not only while it stops: also while one of its background
loops (timer workers, lease heartbeats, consumers, sweeps, the auditor) keeps failing or
hangs, or while its Redis does not answer (runtime/loops.py). So `/healthz` says 503 when
Redis is down or workers are stuck, and 200 again once they recover.
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tocsin.client.client import TocsinClient

_SERVICE_NAMES = {
    "scheduling": "tocsin.v1.SchedulingService",
    "incidents": "tocsin.v1.IncidentService",
    "escalation": "tocsin.v1.EscalationService",
    "notification": "tocsin.v1.NotificationService",
    "history": "tocsin.v1.HistoryService",
}


async def _status(client: TocsinClient, name: str) -> str:
    stub = health_pb2_grpc.HealthStub(client.channel(name))
    try:
        reply = await stub.Check(
            health_pb2.HealthCheckRequest(service=_SERVICE_NAMES[name]), timeout=1.0
        )
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


_GATEWAY_CALLS = ("scheduling", "incidents", "notification")


async def healthz(request: Request) -> JSONResponse:
    return await _report(request, list(_SERVICE_NAMES))


async def readyz(request: Request) -> JSONResponse:
    return await _report(request, list(_GATEWAY_CALLS))


async def _report(request: Request, names: list[str]) -> JSONResponse:
    client: TocsinClient = request.app.state.client
    statuses = dict(
        zip(names, await asyncio.gather(*(_status(client, n) for n in names)), strict=True)
    )
    failing = sorted(name for name, status in statuses.items() if status != "SERVING")
    body: dict[str, object] = {
        "status": "ok" if not failing else "unavailable",
        "services": statuses,
    }
    if failing:
        body["not_serving"] = failing
    return JSONResponse(body, status_code=503 if failing else 200)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
