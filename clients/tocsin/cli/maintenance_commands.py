"""`tocsin maintenance list|add|start|end|delete`: maintenance windows, during which a
service's alerts are recorded (`tocsin suppressed`) but page nobody. Scheduled windows
are also in `tocsin apply` (`maintenance_windows:`)."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from google.protobuf.duration_pb2 import Duration

from tocsin.cli.common import add_json_flag, rfc3339, run_with_client
from tocsin.cli.incident_commands import duration
from tocsin.cli.output import print_json, print_table
from tocsin.cli.output import rfc3339 as show_time
from tocsin.v1 import urgency_pb2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "maintenance", help="maintenance windows: alerts recorded, nobody paged"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="windows in progress and ahead (--all: past too)")
    listing.add_argument("--service", default="", help="only windows on this service")
    listing.add_argument("--all", action="store_true", help="also windows that are over")
    add_json_flag(listing)
    listing.set_defaults(run=_list)

    add = actions.add_parser("add", help="schedule a window (one-off, or recurring with --rrule)")
    add.add_argument("--id", default="", help="window id (generated when absent)")
    add.add_argument(
        "--service", action="append", required=True, help="a service it covers (repeatable)"
    )
    add.add_argument(
        "--start", type=rfc3339, required=True, help="RFC 3339, e.g. 2026-12-06T02:00:00+00:00"
    )
    add.add_argument("--duration", type=duration, required=True, help="each occurrence: 30m, 2h")
    add.add_argument("--rrule", default="", help='RFC 5545 RRULE, e.g. "FREQ=WEEKLY;BYDAY=SU"')
    add.add_argument("--time-zone", default="", help="zone the recurrence keeps (default UTC)")
    add.add_argument("--description", default="", help="why")
    add_json_flag(add)
    add.set_defaults(run=_add)

    start = actions.add_parser("start", help="start a window now on one or more services")
    start.add_argument(
        "--service", action="append", required=True, help="a service it covers (repeatable)"
    )
    start.add_argument("--duration", type=duration, default=timedelta(hours=1), help="default 1h")
    start.add_argument("--id", default="", help="window id (generated when absent)")
    start.add_argument("--description", default="", help="why")
    add_json_flag(start)
    start.set_defaults(run=_start)

    end = actions.add_parser("end", help="end the window's occurrence in progress now")
    end.add_argument("id")
    add_json_flag(end)
    end.set_defaults(run=_end)

    delete = actions.add_parser("delete", help="delete a window")
    delete.add_argument("id")
    delete.set_defaults(run=_delete)


def window_json(window: urgency_pb2.MaintenanceWindow) -> dict[str, Any]:
    return {
        "id": window.id,
        "services": list(window.service_ids),
        "start": show_time(window.start),
        "duration_s": window.duration.seconds,
        "rrule": window.rrule or None,
        "time_zone": window.time_zone or None,
        "description": window.description,
        "active": window.active,
        "next_start": show_time(window.next_start) if window.HasField("next_start") else None,
        "next_end": show_time(window.next_end) if window.HasField("next_end") else None,
        "ended_at": show_time(window.ended_at) if window.HasField("ended_at") else None,
        "alerts_recorded": window.alerts_recorded,
    }


def _show(window: urgency_pb2.MaintenanceWindow, json: bool, verb: str) -> int:
    data = window_json(window)
    if json:
        print_json(data)
        return 0
    when = f"until {data['next_end']}" if window.active else f"from {data['next_start']}"
    print(f"{verb} maintenance window {window.id} on {', '.join(window.service_ids)} {when}")
    return 0


def _list(args: argparse.Namespace) -> int:
    request = urgency_pb2.ListMaintenanceWindowsRequest(
        service_id=args.service, include_past=args.all
    )
    reply = run_with_client(lambda c: c.incidents.ListMaintenanceWindows(request))
    data = [window_json(w) for w in reply.windows]
    if args.json:
        print_json(data)
        return 0
    if not data:
        print("no maintenance windows")
        return 0
    print_table(
        ["ID", "SERVICES", "STATE", "FROM", "UNTIL", "REPEATS", "ALERTS", "DESCRIPTION"],
        [
            [
                w["id"],
                ",".join(w["services"]),
                "in progress" if w["active"] else ("ahead" if w["next_start"] else "over"),
                w["next_start"] or "-",
                w["next_end"] or "-",
                w["rrule"] or "-",
                str(w["alerts_recorded"]),
                w["description"],
            ]
            for w in data
        ],
    )
    return 0


def _window(args: argparse.Namespace) -> urgency_pb2.MaintenanceWindow:
    return urgency_pb2.MaintenanceWindow(
        id=args.id,
        service_ids=args.service,
        duration=Duration(seconds=int(args.duration.total_seconds())),
        description=args.description,
    )


def _add(args: argparse.Namespace) -> int:
    window = _window(args)
    window.start.FromDatetime(args.start)
    window.rrule = args.rrule
    window.time_zone = args.time_zone
    request = urgency_pb2.CreateMaintenanceWindowRequest(window=window)
    reply = run_with_client(lambda c: c.incidents.CreateMaintenanceWindow(request))
    return _show(reply.window, args.json, "Scheduled")


def _start(args: argparse.Namespace) -> int:
    request = urgency_pb2.CreateMaintenanceWindowRequest(window=_window(args))  # start: now
    reply = run_with_client(lambda c: c.incidents.CreateMaintenanceWindow(request))
    return _show(reply.window, args.json, "Started")


def _end(args: argparse.Namespace) -> int:
    request = urgency_pb2.EndMaintenanceWindowRequest(id=args.id)
    reply = run_with_client(lambda c: c.incidents.EndMaintenanceWindow(request))
    if args.json:
        print_json({**window_json(reply.window), "changed": reply.changed})
    elif reply.changed:
        print(f"Ended maintenance window {args.id}: alerts page again")
    else:
        print(f"Maintenance window {args.id} was not in progress; nothing changed")
    return 0


def _delete(args: argparse.Namespace) -> int:
    request = urgency_pb2.DeleteMaintenanceWindowRequest(id=args.id)
    run_with_client(lambda c: c.incidents.DeleteMaintenanceWindow(request))
    print(f"Deleted maintenance window {args.id}")
    return 0
