"""Console pages for incidents: the live list and the incident page with its actions.

    GET  /  (and /incidents)         the list: open first; filters service, status,
                                     severity, text (query string, so a filtered list is
                                     a link); rows refreshed live (console.js + /incidents/events)
    GET  /incidents/rows             the list's rows only, for that refresh
    GET  /incidents/events           server-sent events: which incident changed (feed.py)
    GET  /incidents/{id}             summary, service, severity, alerts, the whole timeline,
                                     escalation, similar past incidents, the actions
    POST /incidents/{id}/{action}    acknowledge, resolve, snooze, escalate, reassign, note

Every read and action is a gRPC call as the viewer; the buttons a role may not use are not
drawn, and the services refuse them anyway (a forged POST gets their PERMISSION_DENIED).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from tocsin.console.web import (
    Viewer,
    all_items,
    console_of,
    enum_label,
    find_viewer,
    incident_number,
    page,
    refused,
    render,
    see_other,
)
from tocsin.v1 import (
    common_pb2,
    escalation_pb2,
    history_pb2,
    incidents_pb2,
    scheduling_pb2,
)

log = logging.getLogger(__name__)

PAGE_SIZE = 200
STATUS_FILTERS = {
    "open": [incidents_pb2.INCIDENT_STATUS_TRIGGERED, incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED],
    "triggered": [incidents_pb2.INCIDENT_STATUS_TRIGGERED],
    "acknowledged": [incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED],
    "resolved": [incidents_pb2.INCIDENT_STATUS_RESOLVED],
    "any": [],
}
SEVERITIES = ("critical", "error", "warning", "info")
SNOOZE_CHOICES = (
    ("15m", "15 minutes", timedelta(minutes=15)),
    ("30m", "30 minutes", timedelta(minutes=30)),
    ("1h", "1 hour", timedelta(hours=1)),
    ("2h", "2 hours", timedelta(hours=2)),
    ("4h", "4 hours", timedelta(hours=4)),
    ("8h", "8 hours", timedelta(hours=8)),
    ("24h", "24 hours", timedelta(hours=24)),
)
_STATUS_ORDER = {
    incidents_pb2.INCIDENT_STATUS_TRIGGERED: 0,
    incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED: 1,
    incidents_pb2.INCIDENT_STATUS_RESOLVED: 2,
}
HEARTBEAT_S = 15.0
RECHECK_S = 60.0
"""How often a live feed checks that its viewer's token still works."""


def status_label(status: int) -> str:
    return enum_label(status, incidents_pb2.IncidentStatus, "INCIDENT_STATUS_")


def severity_label(severity: int) -> str:
    return enum_label(severity or common_pb2.SEVERITY_CRITICAL, common_pb2.Severity, "SEVERITY_")


@dataclass(frozen=True)
class Filters:
    service: str
    status: str
    severity: str
    text: str

    @classmethod
    def of(cls, request: Request) -> Filters:
        query = request.query_params
        status = query.get("status", "open")
        severity = query.get("severity", "")
        return cls(
            service=query.get("service", "").strip(),
            status=status if status in STATUS_FILTERS else "open",
            severity=severity if severity in SEVERITIES else "",
            text=query.get("q", "").strip()[:200],
        )

    def request(self) -> incidents_pb2.ListIncidentsRequest:
        return incidents_pb2.ListIncidentsRequest(
            service_ids=[self.service] if self.service else [],
            statuses=STATUS_FILTERS[self.status],
            severities=(
                [common_pb2.Severity.Value(f"SEVERITY_{self.severity.upper()}")]
                if self.severity
                else []
            ),
            summary_contains=self.text,
            page_size=PAGE_SIZE,
        )


async def _rows(viewer: Viewer, filters: Filters) -> list[dict[str, Any]]:
    reply = await viewer.client.incidents.ListIncidents(filters.request(), timeout=10)
    # Open first; within a status the service's order (newest first) stands.
    ordered = sorted(reply.incidents, key=lambda i: _STATUS_ORDER.get(i.status, 3))
    return [
        {
            "incident": incident,
            "number": incident_number(incident),
            "status": status_label(incident.status),
            "severity": severity_label(incident.severity),
        }
        for incident in ordered
    ]


