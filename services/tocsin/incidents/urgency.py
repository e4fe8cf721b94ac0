"""Urgency and support hours: how hard a new incident pages, decided once when it opens.

Pure and cheap (no I/O): the ingest path calls `decide` for every alert that opens an
incident. A service's support hours are local windows on days of the week with the same
semantics as a schedule layer's restrictions (tocsin.runtime.windows, shared with
scheduling: DST included), compiled once per distinct configuration and remembered.

The decision carries its reason ("service payments-api: severity info is low"), which the
incident keeps (`urgency_reason`) and its opening timeline entry shows. A low-urgency
incident of a service that defers low urgency outside support hours gets `page_at`, the
start of the next support-hours window: escalation then starts with its first level due
at that moment, on escalation's own durable timer (so a restart or a failover neither
loses nor doubles it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from google.protobuf.duration_pb2 import Duration

from tocsin.runtime.clock import ms_to_datetime
from tocsin.runtime.errors import FieldViolation
from tocsin.runtime.windows import (
    ActiveWindows,
    restriction_from_proto,
    restriction_violations,
)
from tocsin.v1 import common_pb2, incidents_pb2, urgency_pb2

HIGH = common_pb2.URGENCY_HIGH
LOW = common_pb2.URGENCY_LOW
DEFAULT_HIGH_SEVERITIES = (common_pb2.SEVERITY_CRITICAL, common_pb2.SEVERITY_ERROR)
"""URGENCY_MODE_SEVERITY without `high_severities`: critical and error page high."""
MAX_ACK_TIMEOUT_S = 7 * 86400
MIN_ACK_TIMEOUT_S = 60
_HORIZON = timedelta(days=8)
"""Support hours repeat weekly, so the next window begins within a week (and a day)."""


def severity_name(severity: int) -> str:
    name = common_pb2.Severity.Name(common_pb2.Severity.ValueType(severity))
    return name.removeprefix("SEVERITY_").lower()


def urgency_name(urgency: int) -> str:
    return "low" if urgency == LOW else "high"


@dataclass(frozen=True)
class Decision:
    urgency: common_pb2.Urgency.ValueType
    reason: str
    page_at_ms: int | None = None
    """Set when paging waits for support hours: when escalation starts."""


def decide(service: incidents_pb2.Service, severity: int, now_ms: int) -> Decision:
    """The urgency of an incident `service` opens now for an alert of `severity`."""
    rule = service.urgency
    mode = rule.mode
    who = f"service {service.id}"
    if mode == urgency_pb2.URGENCY_MODE_UNSPECIFIED:
        return Decision(HIGH, "")  # no rule: high, as before urgencies (nothing to say)
    if mode == urgency_pb2.URGENCY_MODE_ALWAYS_HIGH:
        return Decision(HIGH, f"{who}: always high")
    hours = support_hours(service)
    inside = hours.contains_ms(now_ms) if hours is not None else None
    if mode == urgency_pb2.URGENCY_MODE_ALWAYS_LOW:
        urgency, reason = LOW, f"{who}: always low"
    elif mode == urgency_pb2.URGENCY_MODE_SEVERITY:
        high = tuple(rule.high_severities) or DEFAULT_HIGH_SEVERITIES
        urgency = HIGH if severity in high else LOW
        reason = f"{who}: severity {severity_name(severity)} is {urgency_name(urgency)}"
    else:  # URGENCY_MODE_SUPPORT_HOURS
        if inside is None:  # no support hours (refused on write; an old record)
            return Decision(HIGH, f"{who}: support hours not set, so high")
        urgency = HIGH if inside != rule.low_inside_support_hours else LOW
        where = "inside" if inside else "outside"
        reason = f"{who}: {where} support hours, so {urgency_name(urgency)}"
    return _deferred(service, hours, inside, urgency, reason, now_ms)


def set_by_rule(
    service: incidents_pb2.Service, level: common_pb2.Urgency.ValueType, rule: str, now_ms: int
) -> Decision:
    """The urgency an event rule set (`rule` names it), deferred as the service defers
    low urgency outside its support hours."""
    hours = support_hours(service)
    inside = hours.contains_ms(now_ms) if hours is not None else None
    level = LOW if level == LOW else HIGH
    return _deferred(service, hours, inside, level, f"event rule {rule}", now_ms)


def _deferred(
    service: incidents_pb2.Service,
    hours: SupportHoursWindows | None,
    inside: bool | None,
    urgency: common_pb2.Urgency.ValueType,
    reason: str,
    now_ms: int,
) -> Decision:
    """`urgency`, waiting for support hours when it is low, outside them, and the service
    defers low urgency."""
    if urgency == LOW and service.urgency.defer_low_outside_support_hours and hours is not None:
        if not inside:
            start = hours.next_start_ms(now_ms)
            if start is not None:
                until = ms_to_datetime(start).isoformat().replace("+00:00", "Z")
                reason += f"; outside support hours, paging waits until {until}"
                return Decision(urgency, reason, start)
    return Decision(urgency, reason)


class SupportHoursWindows:
    """A service's support hours, compiled (see `support_hours`)."""

    def __init__(self, hours: urgency_pb2.SupportHours) -> None:
        self.zone = ZoneInfo(hours.time_zone)
        violations: list[FieldViolation] = []
        restrictions = [restriction_from_proto(w, "w", violations) for w in hours.windows]
        self.windows = ActiveWindows(restrictions, self.zone)

    def contains_ms(self, now_ms: int) -> bool:
        moment = ms_to_datetime(now_ms)
        return self.windows.contains(moment, moment.astimezone(self.zone))

    def next_start_ms(self, now_ms: int) -> int | None:
        start = self.windows.next_start(ms_to_datetime(now_ms), _HORIZON)
        return int(start.timestamp() * 1000) if start is not None else None


