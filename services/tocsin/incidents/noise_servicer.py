"""IncidentService RPCs of noise control (routing.proto): event rules, suppressed alerts,
merging incidents and heartbeat monitors. A mixin of IncidentServicer, kept apart so the
ingest and lifecycle RPCs stay readable; it uses the servicer's stores and audit log."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tocsin.incidents import domain, heartbeat, rules, validation
from tocsin.incidents.validation import check
from tocsin.runtime.errors import FieldViolation, NotFound
from tocsin.runtime.ids import id_violations
from tocsin.runtime.telemetry import current_traceparent
from tocsin.v1 import common_pb2, incidents_pb2, routing_pb2

if TYPE_CHECKING:
    from tocsin.incidents.heartbeat import HeartbeatStore
    from tocsin.incidents.routing import Router
    from tocsin.incidents.service_store import ServiceStore
    from tocsin.incidents.store import IncidentStore

log = logging.getLogger(__name__)

MAX_SUPPRESSED_PAGE = 1000


class NoiseControlRpcs:
    router: Router
    services: ServiceStore
    incidents: IncidentStore
    heartbeats: HeartbeatStore

    async def _audit(self, action: str, kind: str, object_id: str, before: Any, after: Any) -> None:
        audit = getattr(self, "audit", None)
        if audit is not None:
            await audit.record(action, kind, object_id, before, after)

    # event rules

    async def SetEventRules(
        self, request: routing_pb2.SetEventRulesRequest, context: Any
    ) -> routing_pb2.SetEventRulesResponse:
        rule_set = request.rule_set
        check(rules.rule_set_violations(rule_set))
        if request.validate_only:  # the services named may be created in the same apply
            return routing_pb2.SetEventRulesResponse(rule_set=rule_set)
        missing: list[FieldViolation] = []
        if rule_set.service_id and await self.services.find(service_id=rule_set.service_id) is None:
            raise NotFound(f"service {rule_set.service_id!r} does not exist")
        for i, rule in enumerate(rule_set.rules):
            target = rule.actions.route_to_service_id
            if target and await self.services.find(service_id=target) is None:
                missing.append(
                    FieldViolation(
                        f"rule_set.rules[{i}].actions.route_to_service_id",
                        f"service {target!r} does not exist",
                    )
                )
        check(missing)
        before = await self.router.store.get(rule_set.service_id)
        stored = await self.router.store.put(rule_set)
        self.router.cache.invalidate()
        scope = rule_set.service_id or rules.GLOBAL
        await self._audit("event_rules.set", "event_rules", scope, before, stored)
        return routing_pb2.SetEventRulesResponse(rule_set=stored)

    async def GetEventRules(
        self, request: routing_pb2.GetEventRulesRequest, context: Any
    ) -> routing_pb2.GetEventRulesResponse:
        if request.service_id:
            check(validation.service_id_violations("service_id", request.service_id))
        rule_set = await self.router.store.get(request.service_id)
        return routing_pb2.GetEventRulesResponse(rule_set=rule_set)

    async def ListEventRules(
        self, request: routing_pb2.ListEventRulesRequest, context: Any
    ) -> routing_pb2.ListEventRulesResponse:
        _, sets = await self.router.store.all()
        return routing_pb2.ListEventRulesResponse(rule_sets=sets)

    async def ListSuppressedAlerts(
        self, request: routing_pb2.ListSuppressedAlertsRequest, context: Any
    ) -> routing_pb2.ListSuppressedAlertsResponse:
        if request.service_id:
            check(validation.service_id_violations("service_id", request.service_id))
        if not 0 <= request.page_size <= MAX_SUPPRESSED_PAGE:
            check([FieldViolation("page_size", f"must be between 0 and {MAX_SUPPRESSED_PAGE}")])
        alerts, total = await self.router.store.suppressed(
            request.service_id, request.page_size or 50
        )
        return routing_pb2.ListSuppressedAlertsResponse(alerts=alerts, total=total)

    # merging

    async def MergeIncidents(
        self, request: incidents_pb2.MergeIncidentsRequest, context: Any
    ) -> incidents_pb2.MergeIncidentsResponse:
        target = validation.parse_incident_id(request.incident_id)
        merged = validation.parse_incident_id(request.merged_incident_id, "merged_incident_id")
        if target == merged:
            check([FieldViolation("merged_incident_id", "must differ from incident_id")])
        actor = self._actor(request.actor)  # type: ignore[attr-defined]
        incident, moved = await self.incidents.merge(target, merged, actor, current_traceparent())
        return incidents_pb2.MergeIncidentsResponse(incident=incident, alerts_moved=moved)

    # heartbeat monitors

    async def CreateHeartbeatMonitor(
        self, request: routing_pb2.CreateHeartbeatMonitorRequest, context: Any
    ) -> routing_pb2.CreateHeartbeatMonitorResponse:
        monitor = await self._put_monitor(request.monitor, True, request.validate_only)
        return routing_pb2.CreateHeartbeatMonitorResponse(monitor=monitor)

    async def UpdateHeartbeatMonitor(
        self, request: routing_pb2.UpdateHeartbeatMonitorRequest, context: Any
    ) -> routing_pb2.UpdateHeartbeatMonitorResponse:
        monitor = await self._put_monitor(request.monitor, False, request.validate_only)
        return routing_pb2.UpdateHeartbeatMonitorResponse(monitor=monitor)

    async def _put_monitor(
        self, monitor: routing_pb2.HeartbeatMonitor, create: bool, validate_only: bool
    ) -> routing_pb2.HeartbeatMonitor:
        check(heartbeat.monitor_violations(monitor))
        if not validate_only and await self.services.find(service_id=monitor.service_id) is None:
            raise NotFound(f"service {monitor.service_id!r} does not exist")
        before = None if create or validate_only else await self._monitor_or_none(monitor.id)
        stored = await self.heartbeats.put(monitor, create=create, validate_only=validate_only)
        if not validate_only:
            action = "heartbeat.create" if create else "heartbeat.update"
            await self._audit(action, "heartbeat", stored.id, _secret(before), _secret(stored))
        return stored

    async def _monitor_or_none(self, monitor_id: str) -> routing_pb2.HeartbeatMonitor | None:
        try:
            return await self.heartbeats.get(monitor_id)
        except NotFound:
            return None

    async def GetHeartbeatMonitor(
        self, request: routing_pb2.GetHeartbeatMonitorRequest, context: Any
    ) -> routing_pb2.GetHeartbeatMonitorResponse:
        check(id_violations(request.id, "id"))
        return routing_pb2.GetHeartbeatMonitorResponse(
            monitor=await self.heartbeats.get(request.id)
        )

    async def ListHeartbeatMonitors(
        self, request: routing_pb2.ListHeartbeatMonitorsRequest, context: Any
    ) -> routing_pb2.ListHeartbeatMonitorsResponse:
        return routing_pb2.ListHeartbeatMonitorsResponse(monitors=await self.heartbeats.list())

    async def DeleteHeartbeatMonitor(
        self, request: routing_pb2.DeleteHeartbeatMonitorRequest, context: Any
    ) -> routing_pb2.DeleteHeartbeatMonitorResponse:
        check(id_violations(request.id, "id"))
        before = await self._monitor_or_none(request.id)
        if not await self.heartbeats.delete(request.id):
            raise NotFound(f"heartbeat monitor {request.id!r} does not exist")
        await self._audit("heartbeat.delete", "heartbeat", request.id, _secret(before), None)
        return routing_pb2.DeleteHeartbeatMonitorResponse()

    async def PingHeartbeat(
        self, request: routing_pb2.PingHeartbeatRequest, context: Any
    ) -> routing_pb2.PingHeartbeatResponse:
        token = request.token
        if not heartbeat.MIN_TOKEN <= len(token) <= heartbeat.MAX_TOKEN:
            raise NotFound("no heartbeat monitor has this token")
        pinged = await self.heartbeats.ping(token)
        if pinged is None:
            raise NotFound("no heartbeat monitor has this token")
        monitor, was_missed = pinged
        recovered = False
        if was_missed:
            recovered = await self.heartbeat_recovered(monitor)
        return routing_pb2.PingHeartbeatResponse(monitor_id=monitor.id, recovered=recovered)

    async def heartbeat_recovered(self, monitor: routing_pb2.HeartbeatMonitor) -> bool:
        """Resolve the monitor's open incident (a ping came after a miss)."""
        incident_id = await self.incidents.find_open(
            monitor.service_id, heartbeat.dedup_key(monitor.id)
        )
        if incident_id is None:
            return False
        actor = heartbeat_actor(monitor)
        await self.incidents.change(
            incident_id,
            lambda current, now: domain.resolve(current, actor, now),
            current_traceparent(),
        )
        return True

    async def open_heartbeat_incident(self, monitor: routing_pb2.HeartbeatMonitor) -> None:
        """The heartbeat timer fired: open the monitor's incident unless one is open."""
        service = await self.services.lookup(service_id=monitor.service_id)
        if service is None:
            log.error(
                "heartbeat monitor %s missed, but its service %s no longer exists",
                monitor.id,
                monitor.service_id,
            )
            return
        key = heartbeat.dedup_key(monitor.id)
        if await self.incidents.find_open(service.id, key) is not None:
            return  # opened by an earlier firing of this timer
        span = monitor.interval.seconds + monitor.grace.seconds
        alert = incidents_pb2.Alert(
            summary=f"Heartbeat missed: {monitor.name or monitor.id} (no ping for {span}s)",
            severity=common_pb2.SEVERITY_CRITICAL,
            source="tocsin heartbeat",
            component=monitor.id,
        )
        await self.incidents.trigger(service, key, alert, heartbeat_actor(monitor), "")
        if not await self._still_missed(monitor.id):
            # A ping came between marking the monitor missed and opening the incident: the
            # ping found no incident to resolve, so resolve it here.
            await self.heartbeat_recovered(monitor)

    async def _still_missed(self, monitor_id: str) -> bool:
        try:
            return (await self.heartbeats.get(monitor_id)).missed
        except NotFound:  # deleted meanwhile
            return False


def heartbeat_actor(monitor: routing_pb2.HeartbeatMonitor) -> common_pb2.Actor:
    return common_pb2.Actor(display=f"heartbeat {monitor.id}", channel=common_pb2.CHANNEL_AUTO)


def _secret(monitor: routing_pb2.HeartbeatMonitor | None) -> routing_pb2.HeartbeatMonitor | None:
    """A monitor for the audit log: without its token (a secret)."""
    if monitor is None:
        return None
    copy = routing_pb2.HeartbeatMonitor()
    copy.CopyFrom(monitor)
    copy.token = "***" if copy.token else ""
    for name in ("last_ping_at", "deadline", "missed"):
        copy.ClearField(name)
    return copy
