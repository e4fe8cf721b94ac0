"""`tocsin history search|rebuild`, `tocsin similar`, `tocsin report`, `tocsin postmortem`:
the incident archive (the history service) from the command line."""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

from tocsin.cli import charts
from tocsin.cli.common import (
    add_json_flag,
    incident_label,
    incident_number,
    rfc3339,
    run_with_client,
)
from tocsin.cli.incident_commands import SEVERITIES, entry_json, incident_json, since
from tocsin.cli.output import print_json, print_table
from tocsin.cli.output import rfc3339 as format_time
from tocsin.client.client import TocsinClient
from tocsin.v1 import common_pb2, history_pb2, incidents_pb2

NEWEST, RELEVANCE = history_pb2.SEARCH_ORDER_NEWEST, history_pb2.SEARCH_ORDER_RELEVANCE
REASONS = {
    history_pb2.SIMILARITY_REASON_SAME_DEDUP_KEY: "same dedup key",
    history_pb2.SIMILARITY_REASON_SAME_SERVICE_TEXT: "same service, similar text",
    history_pb2.SIMILARITY_REASON_TEXT: "similar text",
}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    history = commands.add_parser("history", help="the incident archive: search, rebuild")
    sub = history.add_subparsers(dest="history_command", required=True, metavar="COMMAND")
    search = sub.add_parser("search", help="full-text search of past incidents")
    search.add_argument("text", help="words to find (in summaries, alerts, notes, resolutions)")
    search.add_argument("--service", action="append", default=[], help="only this service")
    search.add_argument("--severity", action="append", default=[], choices=SEVERITIES)
    search.add_argument("--since", type=since, help="opened at or after (2h, 7d or RFC 3339)")
    search.add_argument("--until", type=rfc3339, help="opened before (RFC 3339)")
    search.add_argument("--acknowledged-by", default="", help="user id or name")
    search.add_argument("--newest", action="store_true", help="newest first (default: relevance)")
    search.add_argument("--limit", type=int, default=20)
    add_json_flag(search)
    search.set_defaults(run=_search)
    rebuild = sub.add_parser(
        "rebuild", help="write every event the Redis streams still hold into the archive again"
    )
    add_json_flag(rebuild)
    rebuild.set_defaults(run=_rebuild)

    similar = commands.add_parser("similar", help="earlier incidents like this one")
    similar.add_argument("id", type=incident_number, help="incident number (18 or #18)")
    similar.add_argument("--limit", type=int, default=5)
    add_json_flag(similar)
    similar.set_defaults(run=_similar)

    report = commands.add_parser("report", help="MTTA/MTTR, pages and on-call load")
    report.add_argument("--since", type=since, help="incidents opened since (default 30d)")
    report.add_argument("--until", type=rfc3339, help="incidents opened before (default now)")
    report.add_argument("--service", action="append", default=[], help="only this service")
    output = report.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON")
    output.add_argument("--csv", action="store_true", help="print CSV (one row per figure)")
    report.add_argument(
        "--chart", type=Path, help="also write charts to FILE (.svg, or .png with matplotlib)"
    )
    report.set_defaults(run=_report)

    postmortem = commands.add_parser("postmortem", help="a postmortem draft in Markdown")
    postmortem.add_argument("id", type=incident_number, help="incident number (18 or #18)")
    postmortem.add_argument("-o", "--output", type=Path, help="write to FILE (default stdout)")
    postmortem.set_defaults(run=_postmortem)


# -- search -------------------------------------------------------------------------


def _search(args: argparse.Namespace) -> int:
    request = history_pb2.SearchIncidentsRequest(
        query=args.text,
        service_ids=args.service,
        severities=[SEVERITIES[s] for s in args.severity],
        acknowledged_by=args.acknowledged_by,
        order=history_pb2.SEARCH_ORDER_NEWEST
        if args.newest
        else history_pb2.SEARCH_ORDER_RELEVANCE,
        page_size=args.limit,
    )
    if args.since:
        request.created_after.FromDatetime(args.since.astimezone(UTC))
    if args.until:
        request.created_before.FromDatetime(args.until.astimezone(UTC))

    async def body(client: TocsinClient) -> history_pb2.SearchIncidentsResponse:
        return await client.history.SearchIncidents(request, timeout=30)

    reply = run_with_client(body)
    if args.json:
        print_json(
            [
                {**archived_json(hit.incident), "snippet": hit.snippet, "score": hit.score}
                for hit in reply.hits
            ]
        )
        return 0
    if not reply.hits:
        print("no incidents found")
        return 0
    print_table(
        ("#", "SERVICE", "OPENED", "STATUS", "SUMMARY", "LAST NOTE"),
        (
            (
                incident_label(h.incident.incident),
                h.incident.incident.service_id,
                format_time(h.incident.incident.created_at),
                _status(h.incident.incident),
                _cut(h.incident.incident.summary, 50),
                _cut(h.incident.notes[-1].text, 40) if h.incident.notes else "",
            )
            for h in reply.hits
        ),
    )
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    async def body(client: TocsinClient) -> history_pb2.RebuildArchiveResponse:
        return await client.history.RebuildArchive(history_pb2.RebuildArchiveRequest(), timeout=600)

    reply = run_with_client(body)
    if args.json:
        print_json({"events": reply.events})
    else:
        print(f"wrote {reply.events} events from the incident-events streams into the archive")
    return 0