@lru_cache(maxsize=256)
def _compiled(raw: bytes) -> SupportHoursWindows | None:
    hours = urgency_pb2.SupportHours.FromString(raw)
    try:
        return SupportHoursWindows(hours)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def support_hours(service: incidents_pb2.Service) -> SupportHoursWindows | None:
    """The service's support hours, or None when it has none (or they cannot be read)."""
    if not service.HasField("support_hours") or not service.support_hours.windows:
        return None
    return _compiled(service.support_hours.SerializeToString(deterministic=True))


def in_support_hours(service: incidents_pb2.Service, now: datetime) -> bool | None:
    """Whether `now` is inside the service's support hours (None: it has none)."""
    hours = support_hours(service)
    return hours.contains_ms(int(now.timestamp() * 1000)) if hours is not None else None


def ack_timeout_ms(service: incidents_pb2.Service) -> int:
    """The service's acknowledgement timeout in ms (0: none)."""
    return duration_ms(service.ack_timeout) if service.HasField("ack_timeout") else 0


def duration_ms(duration: Duration) -> int:
    return duration.seconds * 1000 + duration.nanos // 1_000_000


def violations(service: incidents_pb2.Service, prefix: str = "service") -> list[FieldViolation]:
    """What is wrong with a service's urgency rule, support hours and ack timeout."""
    found: list[FieldViolation] = []
    rule = service.urgency
    if rule.mode not in urgency_pb2.UrgencyMode.values():
        found.append(FieldViolation(f"{prefix}.urgency.mode", f"unknown mode {rule.mode}"))
    for i, severity in enumerate(rule.high_severities):
        if severity not in common_pb2.Severity.values() or severity == 0:
            found.append(
                FieldViolation(
                    f"{prefix}.urgency.high_severities[{i}]", f"unknown severity {severity}"
                )
            )
    if rule.high_severities and rule.mode != urgency_pb2.URGENCY_MODE_SEVERITY:
        found.append(
            FieldViolation(
                f"{prefix}.urgency.high_severities", "is only used with urgency by severity"
            )
        )
    has_hours = service.HasField("support_hours") and bool(
        service.support_hours.windows or service.support_hours.time_zone
    )
    if has_hours:
        hours = service.support_hours
        path = f"{prefix}.support_hours"
        try:
            ZoneInfo(hours.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            found.append(
                FieldViolation(f"{path}.time_zone", f"unknown time zone {hours.time_zone!r}")
            )
        if not hours.windows:
            found.append(FieldViolation(f"{path}.windows", "needs at least one window"))
        for i, window in enumerate(hours.windows):
            window_path = f"{path}.windows[{i}]"
            restriction = restriction_from_proto(window, window_path, found)
            found += restriction_violations(window_path, restriction)
    needs_hours = rule.mode == urgency_pb2.URGENCY_MODE_SUPPORT_HOURS
    if (needs_hours or rule.defer_low_outside_support_hours) and not has_hours:
        what = "urgency by support hours" if needs_hours else "deferring low urgency"
        found.append(FieldViolation(f"{prefix}.support_hours", f"is required for {what}"))
    if service.HasField("ack_timeout"):
        seconds = duration_ms(service.ack_timeout) / 1000
        if seconds and not MIN_ACK_TIMEOUT_S <= seconds <= MAX_ACK_TIMEOUT_S:
            found.append(
                FieldViolation(
                    f"{prefix}.ack_timeout", "must be between 1 minute and 7 days (or 0: none)"
                )
            )
    return found