@page
async def incident_list(request: Request, viewer: Viewer) -> Response:
    filters = Filters.of(request)
    rows = await _rows(viewer, filters)
    services = await viewer.client.incidents.ListServices(
        incidents_pb2.ListServicesRequest(), timeout=10
    )
    return render(
        request,
        "incidents.html",
        {
            "rows": rows,
            "filters": filters,
            "services": sorted(services.services, key=lambda s: s.id),
            "statuses": list(STATUS_FILTERS),
            "severities": SEVERITIES,
        },
        active="incidents",
    )


@page
async def incident_rows(request: Request, viewer: Viewer) -> Response:
    rows = await _rows(viewer, Filters.of(request))
    return render(request, "incidents_rows.html", {"rows": rows})


async def incident_events(request: Request) -> Response:
    """Server-sent events: one `incident` event per change (which incident, its status
    and version; never its content), a comment every HEARTBEAT_S. Ends when the viewer's
    token stops working (checked every RECHECK_S)."""
    try:
        viewer = await find_viewer(request)
    except grpc.aio.AioRpcError:
        return Response("tocsin cannot check the session now\n", 503, media_type="text/plain")
    if viewer is None:
        return Response("sign in first\n", 401, media_type="text/plain")
    console = console_of(request)
    feed = console.feed
    queue = feed.subscribe()

    async def stream() -> AsyncIterator[str]:
        checked = asyncio.get_running_loop().time()
        try:
            yield "retry: 2000\n: connected\n\n"
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                else:
                    yield f"event: incident\ndata: {json.dumps(message)}\n\n"
                if asyncio.get_running_loop().time() - checked > RECHECK_S:
                    checked = asyncio.get_running_loop().time()
                    if await _still_signed_in(request) is False:
                        yield "event: signed-out\ndata: {}\n\n"
                        return
        finally:
            feed.unsubscribe(queue)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _still_signed_in(request: Request) -> bool | None:
    """False once the viewer's token is refused; None when that cannot be told now."""
    try:
        return await find_viewer(request) is not None
    except grpc.aio.AioRpcError:
        return None


