"""Console page: On call (`/oncall`): every schedule and escalation policy, who is on call
now, who is next, and when that changes.

Everything comes from the scheduling service's final shifts (ListShifts over the next two
weeks, so layers, restrictions, overrides and DST are the service's answer, not
recomputed here) and the escalation policies (ListPolicies), called as the viewer. A
schedule level of a policy names whoever that schedule has now; a user level names the
user. "Until" is the end of the current person's run of shifts (consecutive shifts of one
person, say a layer shift then an override of the same person, are one run).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tocsin.client.client import TocsinClient
from tocsin.console.web import Viewer, all_items, console_of, page, render
from tocsin.v1 import escalation_pb2, scheduling_pb2

HORIZON = timedelta(days=14)


@dataclass(frozen=True)
class Run:
    """One person's uninterrupted time on call (one or more adjacent final shifts)."""

    user_id: str
    start: datetime
    end: datetime
    sources: tuple[str, ...]


@dataclass(frozen=True)
class OnCall:
    schedule: scheduling_pb2.Schedule
    now: Run | None
    next: Run | None
    """Who comes after `now` (or, with nobody on call now, who is on call first)."""


def _dt(ts: Timestamp) -> datetime:
    return ts.ToDatetime(UTC)


def ts_of(moment: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment.astimezone(UTC).replace(tzinfo=None))
    return ts


def source_label(shift: scheduling_pb2.Shift) -> str:
    """What produced a shift, as a person reads it: the layer's name, or "override"."""
    if shift.source == scheduling_pb2.SHIFT_SOURCE_OVERRIDE:
        return "override"
    return shift.source_name or "layer"


def runs(shifts: list[scheduling_pb2.Shift]) -> list[Run]:
    """Adjacent shifts of the same person merged, in order."""
    merged: list[Run] = []
    for shift in shifts:
        start, end = _dt(shift.start), _dt(shift.end)
        source = source_label(shift)
        last = merged[-1] if merged else None
        if last is not None and last.user_id == shift.user_id and last.end == start:
            sources = last.sources + ((source,) if source not in last.sources else ())
            merged[-1] = Run(last.user_id, last.start, end, sources)
        else:
            merged.append(Run(shift.user_id, start, end, (source,)))
    return merged


def now_and_next(
    shifts: list[scheduling_pb2.Shift], now: datetime
) -> tuple[Run | None, Run | None]:
    found = runs(shifts)
    current = next((r for r in found if r.start <= now < r.end), None)
    after = current.end if current is not None else now
    upcoming = next((r for r in found if r.start >= after), None)
    return current, upcoming


async def all_schedules(client: TocsinClient) -> list[scheduling_pb2.Schedule]:
    return await all_items(
        client.scheduling.ListSchedules, scheduling_pb2.ListSchedulesRequest, "schedules"
    )


async def user_names(client: TocsinClient) -> dict[str, str]:
    users = await all_items(client.scheduling.ListUsers, scheduling_pb2.ListUsersRequest, "users")
    return {u.id: u.name or u.id for u in users}


async def shifts_of(
    client: TocsinClient, schedule_id: str, start: datetime, end: datetime
) -> list[scheduling_pb2.Shift]:
    reply = await client.scheduling.ListShifts(
        scheduling_pb2.ListShiftsRequest(
            schedule_id=schedule_id, start=ts_of(start), end=ts_of(end)
        )
    )
    return list(reply.shifts)


async def _policies(client: TocsinClient) -> list[escalation_pb2.EscalationPolicy]:
    return await all_items(
        client.escalation.ListPolicies, escalation_pb2.ListPoliciesRequest, "policies"
    )


def _level_rows(
    policy: escalation_pb2.EscalationPolicy, oncall: dict[str, OnCall]
) -> list[dict[str, Any]]:
    rows = []
    for number, level in enumerate(policy.levels, start=1):
        targets = []
        for target in level.targets:
            if target.HasField("schedule_id"):
                found = oncall.get(target.schedule_id)
                targets.append({"schedule": target.schedule_id, "oncall": found})
            else:
                targets.append({"user": target.user_id})
        rows.append(
            {
                "number": number,
                "delay_minutes": level.delay.seconds // 60,
                "round_robin": level.strategy == escalation_pb2.LEVEL_STRATEGY_ROUND_ROBIN,
                "targets": targets,
            }
        )
    return rows


@page
async def oncall_page(request: Request, viewer: Viewer) -> Response:
    client = viewer.client
    now = console_of(request).clock.now()
    names = await user_names(client)
    oncall: dict[str, OnCall] = {}
    for schedule in await all_schedules(client):
        shifts = await shifts_of(client, schedule.id, now - timedelta(days=1), now + HORIZON)
        current, upcoming = now_and_next(shifts, now)
        oncall[schedule.id] = OnCall(schedule, current, upcoming)
    policies = [
        {"policy": policy, "levels": _level_rows(policy, oncall)}
        for policy in await _policies(client)
    ]
    return render(
        request,
        "oncall.html",
        {
            "schedules": list(oncall.values()),
            "policies": policies,
            "names": names,
            "now": now,
            "horizon_days": HORIZON.days,
        },
        active="oncall",
    )


routes: list[BaseRoute] = [Route("/oncall", oncall_page, methods=["GET"])]
