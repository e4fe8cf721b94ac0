"""Heartbeat pings: `POST` or `GET` `/v1/heartbeat/{token}` resets the monitor's timer.

The token in the URL is the credential (cron jobs and backup scripts send no headers), so
it is never logged; the gateway passes it to IncidentService.PingHeartbeat with its own
service credential. 200 `{"monitor": id, "recovered": bool}`; 404 for a token no monitor
has; 503 when the incidents service cannot be reached (the sender should retry).
"""

from __future__ import annotations

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tocsin.client.client import TocsinClient
from tocsin.v1 import routing_pb2

_DEADLINE_S = 10.0


async def ping(request: Request) -> Response:
    client: TocsinClient = request.app.state.client
    token = request.path_params["token"]
    try:
        reply = await client.incidents.PingHeartbeat(
            routing_pb2.PingHeartbeatRequest(token=token), timeout=_DEADLINE_S
        )
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            return JSONResponse({"error": "no heartbeat monitor has this token"}, 404)
        return JSONResponse({"error": f"cannot record the ping now: {error.code().name}"}, 503)
    return JSONResponse({"monitor": reply.monitor_id, "recovered": reply.recovered})


routes = [Route("/v1/heartbeat/{token}", ping, methods=["GET", "POST"])]
