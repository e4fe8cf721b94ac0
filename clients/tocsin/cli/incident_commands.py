"""`tocsin trigger|ack|resolve|snooze|reassign|note|incidents|incident`: incidents by hand."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from tocsin.cli.common import (
    add_json_flag,
    cli_actor,
    in_range,
    incident_label,
    incident_number,
    run_with_client,
    warn_if_unpageable,
)
from tocsin.cli.output import print_json, print_table
from tocsin.cli.output import rfc3339 as format_time
from tocsin.client.client import TocsinClient
from tocsin.v1 import common_pb2, incidents_pb2

STATUSES = {
    "triggered": incidents_pb2.INCIDENT_STATUS_TRIGGERED,
    "acknowledged": incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED,
    "resolved": incidents_pb2.INCIDENT_STATUS_RESOLVED,
}
SEVERITIES = {
    "critical": common_pb2.SEVERITY_CRITICAL,
    "error": common_pb2.SEVERITY_ERROR,
    "warning": common_pb2.SEVERITY_WARNING,
    "info": common_pb2.SEVERITY_INFO,
}
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PAGE = 500


def duration(text: str) -> timedelta:
    """argparse type: `30m`, `2h`, `1d`, or combined like `1h30m`."""
    parts = _DURATION.findall(text)
    if not parts or "".join(a + u for a, u in parts) != text:
        raise argparse.ArgumentTypeError(f"expected a duration like 30m, 2h or 1h30m, got {text!r}")
    try:
        return timedelta(seconds=sum(int(amount) * _UNIT_S[unit] for amount, unit in parts))
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} is too long") from None


def since(text: str) -> datetime:
    """argparse type: a duration ago (`2h`) or an RFC 3339 time."""
    if _DURATION.match(text):
        try:
            return datetime.now(UTC) - duration(text)
        except OverflowError:
            raise argparse.ArgumentTypeError(f"{text!r} reaches back too far") from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 2h or an RFC 3339 time, got {text!r}"
        ) from error
    return in_range(moment if moment.tzinfo else moment.replace(tzinfo=UTC), text)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    trigger = commands.add_parser("trigger", help="raise an alert on a service")
    trigger.add_argument("service", help="service id")
    trigger.add_argument("--summary", required=True)
    trigger.add_argument("--dedup-key", default="", help="joins the open incident with this key")
    trigger.add_argument("--severity", choices=SEVERITIES, default="critical")
    trigger.add_argument("--source", default="", help="the affected system")
    trigger.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only the incident number, e.g. n=$(tocsin trigger ... -q); tocsin ack $n",
    )
    add_json_flag(trigger)
    trigger.set_defaults(run=_trigger)

    for name, verb, action in (
        ("ack", "acknowledge an incident (paging stops)", _ack),
        ("resolve", "resolve an incident", _resolve),
    ):
        command = commands.add_parser(name, help=verb)
        command.add_argument("id", type=incident_number, help="incident number (18 or #18)")
        add_json_flag(command)
        command.set_defaults(run=action)

    snooze = commands.add_parser("snooze", help="acknowledge for a while, then page again")
    snooze.add_argument("id", type=incident_number, help="incident number (18 or #18)")
    snooze.add_argument("duration", type=duration, help="e.g. 30m, 2h")
    add_json_flag(snooze)
    snooze.set_defaults(run=_snooze)

    reassign = commands.add_parser("reassign", help="hand an incident to a user or a policy")
    reassign.add_argument("id", type=incident_number, help="incident number (18 or #18)")
    target = reassign.add_mutually_exclusive_group(required=True)
    target.add_argument("--user")
    target.add_argument("--policy", help="escalation policy id")
    add_json_flag(reassign)
    reassign.set_defaults(run=_reassign)

    note = commands.add_parser("note", help="add a note to an incident's timeline")
    note.add_argument("id", type=incident_number, help="incident number (18 or #18)")
    note.add_argument("text")
    add_json_flag(note)
    note.set_defaults(run=_note)

    listing = commands.add_parser("incidents", help="list incidents, newest first")
    listing.add_argument("--service", action="append", default=[], help="repeatable")
    listing.add_argument("--status", action="append", default=[], choices=STATUSES)
    listing.add_argument("--severity", action="append", default=[], choices=SEVERITIES)
    listing.add_argument("--since", type=since, help="e.g. 24h, or an RFC 3339 time")
    listing.add_argument("--search", default="", help="text in the summary")
    listing.add_argument("--limit", type=int, default=50)
    add_json_flag(listing)
    listing.set_defaults(run=_incidents)

    show = commands.add_parser("incident", help="one incident with its timeline")
    show.add_argument("id", type=incident_number, help="incident number (18 or #18)")
    add_json_flag(show)
    show.set_defaults(run=_incident)


# JSON shapes


def _name(value: int, names: Mapping[str, int]) -> str:
    return next((name for name, number in names.items() if number == value), "unknown")


def _actor(actor: common_pb2.Actor) -> str | None:
    if not (actor.user_id or actor.display or actor.channel):
        return None
    who = actor.user_id or actor.display or "tocsin"
    channel = common_pb2.Channel.Name(actor.channel).removeprefix("CHANNEL_").lower()
    return f"{who} ({channel})"


def _assignment(assignment: incidents_pb2.Assignment) -> dict[str, str] | None:
    if assignment.HasField("user_id"):
        return {"user": assignment.user_id}
    if assignment.HasField("escalation_policy_id"):
        return {"escalation_policy": assignment.escalation_policy_id}
    return None


def incident_json(incident: incidents_pb2.Incident) -> dict[str, Any]:
    return {
        "number": incident.number,
        "id": incident.id,
        "service": incident.service_id,
        "status": _name(incident.status, STATUSES),
        "severity": _name(incident.severity, SEVERITIES),
        "summary": incident.summary,
        "source": incident.source,
        "dedup_key": incident.dedup_key,
        "alert_count": incident.alert_count,
        "assignment": _assignment(incident.assignment),
        "created_at": format_time(incident.created_at),
        "updated_at": format_time(incident.updated_at),
        "last_alert_at": format_time(incident.last_alert_at),
        "acknowledged_at": format_time(incident.acknowledged_at),
        "acknowledged_by": _actor(incident.acknowledged_by),
        "resolved_at": format_time(incident.resolved_at),
        "resolved_by": _actor(incident.resolved_by),
        "snoozed_until": format_time(incident.snoozed_until),
        "urgency": "low" if incident.urgency == common_pb2.URGENCY_LOW else "high",
        "urgency_reason": incident.urgency_reason,
        "page_at": format_time(incident.page_at),
        "ack_timeout_at": format_time(incident.ack_timeout_at),
        "version": incident.version,
    }


def entry_json(entry: incidents_pb2.TimelineEntry) -> dict[str, Any]:
    return {
        "at": format_time(entry.at),
        "kind": incidents_pb2.TimelineKind.Name(entry.kind).removeprefix("TIMELINE_KIND_").lower(),
        "message": entry.message,
        "actor": _actor(entry.actor),
        "attributes": dict(entry.attributes),
    }


def alert_json(alert: incidents_pb2.Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "summary": alert.summary,
        "severity": _name(alert.severity, SEVERITIES),
        "source": alert.source,
        "received_at": format_time(alert.received_at),
        "links": [{"href": link.href, "text": link.text} for link in alert.links],
    }


# Commands


def _print_incident(args: argparse.Namespace, incident: incidents_pb2.Incident, line: str) -> int:
    if args.json:
        print_json(incident_json(incident))
    else:
        print(line)
    return 0


def _trigger(args: argparse.Namespace) -> int:
    request = incidents_pb2.TriggerRequest(
        service_id=args.service,
        summary=args.summary,
        dedup_key=args.dedup_key,
        severity=SEVERITIES[args.severity],
        source=args.source,
        actor=cli_actor(),
    )
    reply: incidents_pb2.TriggerResponse = run_with_client(lambda c: c.incidents.Trigger(request))
    incident = reply.incident
    if reply.suppressed_by:  # an event rule: recorded, nobody paged (`tocsin suppressed`)
        if args.json:
            print_json({"suppressed_by": reply.suppressed_by, "dedup_key": reply.dedup_key})
        elif not args.quiet:
            print(f"Suppressed by event rule {reply.suppressed_by}: recorded, nobody paged")
        return 0
    if args.json:
        print_json({**incident_json(incident), "created": reply.created})
        return 0
    label = incident_label(incident)
    if args.quiet:
        print(incident.number or incident.id)
    elif reply.created:
        print(f"Opened incident {label}: {incident.summary} (dedup key {reply.dedup_key})")
    else:
        print(f"Alert joined incident {label} ({incident.alert_count} alerts)")
    return 0


def _ack(args: argparse.Namespace) -> int:
    request = incidents_pb2.AcknowledgeRequest(incident_id=args.id, actor=cli_actor())
    reply: incidents_pb2.AcknowledgeResponse = run_with_client(
        lambda c: c.incidents.Acknowledge(request)
    )
    label = incident_label(reply.incident)
    line = f"Acknowledged {label}" if reply.changed else f"{label} was already acknowledged"
    return _print_incident(args, reply.incident, line)


def _resolve(args: argparse.Namespace) -> int:
    request = incidents_pb2.ResolveRequest(incident_id=args.id, actor=cli_actor())
    reply: incidents_pb2.ResolveResponse = run_with_client(lambda c: c.incidents.Resolve(request))
    label = incident_label(reply.incident)
    line = f"Resolved {label}" if reply.changed else f"{label} was already resolved"
    return _print_incident(args, reply.incident, line)


def _snooze(args: argparse.Namespace) -> int:
    request = incidents_pb2.SnoozeRequest(incident_id=args.id, actor=cli_actor())
    request.duration.FromTimedelta(args.duration)
    reply: incidents_pb2.SnoozeResponse = run_with_client(lambda c: c.incidents.Snooze(request))
    until = format_time(reply.incident.snoozed_until)
    return _print_incident(
        args, reply.incident, f"Snoozed {incident_label(reply.incident)} until {until}"
    )


def _reassign(args: argparse.Namespace) -> int:
    assignment = (
        incidents_pb2.Assignment(user_id=args.user)
        if args.user
        else incidents_pb2.Assignment(escalation_policy_id=args.policy)
    )
    request = incidents_pb2.ReassignRequest(
        incident_id=args.id, assignment=assignment, actor=cli_actor()
    )

    async def reassign(client: TocsinClient) -> incidents_pb2.ReassignResponse:
        reply = await client.incidents.Reassign(request)
        if args.user:
            await warn_if_unpageable(client, args.user)
        return reply

    reply = run_with_client(reassign)
    target = f"user {args.user}" if args.user else f"escalation policy {args.policy}"
    return _print_incident(
        args, reply.incident, f"Reassigned {incident_label(reply.incident)} to {target}"
    )


def _note(args: argparse.Namespace) -> int:
    request = incidents_pb2.AddNoteRequest(incident_id=args.id, text=args.text, actor=cli_actor())
    reply: incidents_pb2.AddNoteResponse = run_with_client(lambda c: c.incidents.AddNote(request))
    if args.json:
        print_json(entry_json(reply.entry))
    else:
        print(f"Noted on {args.id}")
    return 0


def _incidents(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise SystemExit("tocsin incidents: --limit must be at least 1")
    request = incidents_pb2.ListIncidentsRequest(
        service_ids=args.service,
        statuses=[STATUSES[s] for s in args.status],
        severities=[SEVERITIES[s] for s in args.severity],
        summary_contains=args.search,
        page_size=min(args.limit, _PAGE),
    )
    if args.since:
        request.created_after.FromDatetime(args.since)

    async def body(client: TocsinClient) -> list[incidents_pb2.Incident]:
        found: list[incidents_pb2.Incident] = []
        while len(found) < args.limit:
            reply = await client.incidents.ListIncidents(request)
            found += reply.incidents
            if not reply.next_page_token:
                break
            request.page_token = reply.next_page_token
        return found[: args.limit]

    incidents = run_with_client(body)
    if args.json:
        print_json([incident_json(incident) for incident in incidents])
        return 0
    print_table(
        ["#", "STATUS", "SEVERITY", "SERVICE", "ALERTS", "CREATED", "SUMMARY"],
        (
            [
                row["number"] or f"id {row['id']}",
                row["status"],
                row["severity"],
                row["service"],
                row["alert_count"],
                row["created_at"],
                _short(row["summary"]),
            ]
            for row in map(incident_json, incidents)
        ),
    )
    return 0


def _incident(args: argparse.Namespace) -> int:
    request = incidents_pb2.GetIncidentRequest(
        incident_id=args.id, include_alerts=True, include_timeline=True
    )
    reply: incidents_pb2.GetIncidentResponse = run_with_client(
        lambda c: c.incidents.GetIncident(request)
    )
    incident = reply.incident
    shown = {
        **incident_json(incident),
        "alerts": [alert_json(alert) for alert in incident.alerts],
        "timeline": [entry_json(entry) for entry in incident.timeline],
    }
    if args.json:
        print_json(shown)
        return 0
    for name in ("number", "id", "service", "status", "severity", "urgency"):
        print(f"{name + ':':<14} {shown[name]}")
    for name in ("urgency_reason", "summary", "dedup_key", "alert_count"):
        if shown[name] or name == "alert_count":
            print(f"{name + ':':<14} {shown[name]}")
    for name in (
        "created_at",
        "page_at",
        "acknowledged_by",
        "ack_timeout_at",
        "resolved_by",
        "snoozed_until",
    ):
        if shown[name]:
            print(f"{name + ':':<14} {shown[name]}")
    print("timeline:")
    print_table(
        ["AT", "KIND", "BY", "MESSAGE"],
        ([e["at"], e["kind"], e["actor"] or "", e["message"]] for e in shown["timeline"]),
    )
    return 0


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
