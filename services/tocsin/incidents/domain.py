"""Incident lifecycle rules, without I/O: what a new incident is and what each action changes.

The state is the protobuf `Incident` itself, which is also its stored form. A transition
takes the current incident and returns a `Change` (the new incident, its timeline entry,
its event and what happens to the snooze timer), or None when the action changes nothing,
like a repeated acknowledgement. Acting on a resolved incident raises FailedPrecondition,
except resolving it again, which changes nothing.

The counters that repeat alerts move (alert_count, severity, last_alert_at) and the
bookkeeping of every write (version, updated_at) belong to the store's scripts, which
apply them atomically; transitions leave them alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from tocsin.runtime.clock import ms_to_datetime
from tocsin.runtime.errors import FailedPrecondition
from tocsin.runtime.events import INCIDENT_SHARDS
from tocsin.runtime.timers import shard_of
from tocsin.v1 import common_pb2, incidents_pb2

TRIGGERED = incidents_pb2.INCIDENT_STATUS_TRIGGERED
ACKNOWLEDGED = incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED
RESOLVED = incidents_pb2.INCIDENT_STATUS_RESOLVED
STATUSES = (TRIGGERED, ACKNOWLEDGED, RESOLVED)

AUTO_ACTOR = common_pb2.Actor(channel=common_pb2.CHANNEL_AUTO, display="tocsin")


def timestamp(ms: int) -> Timestamp:
    return Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def to_ms(ts: Timestamp) -> int:
    return int(ts.ToMilliseconds())


def dedup_field(service_id: str, dedup_key: str) -> str:
    """The dedup index entry of (service, key); service ids cannot contain ':'."""
    return f"{service_id}:{dedup_key}"


def dedup_shard(service_id: str, dedup_key: str) -> int:
    """The shard a new incident for (service, key) goes to, where its dedup entry lives."""
    return shard_of(dedup_field(service_id, dedup_key), INCIDENT_SHARDS)


def actor_name(actor: common_pb2.Actor) -> str:
    if actor.user_id or actor.display:
        return actor.user_id or actor.display
    return common_pb2.Channel.Name(actor.channel).removeprefix("CHANNEL_").lower()


def normalized_actor(actor: common_pb2.Actor) -> common_pb2.Actor:
    """The actor with an unspecified channel read as API."""
    result = common_pb2.Actor()
    result.CopyFrom(actor)
    if result.channel == common_pb2.CHANNEL_UNSPECIFIED:
        result.channel = common_pb2.CHANNEL_API
    return result


def alert_of(request: incidents_pb2.TriggerRequest) -> incidents_pb2.Alert:
    """The alert a Trigger request carries (the fields share their names)."""
    alert = incidents_pb2.Alert(
        summary=request.summary,
        severity=request.severity,
        source=request.source,
        component=request.component,
        group=request.group,
        details=request.details,
        links=request.links,
    )
    setattr(alert, "class", getattr(request, "class"))
    if request.HasField("occurred_at"):
        alert.occurred_at.CopyFrom(request.occurred_at)
    return alert


def received_alert(alert: incidents_pb2.Alert, actor: common_pb2.Actor, now_ms: int) -> None:
    """Complete an incoming alert in place: default severity, arrival time, channel."""
    if alert.severity == common_pb2.SEVERITY_UNSPECIFIED:
        alert.severity = common_pb2.SEVERITY_CRITICAL
    alert.received_at.CopyFrom(timestamp(now_ms))
    alert.channel = actor.channel


def new_incident(
    service: incidents_pb2.Service, dedup_key: str, alert: incidents_pb2.Alert, now_ms: int
) -> incidents_pb2.Incident:
    """A new incident for `alert`, without its id (the store's script allocates it)."""
    incident = incidents_pb2.Incident(
        service_id=service.id,
        status=TRIGGERED,
        summary=alert.summary,
        source=alert.source,
        dedup_key=dedup_key,
        links=alert.links,
        created_at=timestamp(now_ms),
    )
    if service.escalation_policy_id:
        incident.assignment.escalation_policy_id = service.escalation_policy_id
    return incident


def entry(
    kind: incidents_pb2.TimelineKind.ValueType,
    now_ms: int,
    actor: common_pb2.Actor,
    message: str,
    **attributes: str,
) -> incidents_pb2.TimelineEntry:
    return incidents_pb2.TimelineEntry(
        at=timestamp(now_ms), kind=kind, message=message, actor=actor, attributes=attributes
    )


def opened_entry(
    alert: incidents_pb2.Alert, actor: common_pb2.Actor, now_ms: int
) -> incidents_pb2.TimelineEntry:
    """The timeline entry for `alert` opening an incident."""
    return entry(
        incidents_pb2.TIMELINE_KIND_TRIGGERED, now_ms, actor, f"Triggered: {alert.summary}"
    )


def joined_entry(
    alert: incidents_pb2.Alert, actor: common_pb2.Actor, now_ms: int
) -> incidents_pb2.TimelineEntry:
    """The timeline entry for `alert` joining an open incident."""
    return entry(incidents_pb2.TIMELINE_KIND_ALERT, now_ms, actor, f"Alert: {alert.summary}")


def event_prefix(
    kind: incidents_pb2.IncidentEventKind.ValueType,
    now_ms: int,
    actor: common_pb2.Actor,
    traceparent: str,
    note: str = "",
) -> bytes:
    """An IncidentEvent without its incident and alert, which the store's script appends
    (protobuf decodes concatenated fields as one message)."""
    event = incidents_pb2.IncidentEvent(
        kind=kind, at=timestamp(now_ms), actor=actor, traceparent=traceparent, note=note
    )
    return event.SerializeToString()


class SnoozeTimer(enum.Enum):
    KEEP = "keep"
    ARM = "arm"
    CANCEL = "cancel"


@dataclass(frozen=True)
class Change:
    """What one action does to an incident; the store writes it all or nothing."""

    incident: incidents_pb2.Incident
    event_kind: incidents_pb2.IncidentEventKind.ValueType
    entry: incidents_pb2.TimelineEntry
    snooze_timer: SnoozeTimer = SnoozeTimer.KEEP
    release_dedup: bool = False

    @property
    def snooze_due_ms(self) -> int:
        return to_ms(self.incident.snoozed_until)


def _copy(incident: incidents_pb2.Incident) -> incidents_pb2.Incident:
    result = incidents_pb2.Incident()
    result.CopyFrom(incident)
    result.ClearField("alerts")
    result.ClearField("timeline")
    return result


def _refuse_resolved(incident: incidents_pb2.Incident, action: str) -> None:
    if incident.status == RESOLVED:
        raise FailedPrecondition(f"incident {incident.id} is resolved; it cannot be {action}")


def _unsnoozed(incident: incidents_pb2.Incident) -> SnoozeTimer:
    """Clear a snooze on `incident` (a copy being changed); CANCEL if there was one."""
    if not incident.HasField("snoozed_until"):
        return SnoozeTimer.KEEP
    incident.ClearField("snoozed_until")
    return SnoozeTimer.CANCEL


def acknowledge(
    current: incidents_pb2.Incident, actor: common_pb2.Actor, now_ms: int
) -> Change | None:
    """Acknowledge; on a snoozed incident this ends the snooze (it stays acknowledged)."""
    _refuse_resolved(current, "acknowledged")
    if current.status == ACKNOWLEDGED and not current.HasField("snoozed_until"):
        return None
    incident = _copy(current)
    incident.status = ACKNOWLEDGED
    incident.acknowledged_at.CopyFrom(timestamp(now_ms))
    incident.acknowledged_by.CopyFrom(actor)
    timer = _unsnoozed(incident)
    message = f"Acknowledged by {actor_name(actor)}"
    return Change(
        incident,
        incidents_pb2.INCIDENT_EVENT_KIND_ACKNOWLEDGED,
        entry(incidents_pb2.TIMELINE_KIND_ACKNOWLEDGED, now_ms, actor, message),
        timer,
    )


def resolve(current: incidents_pb2.Incident, actor: common_pb2.Actor, now_ms: int) -> Change | None:
    """Resolve; frees the dedup key. Resolving a resolved incident changes nothing."""
    if current.status == RESOLVED:
        return None
    incident = _copy(current)
    incident.status = RESOLVED
    incident.resolved_at.CopyFrom(timestamp(now_ms))
    incident.resolved_by.CopyFrom(actor)
    timer = _unsnoozed(incident)
    return Change(
        incident,
        incidents_pb2.INCIDENT_EVENT_KIND_RESOLVED,
        entry(
            incidents_pb2.TIMELINE_KIND_RESOLVED, now_ms, actor, f"Resolved by {actor_name(actor)}"
        ),
        timer,
        release_dedup=True,
    )


def snooze(
    current: incidents_pb2.Incident, duration_ms: int, actor: common_pb2.Actor, now_ms: int
) -> Change:
    """Acknowledge until now + duration, then trigger again (a later snooze replaces it)."""
    _refuse_resolved(current, "snoozed")
    incident = _copy(current)
    incident.status = ACKNOWLEDGED
    incident.acknowledged_at.CopyFrom(timestamp(now_ms))
    incident.acknowledged_by.CopyFrom(actor)
    until = now_ms + duration_ms
    incident.snoozed_until.CopyFrom(timestamp(until))
    until_text = ms_to_datetime(until).isoformat().replace("+00:00", "Z")
    return Change(
        incident,
        incidents_pb2.INCIDENT_EVENT_KIND_SNOOZED,
        entry(
            incidents_pb2.TIMELINE_KIND_SNOOZED,
            now_ms,
            actor,
            f"Snoozed by {actor_name(actor)} until {until_text}",
            until=until_text,
        ),
        SnoozeTimer.ARM,
    )


def unsnooze(current: incidents_pb2.Incident, due_ms: int, now_ms: int) -> Change | None:
    """The snooze that was due at `due_ms` ended: trigger again, unless that snooze is no
    longer current (acknowledged, resolved, reassigned or snoozed anew since)."""
    if current.status != ACKNOWLEDGED or not current.HasField("snoozed_until"):
        return None
    if to_ms(current.snoozed_until) != due_ms:
        return None
    incident = _copy(current)
    incident.status = TRIGGERED
    incident.ClearField("snoozed_until")
    return Change(
        incident,
        incidents_pb2.INCIDENT_EVENT_KIND_UNSNOOZED,
        entry(
            incidents_pb2.TIMELINE_KIND_UNSNOOZED,
            now_ms,
            AUTO_ACTOR,
            "Snooze ended; triggered again",
        ),
    )


def reassign(
    current: incidents_pb2.Incident,
    assignment: incidents_pb2.Assignment,
    actor: common_pb2.Actor,
    now_ms: int,
) -> Change:
    """Hand the incident to a user or a policy; it is triggered again so escalation
    restarts for them (a snooze ends)."""
    _refuse_resolved(current, "reassigned")
    incident = _copy(current)
    incident.assignment.CopyFrom(assignment)
    incident.status = TRIGGERED
    timer = _unsnoozed(incident)
    target = assignment.WhichOneof("target") or ""
    value = getattr(assignment, target) if target else ""
    label = "user" if target == "user_id" else "escalation policy"
    return Change(
        incident,
        incidents_pb2.INCIDENT_EVENT_KIND_REASSIGNED,
        entry(
            incidents_pb2.TIMELINE_KIND_REASSIGNED,
            now_ms,
            actor,
            f"Reassigned to {label} {value} by {actor_name(actor)}",
            **{target: value},
        ),
        timer,
    )
