"""Input checks for the incidents service, each violation named by its proto field path.

Paths use the field names of the request messages (`summary`, `links[2].href`,
`service.integration_key`), so the gRPC layer hands them on unchanged as
`google.rpc.BadRequest` field violations and the HTTP gateway can translate them into its
own names. Every check runs before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from google.protobuf.struct_pb2 import Struct

from tocsin.client.limits import (
    DETAILS_TOO_DEEP,
    INTEGRATION_KEY_LENGTH,
    MAX_DETAILS_BYTES,
    MAX_DETAILS_DEPTH,
    details_depth,
)
from tocsin.incidents import urgency
from tocsin.incidents.rules import grouping_violations
from tocsin.runtime.errors import FieldViolation, InvalidArgument
from tocsin.runtime.ids import id_violations
from tocsin.v1 import common_pb2, incidents_pb2

MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255
MAX_LABEL = 1024
"""source, component, group, class and link texts."""
MAX_LINKS = 50
MAX_URL = 2048
MAX_ID = 128
MAX_DISPLAY = 255
MAX_NOTE = 4096
MAX_ATTRIBUTES = 50
# Enum .values() builds a new list on every call; the ingest path checks these per alert.
_CHANNELS = frozenset(common_pb2.Channel.values())
_SEVERITIES = frozenset(common_pb2.Severity.values())
_TIMELINE_KINDS = frozenset(incidents_pb2.TimelineKind.values())
MAX_IDEMPOTENCY_KEY = 255
MIN_SNOOZE_S = 60
MAX_SNOOZE_S = 7 * 86400

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_INTEGRATION_KEY = re.compile(r"[A-Za-z0-9]{32}")
_INCIDENT_ID = re.compile(r"[1-9][0-9]{0,17}")
MAX_TIMESTAMP_S = 253402300799  # 9999-12-31T23:59:59Z


def text_violations(
    field: str, value: str, max_len: int, *, required: bool = False, multiline: bool = False
) -> list[FieldViolation]:
    """Presence, length, valid UTF-8 and (unless `multiline`) no control characters."""
    if required and not value.strip():
        return [FieldViolation(field, "is required")]
    if len(value) > max_len:
        return [FieldViolation(field, f"must be at most {max_len} characters, got {len(value)}")]
    if _SURROGATE.search(value):
        return [FieldViolation(field, "must be valid UTF-8")]
    control = _CONTROL.search(value.replace("\n", "").replace("\t", "") if multiline else value)
    if control:
        return [
            FieldViolation(field, f"must not contain control characters (found {control[0]!r})")
        ]
    return []


def check(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(violations)


def parse_incident_id(value: str, field: str = "incident_id") -> str:
    """The canonical decimal id; INVALID_ARGUMENT naming `field` otherwise."""
    if not value:
        raise InvalidArgument.one(field, "is required")
    if not _INCIDENT_ID.fullmatch(value):
        raise InvalidArgument.one(
            field, f"must be a decimal incident id or a number as '#18', got {value[:40]!r}"
        )
    return value


def parse_incident_number(value: str, field: str = "incident_id") -> int | None:
    """The number of a reference written "#18"; None for anything else (an id)."""
    if not value.startswith("#"):
        return None
    if not _INCIDENT_ID.fullmatch(value[1:]):
        raise InvalidArgument.one(field, f"must be an incident number as '#18', got {value[:40]!r}")
    return int(value[1:])


def service_id_violations(field: str, value: str) -> list[FieldViolation]:
    if not value:
        return [FieldViolation(field, "is required")]
    return id_violations(value, field)


def optional_id_violations(field: str, value: str) -> list[FieldViolation]:
    return id_violations(value, field) if value else []


def integration_key_violations(field: str, value: str) -> list[FieldViolation]:
    if not _INTEGRATION_KEY.fullmatch(value):
        return [FieldViolation(field, f"must be {INTEGRATION_KEY_LENGTH} letters or digits")]
    return []


def service_violations(
    service: incidents_pb2.Service, prefix: str = "service"
) -> list[FieldViolation]:
    """A service to store (its integration key already generated when it was empty)."""
    return [
        *service_id_violations(f"{prefix}.id", service.id),
        *text_violations(f"{prefix}.name", service.name, MAX_DISPLAY),
        *integration_key_violations(f"{prefix}.integration_key", service.integration_key),
        *optional_id_violations(f"{prefix}.escalation_policy_id", service.escalation_policy_id),
        *grouping_violations(service.grouping, f"{prefix}.grouping"),
        *urgency.violations(service, prefix),
    ]


def actor_violations(actor: common_pb2.Actor, prefix: str = "actor") -> list[FieldViolation]:
    violations = [
        *text_violations(f"{prefix}.user_id", actor.user_id, MAX_ID),
        *text_violations(f"{prefix}.display", actor.display, MAX_DISPLAY),
    ]
    if actor.channel not in _CHANNELS:
        violations.append(FieldViolation(f"{prefix}.channel", f"unknown channel {actor.channel}"))
    return violations


def details_violations(details: Struct, field: str = "details") -> list[FieldViolation]:
    """Details past the limits of tocsin.client.limits (checked before normalisation
    adds its own keys)."""
    size = details.ByteSize()
    if size > MAX_DETAILS_BYTES:
        return [
            FieldViolation(field, f"must be at most {MAX_DETAILS_BYTES} bytes encoded, got {size}")
        ]
    if details_depth(details) > MAX_DETAILS_DEPTH:
        return [FieldViolation(field, DETAILS_TOO_DEEP)]
    return []


def alert_violations(alert: incidents_pb2.Alert, dedup_key: str) -> list[FieldViolation]:
    """An incoming alert, once normalised (normalize.py; its details were checked before):
    what normalising cannot mend. Paths are those of TriggerRequest (which shares the
    names)."""
    violations = [
        *text_violations("dedup_key", dedup_key, MAX_DEDUP_KEY),
        *text_violations("summary", alert.summary, MAX_SUMMARY, required=True),
        *text_violations("source", alert.source, MAX_LABEL),
        *text_violations("component", alert.component, MAX_LABEL),
        *text_violations("group", alert.group, MAX_LABEL),
        *text_violations("class", getattr(alert, "class"), MAX_LABEL),
    ]
    if alert.severity not in _SEVERITIES:
        violations.append(FieldViolation("severity", f"unknown severity {alert.severity}"))
    violations += links_violations(alert.links)
    if alert.HasField("occurred_at") and not 0 <= alert.occurred_at.seconds <= MAX_TIMESTAMP_S:
        violations.append(FieldViolation("occurred_at", "must be between 1970 and 9999"))
    return violations


def trigger_violations(
    alert: incidents_pb2.Alert, dedup_key: str, actor: common_pb2.Actor
) -> list[FieldViolation]:
    """Everything wrong with a Trigger request's alert, dedup key and actor."""
    return [*alert_violations(alert, dedup_key), *actor_violations(actor)]


