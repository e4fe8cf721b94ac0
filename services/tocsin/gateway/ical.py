"""Calendar feeds: `GET /ical/schedules/{id}.ics` and `GET /ical/users/{id}.ics`.

One VEVENT per final shift, from 14 days back to 180 days ahead, built by the scheduling
domain's iCal writer from the shifts the scheduling service answers with. Calendar apps
cannot send a bearer token, so when TOCSIN_API_TOKEN is set each feed URL carries its own
`?token=`, an HMAC of the path under the API token (`tocsin ical-url` prints the URL): sharing
one calendar link does not share the API token or any other feed.
"""

from __future__ import annotations

import hmac
from datetime import timedelta

import grpc
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tocsin.client.client import TocsinClient
from tocsin.client.feeds import feed_token
from tocsin.scheduling.convert import timestamp, to_domain_schedule, to_domain_shift
from tocsin.scheduling.ical import schedule_calendar, user_calendar
from tocsin.scheduling.model import ScheduleShift
from tocsin.v1 import scheduling_pb2 as pb

PAST = timedelta(days=14)
FUTURE = timedelta(days=180)
_CALENDAR = "text/calendar; charset=utf-8"


def _authorised(request: Request) -> bool:
    api_token = request.app.state.config.api_token
    if not api_token:
        return True
    given = request.query_params.get("token", "")
    return hmac.compare_digest(given, feed_token(api_token, request.url.path))


async def schedule_feed(request: Request) -> Response:
    if not _authorised(request):
        return PlainTextResponse("missing or wrong ?token= for this feed\n", status_code=403)
    client: TocsinClient = request.app.state.client
    schedule_id = request.path_params["schedule_id"]
    now = request.app.state.clock.now()
    try:
        schedule = (
            await client.scheduling.GetSchedule(pb.GetScheduleRequest(id=schedule_id))
        ).schedule
        shifts = await client.scheduling.ListShifts(
            pb.ListShiftsRequest(
                schedule_id=schedule_id, start=timestamp(now - PAST), end=timestamp(now + FUTURE)
            )
        )
    except grpc.aio.AioRpcError as error:
        return _error(error)
    body = schedule_calendar(
        to_domain_schedule(schedule),
        [to_domain_shift(s) for s in shifts.shifts],
        generated_at=now,
    )
    return Response(body, media_type=_CALENDAR)


async def user_feed(request: Request) -> Response:
    if not _authorised(request):
        return PlainTextResponse("missing or wrong ?token= for this feed\n", status_code=403)
    client: TocsinClient = request.app.state.client
    user_id = request.path_params["user_id"]
    now = request.app.state.clock.now()
    try:
        user = (await client.scheduling.GetUser(pb.GetUserRequest(id=user_id))).user
        reply = await client.scheduling.ListUserShifts(
            pb.ListUserShiftsRequest(
                user_id=user_id, start=timestamp(now - PAST), end=timestamp(now + FUTURE)
            )
        )
    except grpc.aio.AioRpcError as error:
        return _error(error)
    names = await _schedule_names(client, {s.schedule_id for s in reply.shifts})
    shifts = [
        ScheduleShift(s.schedule_id, names.get(s.schedule_id, s.schedule_id), to_domain_shift(s))
        for s in reply.shifts
    ]
    body = user_calendar(user_id, shifts, generated_at=now, name=user.name or user_id)
    return Response(body, media_type=_CALENDAR)


async def _schedule_names(client: TocsinClient, ids: set[str]) -> dict[str, str]:
    names = {}
    for schedule_id in sorted(ids):
        reply = await client.scheduling.GetSchedule(pb.GetScheduleRequest(id=schedule_id))
        names[schedule_id] = reply.schedule.name or schedule_id
    return names


def _error(error: grpc.aio.AioRpcError) -> Response:
    if error.code() == grpc.StatusCode.NOT_FOUND:
        return PlainTextResponse(f"{error.details()}\n", status_code=404)
    return PlainTextResponse("scheduling is unavailable\n", status_code=503)


routes = [
    Route("/ical/schedules/{schedule_id}.ics", schedule_feed, methods=["GET"]),
    Route("/ical/users/{user_id}.ics", user_feed, methods=["GET"]),
]
