"""Console pages: Schedules (`/schedules`, `/schedules/<id>`): each schedule drawn as a
timeline of its final shifts for the next two weeks, with its overrides (add, delete) and
its iCal link.

The timeline is drawn on the server as one SVG per day of the viewer's time zone (their
user's `time_zone`, or `?tz=`), so no script is needed and a day is exactly as long as it
is there: the day clocks change has 23 or 25 hours and its bar is split by that many
(the hour marks are placed at local 00:00, 06:00, 12:00, 18:00 of that day). Rows: one per
layer (where that layer decides who is on call), one for overrides, and the final "On
call" row with "nobody" gaps; every piece carries its person's name as text, overrides
are dashed, and the same shifts are listed in a table, so nothing depends on colour. The
shifts are the scheduling service's (ListShifts), never recomputed here.

An override is entered in the time zone the page is drawn in (named beside the fields)
and sent with CreateOverride as the viewer: the scheduling service decides who may.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tocsin.client.feeds import feed_url
from tocsin.console.oncall import (
    all_schedules,
    now_and_next,
    shifts_of,
    source_label,
    ts_of,
    user_names,
)
from tocsin.console.web import Viewer, console_of, page, refused, render, see_other
from tocsin.v1 import scheduling_pb2

DAYS = 14
MARKS = (0, 6, 12, 18)
"""Local hours marked on every day's bar."""
LABEL_MIN_PERCENT = 9.0
"""A piece narrower than this share of its day shows its name only in its tooltip (and
in the table under the timeline)."""


@dataclass(frozen=True)
class Piece:
    user_id: str
    name: str
    x: float
    """Percent of the day's width."""
    width: float
    start: datetime
    end: datetime
    override: bool = False
    nobody: bool = False

    @property
    def labelled(self) -> bool:
        return self.width >= LABEL_MIN_PERCENT


@dataclass(frozen=True)
class Day:
    day: date
    start: datetime
    end: datetime
    hours: int
    rows: list[tuple[str, list[Piece]]]
    marks: list[tuple[int, float]]

    @property
    def dst(self) -> bool:
        return self.hours != 24


def zone_named(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name) if name else None
    except (ZoneInfoNotFoundError, ValueError):
        return None


async def viewer_zone(request: Request, viewer: Viewer) -> ZoneInfo:
    """`?tz=` when it names a zone, else the viewer's own, else UTC."""
    asked = zone_named(request.query_params.get("tz", ""))
    if asked is not None:
        return asked
    try:
        user = await viewer.client.scheduling.GetUser(
            scheduling_pb2.GetUserRequest(id=viewer.user_id)
        )
    except grpc.aio.AioRpcError:
        return ZoneInfo("UTC")
    return zone_named(user.user.time_zone) or ZoneInfo("UTC")


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def _piece(
    shift_start: datetime, shift_end: datetime, day: Day | tuple[datetime, datetime], **kw: Any
) -> Piece | None:
    start, end = day if isinstance(day, tuple) else (day.start, day.end)
    s, e = max(shift_start, start), min(shift_end, end)
    if s >= e:
        return None
    length = (end - start).total_seconds()
    return Piece(
        x=(s - start).total_seconds() / length * 100,
        width=(e - s).total_seconds() / length * 100,
        start=s,
        end=e,
        **kw,
    )


def draw_days(
    schedule: scheduling_pb2.Schedule,
    shifts: list[scheduling_pb2.Shift],
    names: dict[str, str],
    zone: ZoneInfo,
    first: date,
    days: int = DAYS,
) -> list[Day]:
    layer_names = [layer.name for layer in reversed(schedule.layers)]  # the winner on top
    drawn: list[Day] = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        start, end = local_midnight(day, zone), local_midnight(day + timedelta(days=1), zone)
        window = (start, end)
        rows: dict[str, list[Piece]] = {name: [] for name in layer_names}
        rows["overrides"] = []
        final: list[Piece] = []
        covered = start
        for shift in shifts:
            s, e = shift.start.ToDatetime(UTC), shift.end.ToDatetime(UTC)
            override = shift.source == scheduling_pb2.SHIFT_SOURCE_OVERRIDE
            name = names.get(shift.user_id, shift.user_id)
            piece = _piece(s, e, window, user_id=shift.user_id, name=name, override=override)
            if piece is None:
                continue
            if piece.start > covered:
                gap = _piece(covered, piece.start, window, user_id="", name="nobody", nobody=True)
                if gap is not None:
                    final.append(gap)
            covered = max(covered, piece.end)
            final.append(piece)
            row = "overrides" if override else source_label(shift)
            rows.setdefault(row, []).append(piece)
        if covered < end:
            gap = _piece(covered, end, window, user_id="", name="nobody", nobody=True)
            if gap is not None:
                final.append(gap)
        marks = []
        for hour in MARKS:
            moment = datetime.combine(day, time(hour), tzinfo=zone).astimezone(UTC)
            marks.append((hour, (moment - start).total_seconds() / (end - start).total_seconds()))
        drawn.append(
            Day(
                day=day,
                start=start,
                end=end,
                hours=round((end - start).total_seconds() / 3600),
                rows=[(f"layer {n}", rows[n]) for n in layer_names]
                + [("overrides", rows["overrides"]), ("on call", final)],
                marks=[(hour, fraction * 100) for hour, fraction in marks],
            )
        )
    return drawn


