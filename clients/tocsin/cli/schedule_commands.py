"""`tocsin oncall`, `tocsin shifts`, `tocsin override`: who is on call, and changing it."""

from __future__ import annotations

import argparse
import os
from typing import Any

from tocsin.cli.common import add_json_flag, rfc3339, run_with_client, warn_if_unpageable
from tocsin.cli.output import print_json, print_table
from tocsin.cli.output import rfc3339 as format_time
from tocsin.client.client import TocsinClient
from tocsin.client.endpoints import resolve_endpoints
from tocsin.client.feeds import feed_url
from tocsin.v1 import scheduling_pb2 as pb

_SOURCES = {pb.SHIFT_SOURCE_LAYER: "layer", pb.SHIFT_SOURCE_OVERRIDE: "override"}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    oncall = commands.add_parser("oncall", help="who is on call for a schedule")
    oncall.add_argument("schedule")
    oncall.add_argument("--at", type=rfc3339, help="RFC 3339 time (default: now)")
    add_json_flag(oncall)
    oncall.set_defaults(run=_oncall)

    shifts = commands.add_parser("shifts", help="the final shifts of a schedule in a window")
    shifts.add_argument("schedule")
    shifts.add_argument("--from", dest="start", type=rfc3339, required=True)
    shifts.add_argument("--to", dest="end", type=rfc3339, required=True)
    add_json_flag(shifts)
    shifts.set_defaults(run=_shifts)

    override = commands.add_parser("override", help="put a user on call for a while")
    override.add_argument("schedule")
    override.add_argument("--user", help="who covers")
    override.add_argument("--from", dest="start", type=rfc3339)
    override.add_argument("--to", dest="end", type=rfc3339)
    override.add_argument("--delete", metavar="ID", help="remove the override with this id")
    add_json_flag(override)
    override.set_defaults(run=_override)

    ical = commands.add_parser("ical-url", help="the calendar feed URL of a schedule or user")
    target = ical.add_mutually_exclusive_group(required=True)
    target.add_argument("--schedule")
    target.add_argument("--user")
    ical.set_defaults(run=_ical_url)


def _ical_url(args: argparse.Namespace) -> int:
    path = (
        f"/ical/schedules/{args.schedule}.ics" if args.schedule else f"/ical/users/{args.user}.ics"
    )
    public = os.environ.get("TOCSIN_PUBLIC_URL") or f"http://{resolve_endpoints().http}"
    print(feed_url(public, path, os.environ.get("TOCSIN_API_TOKEN")))
    return 0


def shift_json(shift: pb.Shift) -> dict[str, Any]:
    return {
        "schedule": shift.schedule_id,
        "user": shift.user_id,
        "start": format_time(shift.start),
        "end": format_time(shift.end),
        "source": _SOURCES.get(shift.source, "unknown"),
        "source_name": shift.source_name,
    }


def _oncall(args: argparse.Namespace) -> int:
    request = pb.WhoIsOnCallRequest(schedule_id=args.schedule)
    if args.at:
        request.at.FromDatetime(args.at)

    async def body(client: TocsinClient) -> pb.WhoIsOnCallResponse:
        return await client.scheduling.WhoIsOnCall(request)

    reply = run_with_client(body)
    shift = reply.shift if reply.HasField("shift") else None
    if args.json:
        result: dict[str, Any] = {"schedule": args.schedule, "user": None}
        if shift:
            result |= {k: v for k, v in shift_json(shift).items() if k != "schedule"}
        print_json(result)
    elif shift:
        print(
            f"{shift.user_id} is on call for {args.schedule} "
            f"({_SOURCES.get(shift.source)} {shift.source_name}, "
            f"{format_time(shift.start)} to {format_time(shift.end)})"
        )
    else:
        print(f"nobody is on call for {args.schedule}")
    return 0


def _shifts(args: argparse.Namespace) -> int:
    request = pb.ListShiftsRequest(schedule_id=args.schedule)
    request.start.FromDatetime(args.start)
    request.end.FromDatetime(args.end)

    async def body(client: TocsinClient) -> pb.ListShiftsResponse:
        return await client.scheduling.ListShifts(request)

    shifts = [shift_json(s) for s in run_with_client(body).shifts]
    if args.json:
        print_json(shifts)
    else:
        print_table(
            ["USER", "START", "END", "SOURCE"],
            [
                [s["user"], s["start"], s["end"], f"{s['source']} {s['source_name']}"]
                for s in shifts
            ],
        )
    return 0


def _override(args: argparse.Namespace) -> int:
    if args.delete:
        request_delete = pb.DeleteOverrideRequest(
            schedule_id=args.schedule, override_id=args.delete
        )

        async def delete(client: TocsinClient) -> None:
            await client.scheduling.DeleteOverride(request_delete)

        run_with_client(delete)
        print_json({"deleted": args.delete}) if args.json else print(
            f"deleted override {args.delete}"
        )
        return 0
    missing = [
        flag
        for flag, value in (("--user", args.user), ("--from", args.start), ("--to", args.end))
        if not value
    ]
    if missing:
        raise SystemExit(f"tocsin override: {', '.join(missing)} required (or --delete ID)")
    override = pb.Override(user_id=args.user)
    override.start.FromDatetime(args.start)
    override.end.FromDatetime(args.end)

    async def create(client: TocsinClient) -> pb.CreateOverrideResponse:
        reply = await client.scheduling.CreateOverride(
            pb.CreateOverrideRequest(schedule_id=args.schedule, override=override)
        )
        await warn_if_unpageable(client, args.user)
        return reply

    created = run_with_client(create).override
    result = {
        "id": created.id,
        "schedule": args.schedule,
        "user": created.user_id,
        "start": format_time(created.start),
        "end": format_time(created.end),
    }
    if args.json:
        print_json(result)
    else:
        print(
            f"override {created.id}: {created.user_id} covers {args.schedule} "
            f"from {result['start']} to {result['end']}"
        )
    return 0
