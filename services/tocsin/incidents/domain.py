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

from tocsin.incidents import urgency
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
    service: incidents_pb2.Service,
    dedup_key: str,
    alert: incidents_pb2.Alert,
    now_ms: int,
    urgency_rule: tuple[common_pb2.Urgency.ValueType, str] | None = None,
) -> incidents_pb2.Incident:
    """A new incident for `alert`, without its id (the store's script allocates it);
    `urgency_rule` is (urgency, event rule) when an event rule set its urgency."""
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
    if urgency_rule is not None:
        decision = urgency.set_by_rule(service, urgency_rule[0], urgency_rule[1], now_ms)
    else:
        decision = urgency.decide(service, alert.severity, now_ms)
    incident.urgency = decision.urgency
    incident.urgency_reason = decision.reason
    if decision.page_at_ms is not None:
        incident.page_at.CopyFrom(timestamp(decision.page_at_ms))
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
    alert: incidents_pb2.Alert,
    actor: common_pb2.Actor,
    now_ms: int,
    incident: incidents_pb2.Incident | None = None,
) -> incidents_pb2.TimelineEntry:
    """The timeline entry for `alert` opening `incident`: its urgency and what decided it
    (and, when paging waits for support hours, until when)."""
    if incident is None or not incident.urgency_reason:
        return entry(
            incidents_pb2.TIMELINE_KIND_TRIGGERED, now_ms, actor, f"Triggered: {alert.summary}"
        )
    level = urgency.urgency_name(incident.urgency)
    attributes = {"urgency": level, "urgency_reason": incident.urgency_reason}
    if incident.HasField("page_at"):
        attributes["page_at"] = iso(to_ms(incident.page_at))
    return entry(
        incidents_pb2.TIMELINE_KIND_TRIGGERED,
        now_ms,
        actor,
        f"Triggered ({level} urgency, {incident.urgency_reason}): {alert.summary}",
        **attributes,
    )


def iso(ms: int) -> str:
    return ms_to_datetime(ms).isoformat().replace("+00:00", "Z")


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
    redirect_dedup: str = ""
    """With release_dedup: the dedup entry becomes this merge redirect (keys.redirect)
    instead of being deleted."""

    @property
    def snooze_due_ms(self) -> int:
        """When the incident's one timer is due: the snooze's end, or the ack timeout's."""
        if self.incident.HasField("snoozed_until"):
            return to_ms(self.incident.snoozed_until)
        return to_ms(self.incident.ack_timeout_at)


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
    """Clear a snooze or an ack timeout on `incident` (a copy being changed); CANCEL if
    there was one (they share the incident's one timer)."""
    if not incident.HasField("snoozed_until") and not incident.HasField("ack_timeout_at"):
        return SnoozeTimer.KEEP
    incident.ClearField("snoozed_until")
    incident.ClearField("ack_timeout_at")
    return SnoozeTimer.CANCEL


def acknowledge(
    current: incidents_pb2.Incident,
    actor: common_pb2.Actor,
    now_ms: int,
    ack_timeout_ms: int = 0,
) -> Change | None:
    """Acknowledge; on a snoozed incident this ends the snooze (it stays acknowledged).

    With an ack timeout (the service's, `ack_timeout_ms` > 0) the incident is triggered
    again that long after, unless resolved first: the incident's timer (shared with
    snoozes) is armed for `ack_timeout_at`, and a new acknowledgement, even of an
    acknowledged incident, starts the timeout again (so it is not a no-op then)."""
    _refuse_resolved(current, "acknowledged")
    snoozed = current.HasField("snoozed_until")
    if current.status == ACKNOWLEDGED and not snoozed and ack_timeout_ms <= 0:
        return None
    incident = _copy(current)
    again = current.status == ACKNOWLEDGED and not snoozed
    incident.status = ACKNOWLEDGED
    incident.acknowledged_at.CopyFrom(timestamp(now_ms))
    incident.acknowledged_by.CopyFrom(actor)
    timer = _unsnoozed(incident)
    message = f"Acknowledged {'again ' if again else ''}by {actor_name(actor)}"
    attributes: dict[str, str] = {}
    if ack_timeout_ms > 0:
        until = now_ms + ack_timeout_ms
        incident.ack_timeout_at.CopyFrom(timestamp(until))
        timer = SnoozeTimer.ARM
        attributes["ack_timeout_at"] = iso(until)
        message += (
            f"; pages again at {iso(until)} unless resolved "
            f"(ack timeout {_minutes(ack_timeout_ms)} of service {current.service_id})"
        )
    return Change(
        incident,
        incidents_pb2.INCIDENT_EVENT_KIND_ACKNOWLEDGED,
        entry(incidents_pb2.TIMELINE_KIND_ACKNOWLEDGED, now_ms, actor, message, **attributes),
        timer,
    )


def _minutes(ms: int) -> str:
    minutes = ms // 60_000
    if minutes % 60 == 0:
        return f"{minutes // 60}h"
    return f"{minutes}m" if ms % 60_000 == 0 else f"{ms // 1000}s"


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
    incident.ClearField("ack_timeout_at")  # the snooze's end replaces it (one timer)
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
    """The incident's timer that was due at `due_ms` fired: a snooze ended, or an
    acknowledgement timed out. Trigger again, unless that snooze or acknowledgement is no
    longer current (acknowledged again, resolved, reassigned or snoozed anew since)."""
    if current.status != ACKNOWLEDGED:
        return None
    if current.HasField("snoozed_until"):
        if to_ms(current.snoozed_until) != due_ms:
            return None
        message, attributes = "Snooze ended; triggered again", {}
    elif current.HasField("ack_timeout_at") and to_ms(current.ack_timeout_at) == due_ms:
        held = due_ms - to_ms(current.acknowledged_at)
        message = (
            f"Acknowledged for {_minutes(held)} and not resolved (ack timeout of service "
            f"{current.service_id}); triggered again, escalation starts over"
        )
        attributes = {"reason": "ack_timeout"}
    else:
        return None
    incident = _copy(current)
    incident.status = TRIGGERED
    incident.ClearField("snoozed_until")
    incident.ClearField("ack_timeout_at")
    return Change(
        incident,
        incidents_pb2.INCIDENT_EVENT_KIND_UNSNOOZED,
        entry(incidents_pb2.TIMELINE_KIND_UNSNOOZED, now_ms, AUTO_ACTOR, message, **attributes),
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