def _restriction_text(restriction: scheduling_pb2.Restriction) -> str:
    days = ", ".join(
        scheduling_pb2.Weekday.Name(d).removeprefix("WEEKDAY_").title()[:3]
        for d in restriction.days
    )
    return f"{days or 'every day'} {getattr(restriction, 'from')}-{restriction.to}"


@page
async def schedules_page(request: Request, viewer: Viewer) -> Response:
    client = viewer.client
    now = console_of(request).clock.now()
    names = await user_names(client)
    listed = []
    for schedule in await all_schedules(client):
        shifts = await shifts_of(client, schedule.id, now - timedelta(days=1), now + timedelta(1))
        current, _ = now_and_next(shifts, now)
        listed.append((schedule, current))
    return render(
        request, "schedules.html", {"schedules": listed, "names": names}, active="schedules"
    )


@page
async def schedule_page(request: Request, viewer: Viewer) -> Response:
    client = viewer.client
    console = console_of(request)
    schedule_id = request.path_params["schedule_id"]
    reply = await client.scheduling.GetSchedule(scheduling_pb2.GetScheduleRequest(id=schedule_id))
    schedule = reply.schedule
    zone = await viewer_zone(request, viewer)
    now = console.clock.now()
    first = now.astimezone(zone).date()
    names = await user_names(client)
    start = local_midnight(first, zone)
    end = local_midnight(first + timedelta(days=DAYS), zone)
    shifts = await shifts_of(client, schedule.id, start, end)
    current, upcoming = now_and_next(shifts, now)
    path = f"/ical/schedules/{schedule.id}.ics"
    overrides = sorted(
        (o for o in schedule.overrides if o.end.ToDatetime(UTC) > now),
        key=lambda o: o.start.ToDatetime(UTC),
    )
    return render(
        request,
        "schedule.html",
        {
            "schedule": schedule,
            "days": draw_days(schedule, shifts, names, zone, first),
            "shifts": shifts,
            "names": names,
            "zone": zone.key,
            "now_run": current,
            "next_run": upcoming,
            "overrides": overrides,
            "restrictions": {
                layer.name: [_restriction_text(r) for r in layer.restrictions]
                for layer in schedule.layers
            },
            "ical": feed_url(console.config.public_url, path, console.config.api_token),
            "source_label": source_label,
            "local": lambda ts: ts.ToDatetime(UTC).astimezone(zone).strftime("%a %d %b %H:%M"),
            "can_override": viewer.can_respond,
            "default_from": now.astimezone(zone).strftime("%Y-%m-%dT%H:%M"),
            "default_to": (now + timedelta(hours=8)).astimezone(zone).strftime("%Y-%m-%dT%H:%M"),
        },
        active="schedules",
    )


def _local_moment(text: str, zone: ZoneInfo, field: str) -> datetime | str:
    """A datetime-local value in `zone` as UTC, or the reason it is not one."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return f"{field}: expected a date and time like 2026-11-27T18:00, got {text[:40]!r}"
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(UTC)


@page
async def create_override(request: Request, viewer: Viewer) -> Response:
    schedule_id = request.path_params["schedule_id"]
    form = await request.form()
    zone = zone_named(str(form.get("tz", ""))) or ZoneInfo("UTC")
    user = str(form.get("user", ""))
    start = _local_moment(str(form.get("from", "")), zone, "from")
    end = _local_moment(str(form.get("to", "")), zone, "to")
    for problem in (start, end):
        if isinstance(problem, str):
            return refused(request, problem)
    assert isinstance(start, datetime) and isinstance(end, datetime)
    override = scheduling_pb2.Override(user_id=user, start=ts_of(start), end=ts_of(end))
    await viewer.client.scheduling.CreateOverride(
        scheduling_pb2.CreateOverrideRequest(schedule_id=schedule_id, override=override)
    )
    back = f"/schedules/{schedule_id}?tz={zone.key}"
    return see_other(
        request, back, f"Override added: {user} on call from {start:%Y-%m-%d %H:%M} UTC"
    )


@page
async def delete_override(request: Request, viewer: Viewer) -> Response:
    schedule_id = request.path_params["schedule_id"]
    override_id = request.path_params["override_id"]
    await viewer.client.scheduling.DeleteOverride(
        scheduling_pb2.DeleteOverrideRequest(schedule_id=schedule_id, override_id=override_id)
    )
    return see_other(request, f"/schedules/{schedule_id}", "Override deleted")


routes: list[BaseRoute] = [
    Route("/schedules", schedules_page, methods=["GET"]),
    Route("/schedules/{schedule_id}", schedule_page, methods=["GET"]),
    Route("/schedules/{schedule_id}/overrides", create_override, methods=["POST"]),
    Route(
        "/schedules/{schedule_id}/overrides/{override_id}/delete",
        delete_override,
        methods=["POST"],
    ),
]
