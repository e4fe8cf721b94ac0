"""The IncidentService gRPC adapter: requests to domain calls, results to responses.

Alerts are normalised in normalize.py (Trigger and TriggerBatch requests are decoded by
decoding.py, so an undecodable alert fails alone); checks and rules live in validation.py
and domain.py, Redis in the stores; domain errors become status codes in the shared error
interceptor (tocsin.runtime.grpcserver).

At most `max_watchers` WatchIncidents streams run at once per process (each holds a
blocking Redis read per shard, from the pool every other call needs); one more is
RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.duration_pb2 import Duration

from tocsin.incidents import domain, normalize, urgency, validation
from tocsin.incidents.assignees import Assignees
from tocsin.incidents.backlog import Backlog
from tocsin.incidents.decoding import SplitBatch
from tocsin.incidents.heartbeat import HeartbeatStore
from tocsin.incidents.maintenance import Maintenance
from tocsin.incidents.maintenance_servicer import MaintenanceRpcs
from tocsin.incidents.noise_servicer import NoiseControlRpcs
from tocsin.incidents.query import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    IncidentQuery,
    decode_page_token,
    list_incidents,
)
from tocsin.incidents.routing import Router
from tocsin.incidents.rule_store import RuleStore
from tocsin.incidents.service_store import ServiceStore
from tocsin.incidents.store import IncidentStore
from tocsin.incidents.validation import check
from tocsin.incidents.watch import watch_events
from tocsin.runtime.audit import AuditLog, before_or_none
from tocsin.runtime.auth import actor_for
from tocsin.runtime.batches import answer_each
from tocsin.runtime.clock import Clock
from tocsin.runtime.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from tocsin.runtime.telemetry import current_traceparent, is_traceparent
from tocsin.v1 import common_pb2, incidents_pb2, incidents_pb2_grpc

SERVICE_NAME = "tocsin.v1.IncidentService"

log = logging.getLogger(__name__)


class IncidentServicer(
    NoiseControlRpcs, MaintenanceRpcs, incidents_pb2_grpc.IncidentServiceServicer
):
    def __init__(
        self,
        incidents: IncidentStore,
        services: ServiceStore,
        clock: Clock,
        assignees: Assignees,
        max_watchers: int = 16,
        backlog: Backlog | None = None,
    ) -> None:
        self.incidents = incidents
        self.services = services
        self.clock = clock
        self.assignees = assignees
        self.max_watchers = max_watchers
        self.backlog = backlog
        self._watchers = 0
        self.audit: AuditLog | None = None
        """Where configuration changes (services) are recorded (set by the server)."""
        self.router = Router(RuleStore(incidents.redis, clock), services, incidents)
        """Event rules and grouping on the ingest path (routing.py)."""
        self.maintenance = Maintenance(incidents.redis, clock)
        """Maintenance windows; an alert on a service in one pages nobody (maintenance.py)."""
        self.heartbeats = HeartbeatStore(incidents.redis, clock)
        """Heartbeat monitors (heartbeat.py)."""

    async def _record(self, action: str, object_id: str, before: Any, after: Any) -> None:
        if self.audit is not None:
            await self.audit.record(action, "service", object_id, before, after)

    # Services

    async def CreateService(
        self, request: incidents_pb2.CreateServiceRequest, context: Any
    ) -> incidents_pb2.CreateServiceResponse:
        service = await self.services.create(request.service, validate_only=request.validate_only)
        if not request.validate_only:
            await self._record("service.create", service.id, None, service)
        return incidents_pb2.CreateServiceResponse(service=service)

    async def GetService(
        self, request: incidents_pb2.GetServiceRequest, context: Any
    ) -> incidents_pb2.GetServiceResponse:
        return incidents_pb2.GetServiceResponse(service=await self.services.get(request.id))

    async def ListServices(
        self, request: incidents_pb2.ListServicesRequest, context: Any
    ) -> incidents_pb2.ListServicesResponse:
        services, token = await self.services.list(request.page_size, request.page_token)
        return incidents_pb2.ListServicesResponse(services=services, next_page_token=token)

    async def UpdateService(
        self, request: incidents_pb2.UpdateServiceRequest, context: Any
    ) -> incidents_pb2.UpdateServiceResponse:
        before = None
        if not request.validate_only:
            before = await before_or_none(self.services.get(request.service.id))
        service = await self.services.update(request.service, validate_only=request.validate_only)
        if not request.validate_only:
            await self._record("service.update", service.id, before, service)
        return incidents_pb2.UpdateServiceResponse(service=service)

    async def DeleteService(
        self, request: incidents_pb2.DeleteServiceRequest, context: Any
    ) -> incidents_pb2.DeleteServiceResponse:
        before = await before_or_none(self.services.get(request.id))
        await self.services.delete(request.id)
        await self._record("service.delete", request.id, before, None)
        return incidents_pb2.DeleteServiceResponse()

    # Incidents

    async def Trigger(
        self, request: incidents_pb2.TriggerRequest | InvalidArgument, context: Any
    ) -> incidents_pb2.TriggerResponse:
        if isinstance(request, InvalidArgument):  # undecodable (decoding.py)
            raise request
        return await self._trigger(request, current_traceparent())

    async def TriggerBatch(
        self, request: incidents_pb2.TriggerBatchRequest | SplitBatch, context: Any
    ) -> incidents_pb2.TriggerBatchResponse:
        call_traceparent = current_traceparent()

        async def one(
            item: incidents_pb2.TriggerBatchItem | InvalidArgument,
        ) -> incidents_pb2.TriggerResponse:
            if isinstance(item, InvalidArgument):  # this item alone was undecodable
                raise item
            traceparent = item.traceparent if is_traceparent(item.traceparent) else call_traceparent
            return await self._trigger(item.request, traceparent)

        # Concurrently, so the items' scripts share Redis round trips (BatchedScript).
        results = await answer_each(
            request.items, one, incidents_pb2.TriggerBatchResult, "TriggerBatch"
        )
        return incidents_pb2.TriggerBatchResponse(results=results)

    async def _trigger(
        self, request: incidents_pb2.TriggerRequest, traceparent: str
    ) -> incidents_pb2.TriggerResponse:
        alert = domain.alert_of(request)
        actor = normalize.actor(actor_for(request.actor))
        check(validation.details_violations(alert.details))
        dedup_key = normalize.alert(alert, request.dedup_key)
        check(validation.trigger_violations(alert, dedup_key, actor))
        service = await self._service(request.service_id, request.integration_key)
        routed = await self.router.route(service, alert, dedup_key)  # event rules (routing.py)
        if routed.suppressed_by:
            return incidents_pb2.TriggerResponse(
                dedup_key=routed.dedup_key, suppressed_by=routed.suppressed_by
            )
        service, dedup_key = routed.service, normalize.dedup_key(routed.dedup_key)
        window = await self.maintenance.active_for(service.id)  # maintenance.py
        if window is not None:
            suppressed_by = f"maintenance/{window.id}"
            await self.router.store.record_suppressed(service.id, dedup_key, alert, suppressed_by)
            await self.maintenance.record(window.id)
            if service.page_after_maintenance:  # page it when the window ends
                held = incidents_pb2.TriggerRequest()
                held.CopyFrom(request)
                held.ClearField("integration_key")
                held.service_id, held.dedup_key = service.id, dedup_key
                held.severity = alert.severity  # as event rules left it
                await self.maintenance.hold(window, held)
            return incidents_pb2.TriggerResponse(
                dedup_key=dedup_key, suppressed_by=suppressed_by, maintenance_window_id=window.id
            )
        dedup_key = dedup_key or uuid.uuid4().hex
        filed_key, window_ms = await self.router.group(service, alert, dedup_key)
        refusal = await self.backlog.refusal(service.id) if self.backlog is not None else None
        if refusal is not None and (  # backpressure: new incidents only (the key it is filed
            # under: an alert its service groups into an open incident joins it)
            await self.incidents.find_open(service.id, filed_key) is None
        ):
            raise refusal
        result = await self.incidents.trigger(
            service,
            filed_key,
            alert,
            actor,
            traceparent,
            notes=routed.notes,
            window_ms=window_ms,
            urgency_rule=routed.urgency,
        )
        return incidents_pb2.TriggerResponse(
            incident=result.incident, created=result.created, dedup_key=filed_key
        )

    async def Acknowledge(
        self, request: incidents_pb2.AcknowledgeRequest, context: Any
    ) -> incidents_pb2.AcknowledgeResponse:
        actor = self._actor(request.actor)
        incident_id = await self._address(request)
        timeout_ms = await self._ack_timeout_ms(incident_id)
        incident, changed = await self.incidents.change(
            incident_id,
            lambda current, now: domain.acknowledge(current, actor, now, timeout_ms),
            current_traceparent(),
        )
        return incidents_pb2.AcknowledgeResponse(incident=incident, changed=changed)

    async def _ack_timeout_ms(self, incident_id: str) -> int:
        """The ack timeout of the incident's service now (0: none, or no such service)."""
        service_id = (await self.incidents.get(incident_id)).service_id
        service = await self.services.lookup(service_id=service_id)
        return urgency.ack_timeout_ms(service) if service is not None else 0

    async def Resolve(
        self, request: incidents_pb2.ResolveRequest, context: Any
    ) -> incidents_pb2.ResolveResponse:
        actor = self._actor(request.actor)
        incident_id = await self._address(request)
        incident, changed = await self.incidents.change(
            incident_id,
            lambda current, now: domain.resolve(current, actor, now),
            current_traceparent(),
        )
        return incidents_pb2.ResolveResponse(incident=incident, changed=changed)

    async def Snooze(
        self, request: incidents_pb2.SnoozeRequest, context: Any
    ) -> incidents_pb2.SnoozeResponse:
        incident_id = await self._incident_id(request.incident_id)
        actor = self._actor(request.actor)
        check(validation.snooze_violations(_seconds(request.duration)))
        duration_ms = int(request.duration.ToMilliseconds())
        incident, _ = await self.incidents.change(
            incident_id,
            lambda current, now: domain.snooze(current, duration_ms, actor, now),
            current_traceparent(),
        )
        return incidents_pb2.SnoozeResponse(incident=incident)

    async def Reassign(
        self, request: incidents_pb2.ReassignRequest, context: Any
    ) -> incidents_pb2.ReassignResponse:
        incident_id = await self._incident_id(request.incident_id)
        actor = self._actor(request.actor)
        check(validation.assignment_violations(request.assignment))
        # The incident first (unknown, resolved: refused without asking anyone), then the
        # new assignee must exist, so an incident is never handed to nobody.
        domain.reassign(
            await self.incidents.get(incident_id), request.assignment, actor, self.clock.now_ms()
        )
        await self.assignees.check(request.assignment)
        incident, _ = await self.incidents.change(
            incident_id,
            lambda current, now: domain.reassign(current, request.assignment, actor, now),
            current_traceparent(),
        )
        return incidents_pb2.ReassignResponse(incident=incident)

    async def AddNote(
        self, request: incidents_pb2.AddNoteRequest, context: Any
    ) -> incidents_pb2.AddNoteResponse:
        incident_id = await self._incident_id(request.incident_id)
        actor = self._actor(request.actor)
        check(
            validation.text_violations(
                "text", request.text, validation.MAX_NOTE, required=True, multiline=True
            )
        )
        note = await self.incidents.add_note(
            incident_id, request.text, actor, current_traceparent()
        )
        return incidents_pb2.AddNoteResponse(entry=note)

    async def PostStatusUpdate(
        self, request: incidents_pb2.PostStatusUpdateRequest, context: Any
    ) -> incidents_pb2.PostStatusUpdateResponse:
        incident_id = await self._incident_id(request.incident_id)
        actor = self._actor(common_pb2.Actor())
        check(
            validation.text_violations(
                "text", request.text, validation.MAX_NOTE, required=True, multiline=True
            )
        )
        entry = await self.incidents.add_note(
            incident_id, request.text, actor, current_traceparent(), status_update=True
        )
        return incidents_pb2.PostStatusUpdateResponse(entry=entry)

    async def AppendTimeline(
        self, request: incidents_pb2.AppendTimelineRequest, context: Any
    ) -> incidents_pb2.AppendTimelineResponse:
        appended = await self.append_timeline(request, current_traceparent())
        return incidents_pb2.AppendTimelineResponse(appended=appended)

    async def append_timeline(
        self, request: incidents_pb2.AppendTimelineRequest, traceparent: str
    ) -> bool:
        """AppendTimeline's work, for the RPC and the timeline outbox
        (runtime/timeline_outbox.py): whether it was appended (False: its idempotency key
        was seen). Raises InvalidArgument, NotFound."""
        incident_id = validation.parse_incident_id(request.incident_id)
        entry = incidents_pb2.TimelineEntry()
        entry.CopyFrom(request.entry)
        entry.actor.CopyFrom(domain.normalized_actor(entry.actor))
        if not entry.HasField("at"):
            entry.at.CopyFrom(domain.timestamp(self.clock.now_ms()))
        check(
            [
                *validation.timeline_entry_violations(entry),
                *validation.text_violations(
                    "idempotency_key", request.idempotency_key, validation.MAX_IDEMPOTENCY_KEY
                ),
            ]
        )
        prefix = b""
        if entry.kind == incidents_pb2.TIMELINE_KIND_ESCALATED:  # also an event (webhooks)
            prefix = domain.event_prefix(
                incidents_pb2.INCIDENT_EVENT_KIND_ESCALATED,
                domain.to_ms(entry.at),
                entry.actor,
                traceparent,
                note=entry.message,
            )
        return await self.incidents.append_timeline(
            incident_id, entry, request.idempotency_key, prefix
        )

    async def AppendTimelineBatch(
        self, request: incidents_pb2.AppendTimelineBatchRequest, context: Any
    ) -> incidents_pb2.AppendTimelineBatchResponse:
        """Each item as an AppendTimeline call, concurrently."""
        results = await answer_each(
            request.items,
            lambda item: self.AppendTimeline(item, context),
            incidents_pb2.AppendTimelineBatchResult,
            "AppendTimeline",
        )
        return incidents_pb2.AppendTimelineBatchResponse(results=results)

    async def GetIncident(
        self, request: incidents_pb2.GetIncidentRequest, context: Any
    ) -> incidents_pb2.GetIncidentResponse:
        incident = await self.incidents.get(
            await self._incident_id(request.incident_id),
            alerts=request.include_alerts,
            timeline=request.include_timeline,
        )
        return incidents_pb2.GetIncidentResponse(incident=incident)

    async def ListIncidents(
        self, request: incidents_pb2.ListIncidentsRequest, context: Any
    ) -> incidents_pb2.ListIncidentsResponse:
        incidents, token = await list_incidents(self.incidents, _query(request))
        return incidents_pb2.ListIncidentsResponse(incidents=incidents, next_page_token=token)

    async def WatchIncidents(
        self, request: incidents_pb2.WatchIncidentsRequest, context: Any
    ) -> AsyncIterator[incidents_pb2.WatchIncidentsResponse]:
        since = request.since.ToMilliseconds() if request.HasField("since") else None
        if self._watchers >= self.max_watchers:
            raise ResourceExhausted(
                f"{self.max_watchers} WatchIncidents streams are open on this replica "
                "(TOCSIN_MAX_WATCH_STREAMS); try again later"
            )
        self._watchers += 1
        try:
            async for event in watch_events(
                self.incidents.redis, frozenset(request.service_ids), since
            ):
                yield incidents_pb2.WatchIncidentsResponse(event=event)
        finally:
            self._watchers -= 1

    # Helpers

    @staticmethod
    def _actor(actor: common_pb2.Actor) -> common_pb2.Actor:
        """The authenticated caller (runtime.auth.actor_for): a name sent by a person is
        ignored; only the service credential speaks for others (an SMS reply's owner)."""
        normalized = domain.normalized_actor(actor_for(actor))
        check(validation.actor_violations(normalized))
        return normalized

    async def _service(self, service_id: str, integration_key: str) -> incidents_pb2.Service:
        """The service named by id or integration key (both given: they must agree)."""
        if not service_id and not integration_key:
            raise InvalidArgument.one("service_id", "is required (or set integration_key)")
        if service_id:
            check(validation.service_id_violations("service_id", service_id))
        else:
            check(validation.integration_key_violations("integration_key", integration_key))
        service = await self.services.lookup(service_id=service_id, integration_key=integration_key)
        if service is None:
            if service_id:
                raise NotFound(f"service {service_id!r} does not exist")
            raise NotFound("no service has this integration key")
        if service_id and integration_key and service.integration_key != integration_key:
            raise InvalidArgument.one(
                "integration_key", f"is not the integration key of service {service_id!r}"
            )
        return service

    async def _incident_id(self, value: str) -> str:
        """The id of the incident `value` names: its id, or its number as "#18"."""
        number = validation.parse_incident_number(value)
        if number is None:
            return validation.parse_incident_id(value)
        ids = await self.incidents.find_number(number)
        if not ids:
            raise NotFound(f"incident #{number} does not exist")
        if len(ids) > 1:  # only after the counter went back (incidents/keys.py, "Numbers")
            raise FailedPrecondition(
                f"#{number} names {len(ids)} incidents (ids {', '.join(sorted(ids))}); "
                "give one of the ids"
            )
        return ids[0]

    async def _address(
        self, request: incidents_pb2.AcknowledgeRequest | incidents_pb2.ResolveRequest
    ) -> str:
        """The incident id given, or the open incident of (service, dedup_key)."""
        if request.incident_id:
            return await self._incident_id(request.incident_id)
        if not request.dedup_key:
            raise InvalidArgument(
                [FieldViolation("incident_id", "is required (or service_id and dedup_key)")]
            )
        dedup_key = normalize.dedup_key(request.dedup_key)  # as Trigger filed it
        service = await self._service(request.service_id, request.integration_key)
        incident_id = await self.incidents.find_open(service.id, dedup_key)
        if incident_id is None:
            raise NotFound(
                f"service {service.id!r} has no open incident with dedup key {dedup_key[:80]!r}"
            )
        return incident_id