# -- similar ------------------------------------------------------------------------


async def _similar_incidents(
    client: TocsinClient, incident_id: str, limit: int
) -> history_pb2.SimilarIncidentsResponse:
    return await client.history.SimilarIncidents(
        history_pb2.SimilarIncidentsRequest(incident_id=incident_id, page_size=limit), timeout=30
    )


def _similar(args: argparse.Namespace) -> int:
    reply = run_with_client(lambda client: _similar_incidents(client, args.id, args.limit))
    if args.json:
        print_json(
            [
                {
                    **archived_json(s.incident),
                    "reason": REASONS.get(s.reason, ""),
                    "score": s.score,
                }
                for s in reply.incidents
            ]
        )
        return 0
    if not reply.incidents:
        print(f"no earlier incident like {args.id}")
        return 0
    for item in reply.incidents:
        print(_similar_line(item))
        for note in item.incident.notes:
            print(f"    note ({_actor(note.actor)}): {note.text}")
    return 0


def _similar_line(item: history_pb2.SimilarIncident) -> str:
    incident = item.incident.incident
    ended = (
        f"resolved by {_actor(incident.resolved_by) or 'unknown'} after "
        f"{_duration(item.incident.seconds_to_resolve)}"
        if incident.status == incidents_pb2.INCIDENT_STATUS_RESOLVED
        else _status(incident)
    )
    return (
        f"{incident_label(incident)}  {format_time(incident.created_at)}  {incident.service_id}  "
        f"{incident.summary}  [{REASONS.get(item.reason, '')}; {ended}]"
    )


# -- report -------------------------------------------------------------------------


def _report(args: argparse.Namespace) -> int:
    request = history_pb2.GetReportRequest(service_ids=args.service)
    if args.since:
        request.since.FromDatetime(args.since.astimezone(UTC))
    if args.until:
        request.until.FromDatetime(args.until.astimezone(UTC))

    async def body(client: TocsinClient) -> history_pb2.GetReportResponse:
        return await client.history.GetReport(request, timeout=120)

    report = run_with_client(body)
    if args.chart:
        charts.write(report, args.chart)
    if args.json:
        print_json(report_json(report))
    elif args.csv:
        _report_csv(report)
    else:
        _report_text(report)
    if args.chart:
        print(f"charts written to {args.chart}", file=sys.stderr)
    return 0


def _times_json(times: history_pb2.ResponseTimes) -> dict[str, Any]:
    return {
        "incidents": times.incidents,
        "acknowledged": times.acknowledged,
        "resolved": times.resolved,
        "mtta_median_s": times.mtta_median_seconds,
        "mtta_p90_s": times.mtta_p90_seconds,
        "mttr_median_s": times.mttr_median_seconds,
        "mttr_p90_s": times.mttr_p90_seconds,
    }


def _service_json(service: history_pb2.ServiceReport) -> dict[str, Any]:
    return {
        "service": service.service_id or None,
        **_times_json(service.times),
        "pages": service.pages,
        "paged_incidents": service.paged_incidents,
        "escalated_incidents": service.escalated_incidents,
        "escalation_rate": service.escalation_rate,
    }


def _week_json(week: history_pb2.WeekReport) -> dict[str, Any]:
    return {
        "week": week.week,
        "service": week.service_id or None,
        **_times_json(week.times),
        "pages": week.pages,
    }


