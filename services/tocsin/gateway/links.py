"""`GET /i/<number>?s=<signature>`: the short link a page carries (tocsin.client.links).

A link whose signature matches its number is answered with a redirect (303) to the
console's page of that incident, `/incidents/<id>`, which asks for a sign-in like every
console page: the signature only proves that tocsin made the link, it opens nothing by
itself. A made-up or altered link, or one whose incident has expired, is a 404 that says
no more than that.
"""

from __future__ import annotations

import grpc
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from tocsin.client.client import TocsinClient
from tocsin.client.links import LINK_PREFIX, valid_signature
from tocsin.runtime.auth import service_token
from tocsin.v1 import incidents_pb2

_NOT_FOUND = "no such incident link\n"


async def incident_link(request: Request) -> Response:
    number: int = request.path_params["number"]
    signature = request.query_params.get("s", "")
    if number < 1 or not valid_signature(
        service_token(request.app.state.config), number, signature
    ):
        return PlainTextResponse(_NOT_FOUND, status_code=404)
    client: TocsinClient = request.app.state.client
    try:
        reply = await client.incidents.GetIncident(
            incidents_pb2.GetIncidentRequest(incident_id=f"#{number}")
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return PlainTextResponse(_NOT_FOUND, status_code=404)
        return PlainTextResponse("incidents are unavailable\n", status_code=503)
    return RedirectResponse(f"/incidents/{reply.incident.id}", status_code=303)


routes = [Route(LINK_PREFIX + "{number:int}", incident_link, methods=["GET"])]