def _seconds(duration: Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _query(request: incidents_pb2.ListIncidentsRequest) -> IncidentQuery:
    violations: list[FieldViolation] = []
    if request.page_size < 0:
        violations.append(FieldViolation("page_size", "must not be negative"))
    for i, status in enumerate(request.statuses):
        if status not in incidents_pb2.IncidentStatus.values():
            violations.append(FieldViolation(f"statuses[{i}]", f"unknown status {status}"))
    for i, severity in enumerate(request.severities):
        if severity not in common_pb2.Severity.values():
            violations.append(FieldViolation(f"severities[{i}]", f"unknown severity {severity}"))
    after = request.created_after.ToMilliseconds() if request.HasField("created_after") else None
    before = request.created_before.ToMilliseconds() if request.HasField("created_before") else None
    if after is not None and before is not None and after >= before:
        violations.append(FieldViolation("created_before", "must be after created_after"))
    violations += validation.text_violations(
        "summary_contains", request.summary_contains, validation.MAX_SUMMARY
    )
    violations += validation.text_violations(
        "acknowledged_by", request.acknowledged_by, validation.MAX_DISPLAY
    )
    check(violations)
    statuses = set(request.statuses)
    if not statuses or incidents_pb2.INCIDENT_STATUS_UNSPECIFIED in statuses:
        statuses = set(domain.STATUSES)
    severities = set(request.severities)
    if common_pb2.SEVERITY_UNSPECIFIED in severities:
        severities = set()
    return IncidentQuery(
        service_ids=frozenset(request.service_ids),
        statuses=tuple(sorted(statuses)),
        severities=frozenset(severities),
        created_after_ms=after,
        created_before_ms=before,
        summary_contains=request.summary_contains,
        acknowledged_by=request.acknowledged_by,
        page_size=min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
        below=decode_page_token(request.page_token),
    )