async def _similar(viewer: Viewer, incident_id: str) -> list[Any] | None:
    """Similar past incidents from the history service; None when it cannot answer."""
    try:
        reply = await viewer.client.history.SimilarIncidents(
            history_pb2.SimilarIncidentsRequest(incident_id=incident_id, page_size=5),
            timeout=2,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return []
        log.info("console: similar incidents unavailable (%s)", error.code().name)
        return None
    return list(reply.incidents)


async def _escalation(viewer: Viewer, incident_id: str) -> escalation_pb2.Escalation | None:
    try:
        reply = await viewer.client.escalation.GetEscalation(
            escalation_pb2.GetEscalationRequest(incident_id=incident_id), timeout=5
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise
        return None
    return reply.escalation


async def _assignees(viewer: Viewer) -> tuple[list[Any], list[Any]]:
    """Everyone and every policy an incident can be reassigned to (every page of each)."""
    users, policies = await asyncio.gather(
        all_items(viewer.client.scheduling.ListUsers, scheduling_pb2.ListUsersRequest, "users"),
        all_items(
            viewer.client.escalation.ListPolicies, escalation_pb2.ListPoliciesRequest, "policies"
        ),
    )
    return sorted(users, key=lambda u: u.id), sorted(policies, key=lambda p: p.id)


def _details(alert: incidents_pb2.Alert) -> str:
    if not alert.HasField("details") or not alert.details.fields:
        return ""
    return json.dumps(MessageToDict(alert.details), indent=2, sort_keys=True)


@page
async def incident_page(request: Request, viewer: Viewer) -> Response:
    incident_id = request.path_params["incident_id"].lstrip("#")
    reply = await viewer.client.incidents.GetIncident(
        incidents_pb2.GetIncidentRequest(
            incident_id=incident_id, include_timeline=True, include_alerts=True
        ),
        timeout=10,
    )
    incident = reply.incident
    service_name = incident.service_id
    try:
        service = await viewer.client.incidents.GetService(
            incidents_pb2.GetServiceRequest(id=incident.service_id), timeout=5
        )
        service_name = service.service.name or incident.service_id
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise
    escalation, similar = await asyncio.gather(
        _escalation(viewer, incident.id), _similar(viewer, incident.id)
    )
    users: list[Any] = []
    policies: list[Any] = []
    if viewer.can_respond and incident.status != incidents_pb2.INCIDENT_STATUS_RESOLVED:
        users, policies = await _assignees(viewer)
    assignment = incident.assignment
    assigned = (
        f"user {assignment.user_id}"
        if assignment.WhichOneof("target") == "user_id"
        else f"policy {assignment.escalation_policy_id}"
        if assignment.WhichOneof("target")
        else ""
    )
    return render(
        request,
        "incident.html",
        {
            "incident": incident,
            "number": incident_number(incident),
            "status": status_label(incident.status),
            "severity": severity_label(incident.severity),
            "service_name": service_name,
            "assigned": assigned,
            "alerts": [
                {
                    "alert": alert,
                    "severity": severity_label(alert.severity),
                    "details": _details(alert),
                }
                for alert in incident.alerts
            ],
            "timeline": [
                {
                    "entry": entry,
                    "kind": enum_label(entry.kind, incidents_pb2.TimelineKind, "TIMELINE_KIND_"),
                    "actor": entry.actor.user_id or entry.actor.display,
                    "via": enum_label(entry.actor.channel, common_pb2.Channel, "CHANNEL_")
                    if entry.actor.channel
                    else "",
                }
                for entry in incident.timeline
            ],
            "escalation": escalation,
            "similar": similar,
            "open": incident.status != incidents_pb2.INCIDENT_STATUS_RESOLVED,
            "triggered": incident.status == incidents_pb2.INCIDENT_STATUS_TRIGGERED,
            "snooze_choices": SNOOZE_CHOICES,
            "users": users,
            "policies": policies,
        },
        active="incidents",
    )


def _back(incident_id: str) -> str:
    return f"/incidents/{incident_id}"


@page
async def incident_action(request: Request, viewer: Viewer) -> Response:
    incident_id = request.path_params["incident_id"].lstrip("#")
    action = request.path_params["action"]
    form = await request.form()
    incidents = viewer.client.incidents
    if action == "acknowledge":
        ack = await incidents.Acknowledge(
            incidents_pb2.AcknowledgeRequest(incident_id=incident_id), timeout=10
        )
        notice = (
            f"Acknowledged #{incident_number(ack.incident)}"
            if ack.changed
            else ("It was already acknowledged.")
        )
    elif action == "resolve":
        res = await incidents.Resolve(
            incidents_pb2.ResolveRequest(incident_id=incident_id), timeout=10
        )
        notice = (
            f"Resolved #{incident_number(res.incident)}"
            if res.changed
            else ("It was already resolved.")
        )
    elif action == "snooze":
        choice = {key: delta for key, _, delta in SNOOZE_CHOICES}.get(str(form.get("duration", "")))
        if choice is None:
            return refused(request, "duration: choose one of the snooze durations offered.")
        duration = Duration()
        duration.FromTimedelta(choice)
        snoozed = await incidents.Snooze(
            incidents_pb2.SnoozeRequest(incident_id=incident_id, duration=duration), timeout=10
        )
        notice = f"Snoozed #{incident_number(snoozed.incident)}"
    elif action == "escalate":
        await viewer.client.escalation.Escalate(
            escalation_pb2.EscalateRequest(incident_id=incident_id), timeout=10
        )
        notice = "Escalated to the next level"
    elif action == "reassign":
        target = str(form.get("assignee", ""))
        kind, _, ident = target.partition(":")
        if kind == "user" and ident:
            assignment = incidents_pb2.Assignment(user_id=ident)
        elif kind == "policy" and ident:
            assignment = incidents_pb2.Assignment(escalation_policy_id=ident)
        else:
            return refused(request, "assignee: choose a user or an escalation policy.")
        await incidents.Reassign(
            incidents_pb2.ReassignRequest(incident_id=incident_id, assignment=assignment),
            timeout=10,
        )
        notice = f"Reassigned to {kind} {ident}"
    elif action == "note":
        text = str(form.get("note", "")).strip()
        if not text:
            return refused(request, "note: write something first.")
        await incidents.AddNote(
            incidents_pb2.AddNoteRequest(incident_id=incident_id, text=text), timeout=10
        )
        notice = "Note added"
    else:
        return refused(request, f"unknown action {action!r}", 404)
    return see_other(request, _back(incident_id), notice)


routes: list[BaseRoute] = [
    Route("/", incident_list, methods=["GET"]),
    Route("/incidents", incident_list, methods=["GET"]),
    Route("/incidents/rows", incident_rows, methods=["GET"]),
    Route("/incidents/events", incident_events, methods=["GET"]),
    Route("/incidents/{incident_id}", incident_page, methods=["GET"]),
    Route("/incidents/{incident_id}/{action}", incident_action, methods=["POST"]),
]