def report_json(report: history_pb2.GetReportResponse) -> dict[str, Any]:
    return {
        "since": format_time(report.since),
        "until": format_time(report.until),
        "total": _service_json(report.total),
        "services": [_service_json(s) for s in report.services],
        "weeks": [_week_json(w) for w in report.weeks],
        "total_weeks": [_week_json(w) for w in report.total_weeks],
        "people": [
            {
                "user": p.user_id,
                "time_zone": p.time_zone,
                "pages": p.pages,
                "business_hours": p.business_hours,
                "evenings": p.evenings,
                "nights": p.nights,
                "by_hour": list(p.by_hour),
            }
            for p in report.people
        ],
    }


def _report_csv(report: history_pb2.GetReportResponse) -> None:
    """One table: a row per service, per week and service, and per person."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(
        [
            "section", "week", "service", "user", "incidents", "acknowledged", "resolved",
            "mtta_median_s", "mtta_p90_s", "mttr_median_s", "mttr_p90_s", "pages",
            "escalation_rate", "business_hours", "evenings", "nights",
        ]
    )  # fmt: skip

    def times(t: history_pb2.ResponseTimes) -> list[object]:
        return [
            t.incidents, t.acknowledged, t.resolved, round(t.mtta_median_seconds, 3),
            round(t.mtta_p90_seconds, 3), round(t.mttr_median_seconds, 3),
            round(t.mttr_p90_seconds, 3),
        ]  # fmt: skip

    for s in (report.total, *report.services):
        section = "total" if s is report.total else "service"
        rate = round(s.escalation_rate, 4)
        writer.writerow([section, "", s.service_id, "", *times(s.times), s.pages, rate, "", "", ""])
    for w in (*report.total_weeks, *report.weeks):
        writer.writerow(
            ["week", w.week, w.service_id, "", *times(w.times), w.pages, "", "", "", ""]
        )
    for p in report.people:
        blank = [""] * 7
        load = [p.business_hours, p.evenings, p.nights]
        writer.writerow(["person", "", "", p.user_id, *blank, p.pages, "", *load])


TIME_HEADERS = ("MTTA p50", "MTTA p90", "MTTR p50", "MTTR p90")


def _report_text(report: history_pb2.GetReportResponse) -> None:
    print(f"Incidents opened {format_time(report.since)} .. {format_time(report.until)}")
    print()
    rows = [(s.service_id, s) for s in report.services] + [("(all)", report.total)]
    print_table(
        (
            "SERVICE",
            "INCIDENTS",
            "MTTA p50",
            "MTTA p90",
            "MTTR p50",
            "MTTR p90",
            "PAGES",
            "ESCALATED",
        ),
        (
            (
                name,
                s.times.incidents,
                _duration(s.times.mtta_median_seconds),
                _duration(s.times.mtta_p90_seconds),
                _duration(s.times.mttr_median_seconds),
                _duration(s.times.mttr_p90_seconds),
                s.pages,
                f"{s.escalated_incidents}/{s.paged_incidents} ({s.escalation_rate:.0%})",
            )
            for name, s in rows
        ),
    )
    if report.weeks:
        print()
        print_table(
            (
                "WEEK",
                "SERVICE",
                "INCIDENTS",
                "MTTA p50",
                "MTTA p90",
                "MTTR p50",
                "MTTR p90",
                "PAGES",
            ),
            (
                (
                    w.week,
                    w.service_id,
                    w.times.incidents,
                    _duration(w.times.mtta_median_seconds),
                    _duration(w.times.mtta_p90_seconds),
                    _duration(w.times.mttr_median_seconds),
                    _duration(w.times.mttr_p90_seconds),
                    w.pages,
                )
                for w in report.weeks
            ),
        )
    if report.people:
        print()
        print_table(
            ("PERSON", "ZONE", "PAGES", "BUSINESS HOURS", "EVENINGS", "NIGHTS"),
            (
                (p.user_id, p.time_zone, p.pages, p.business_hours, p.evenings, p.nights)
                for p in report.people
            ),
        )


# -- postmortem ---------------------------------------------------------------------


def _postmortem(args: argparse.Namespace) -> int:
    async def body(
        client: TocsinClient,
    ) -> tuple[history_pb2.ArchivedIncident, history_pb2.SimilarIncidentsResponse]:
        archived = await client.history.GetArchivedIncident(
            history_pb2.GetArchivedIncidentRequest(incident_id=args.id), timeout=30
        )
        return archived.incident, await _similar_incidents(client, args.id, 5)

    archived, similar = run_with_client(body)
    text = postmortem_markdown(archived, similar.incidents)
    if args.output:
        args.output.write_text(text)
        print(f"postmortem draft written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def postmortem_markdown(
    archived: history_pb2.ArchivedIncident, similar: Sequence[history_pb2.SimilarIncident]
) -> str:
    incident = archived.incident
    lines = [
        f"# Postmortem: {incident_label(incident)} {incident.summary}",
        "",
        "_Draft written by `tocsin postmortem` from the incident archive; edit freely._",
        "",
        "## Summary",
        "",
        f"- Service: `{incident.service_id}`",
        f"- Severity: {_severity(incident.severity)}",
        f"- Opened: {format_time(incident.created_at)}",
        f"- Status: {_status(incident)}",
        f"- Alerts: {incident.alert_count}",
    ]
    if archived.HasField("first_response_at"):
        lines.append(
            f"- Time to acknowledge: {_duration(archived.seconds_to_acknowledge)} "
            f"({format_time(archived.first_response_at)})"
        )
    else:
        lines.append("- Time to acknowledge: never acknowledged")
    if incident.status == incidents_pb2.INCIDENT_STATUS_RESOLVED:
        lines.append(
            f"- Time to resolve: {_duration(archived.seconds_to_resolve)} "
            f"({format_time(incident.resolved_at)}, by {_actor(incident.resolved_by) or 'unknown'})"
        )
    lines += ["", "## Who was paged", ""]
    if archived.pages:
        lines += ["| when (UTC) | who | escalation level | loop |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {format_time(p.at)} | {p.user_id} | {p.level + 1} | {p.loop + 1} |"
            for p in archived.pages
        ]
    else:
        lines.append("Nobody was paged.")
    lines += ["", "## Timeline", "", "| when (UTC) | what | who |", "| --- | --- | --- |"]
    for entry in incident.timeline:
        lines.append(
            f"| {format_time(entry.at)} | {_md(entry.message)} | {_md(_actor(entry.actor))} |"
        )
    lines += ["", "## Notes", ""]
    lines += [
        f"- {format_time(n.at)} {_actor(n.actor)}: {_md(n.text)}" for n in archived.notes
    ] or ["None."]
    lines += ["", "## Similar past incidents", ""]
    if similar:
        for item in similar:
            lines.append(f"- {_md(_similar_line(item))}")
            if item.incident.notes:
                lines.append(f"  - last note: {_md(item.incident.notes[-1].text)}")
    else:
        lines.append("None found.")
    lines += [
        "",
        "## Impact",
        "",
        "",
        "## Causes",
        "",
        "",
        "## What went well",
        "",
        "",
        "## What went badly",
        "",
        "",
        "## Actions",
        "",
        "| action | owner | due |",
        "| --- | --- | --- |",
        "|  |  |  |",
        "",
    ]
    return "\n".join(lines)


# -- formatting ---------------------------------------------------------------------


def archived_json(archived: history_pb2.ArchivedIncident) -> dict[str, Any]:
    return {
        **incident_json(archived.incident),
        "notes": [
            {"at": format_time(n.at), "by": _actor(n.actor), "text": n.text} for n in archived.notes
        ],
        "pages": [
            {"at": format_time(p.at), "user": p.user_id, "level": p.level, "loop": p.loop}
            for p in archived.pages
        ],
        "timeline": [entry_json(e) for e in archived.incident.timeline],
        "first_response_at": format_time(archived.first_response_at),
        "seconds_to_acknowledge": archived.seconds_to_acknowledge
        if archived.HasField("first_response_at")
        else None,
        "seconds_to_resolve": archived.seconds_to_resolve
        if archived.incident.status == incidents_pb2.INCIDENT_STATUS_RESOLVED
        else None,
    }


def _actor(actor: common_pb2.Actor) -> str:
    return actor.user_id or actor.display


def _status(incident: incidents_pb2.Incident) -> str:
    return (
        incidents_pb2.IncidentStatus.Name(incident.status).removeprefix("INCIDENT_STATUS_").lower()
    )


def _severity(severity: int) -> str:
    names: dict[int, str] = {int(v): k for k, v in SEVERITIES.items()}
    return names.get(severity, "critical")


def _duration(seconds: float) -> str:
    """`45s`, `3m`, `2h05m`, `1d04h`."""
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m" + (f"{secs:02d}s" if secs else "")
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _md(text: str) -> str:
    """Text for one Markdown table cell or list item."""
    return " ".join(text.split()).replace("|", "\\|")