def links_violations(links: Sequence[common_pb2.Link]) -> list[FieldViolation]:
    items = list(links)
    if len(items) > MAX_LINKS:
        return [FieldViolation("links", f"must have at most {MAX_LINKS} entries, got {len(items)}")]
    violations: list[FieldViolation] = []
    for i, link in enumerate(items):
        field = f"links[{i}].href"
        problems = text_violations(field, link.href, MAX_URL, required=True)
        if not problems:
            try:
                parts = urlsplit(link.href)
                valid = parts.scheme in ("http", "https") and bool(parts.netloc)
            except ValueError:  # e.g. an unclosed IPv6 bracket
                valid = False
            if not valid:
                problems = [FieldViolation(field, "must be an http:// or https:// URL")]
        violations += problems
        violations += text_violations(f"links[{i}].text", link.text, MAX_LABEL)
    return violations


def assignment_violations(
    assignment: incidents_pb2.Assignment, field: str = "assignment"
) -> list[FieldViolation]:
    target = assignment.WhichOneof("target")
    if target is None:
        return [FieldViolation(field, "must name a user_id or an escalation_policy_id")]
    value = getattr(assignment, target)
    if not value:
        return [FieldViolation(f"{field}.{target}", "is required")]
    return id_violations(value, f"{field}.{target}")


def snooze_violations(seconds: float, field: str = "duration") -> list[FieldViolation]:
    if not MIN_SNOOZE_S <= seconds <= MAX_SNOOZE_S:
        return [FieldViolation(field, "must be between 1 minute and 7 days")]
    return []


def timeline_entry_violations(
    entry: incidents_pb2.TimelineEntry, prefix: str = "entry"
) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    if entry.kind == incidents_pb2.TIMELINE_KIND_UNSPECIFIED:
        violations.append(FieldViolation(f"{prefix}.kind", "is required"))
    elif entry.kind not in _TIMELINE_KINDS:
        violations.append(FieldViolation(f"{prefix}.kind", f"unknown kind {entry.kind}"))
    violations += text_violations(f"{prefix}.message", entry.message, MAX_NOTE, multiline=True)
    violations += actor_violations(entry.actor, f"{prefix}.actor")
    if len(entry.attributes) > MAX_ATTRIBUTES:
        violations.append(
            FieldViolation(f"{prefix}.attributes", f"must have at most {MAX_ATTRIBUTES} entries")
        )
    for key, value in sorted(entry.attributes.items()):
        violations += text_violations(f"{prefix}.attributes[{key!r}]", key, MAX_ID, required=True)
        violations += text_violations(f"{prefix}.attributes[{key!r}]", value, MAX_LABEL)
    return violations
