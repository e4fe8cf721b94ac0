"""Outgoing webhook subscriptions and stakeholder subscriptions: the pure part.

- Which events a subscription takes (`selects`), and the JSON a receiver gets for one
  (`render_event`): the same bytes on every attempt, with an `event_id` that is stable
  across retries and crashes (the incident id and the event's stream entry id), for the
  receiver to de-duplicate by.
- The retry schedule (`retry_delay_ms`): quick at first, then every half hour, for
  `MAX_RETRY_AGE_MS` (a day) after the first failure; a Retry-After from the receiver is
  honoured up to the schedule's longest step.
- Validation of what an administrator or responder sends (`validated_webhook`,
  `validated_subscription`): every problem named by its request field, nothing written.

The secret signs requests (channels/webhook.py `sign`: one implementation for pages and
subscriptions) and never leaves the notification process: not in responses, logs,
errors or the audit log (`without_secret`).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from tocsin.notification.channels.webhook import normalize_url
from tocsin.runtime.errors import FieldViolation, InvalidArgument
from tocsin.runtime.ids import id_violations
from tocsin.v1 import common_pb2, incidents_pb2, webhooks_pb2

_K = incidents_pb2
EVENT_TYPES: dict[int, str] = {
    _K.INCIDENT_EVENT_KIND_TRIGGERED: "triggered",
    _K.INCIDENT_EVENT_KIND_ALERT_ADDED: "alert_added",
    _K.INCIDENT_EVENT_KIND_ACKNOWLEDGED: "acknowledged",
    _K.INCIDENT_EVENT_KIND_RESOLVED: "resolved",
    _K.INCIDENT_EVENT_KIND_SNOOZED: "snoozed",
    _K.INCIDENT_EVENT_KIND_UNSNOOZED: "unsnoozed",
    _K.INCIDENT_EVENT_KIND_REASSIGNED: "reassigned",
    _K.INCIDENT_EVENT_KIND_NOTE_ADDED: "note_added",
    _K.INCIDENT_EVENT_KIND_STATUS_UPDATE: "status_update",
    _K.INCIDENT_EVENT_KIND_ESCALATED: "escalated",
}
"""The `type` of each incident event (`incident.<type>` in the JSON)."""

MIN_SECRET_CHARS = 16
MAX_URL_CHARS = 2048
MAX_FILTERS = 100
RETRY_STEPS_S = (10, 30, 60, 120, 300, 600, 1200, 1800)
"""Waits after the 1st, 2nd, ... failure; the last repeats."""
MAX_RETRY_AGE_MS = 24 * 3600 * 1000
"""An event still failing this long after its first failure is given up (logged GAVE_UP)
and the incident's next event goes."""


def event_type(kind: int) -> str:
    return EVENT_TYPES.get(kind, "unknown")


def event_id(incident_id: str, stream_id: str) -> str:
    """Stable across retries, crashes and re-reads of the stream: the receiver's dedup key."""
    return f"{incident_id}-{stream_id}"


def selects(webhook: webhooks_pb2.Webhook, event: incidents_pb2.IncidentEvent) -> bool:
    """Whether `webhook` takes `event` (empty filters take everything)."""
    if event.kind not in EVENT_TYPES:
        return False
    if webhook.event_types and event_type(event.kind) not in webhook.event_types:
        return False
    return not webhook.service_ids or event.incident.service_id in webhook.service_ids


def _timestamp(ts: object) -> str:
    text: str = ts.ToJsonString()  # type: ignore[attr-defined]
    return text


def render_event(event: incidents_pb2.IncidentEvent, public_url: str) -> bytes:
    """The JSON body of `event` (compact, sorted keys: the same bytes every attempt)."""
    incident = event.incident
    status = incidents_pb2.IncidentStatus.Name(incident.status)
    body: dict[str, object] = {
        "event_id": event_id(incident.id, event.event_id),
        "type": f"incident.{event_type(event.kind)}",
        "at": _timestamp(event.at),
        "actor": {
            "user_id": event.actor.user_id,
            "channel": event.actor.channel and _channel_name(event.actor.channel),
        },
        "incident": {
            "id": incident.id,
            "number": incident.number,
            "service_id": incident.service_id,
            "summary": incident.summary,
            "severity": common_pb2.Severity.Name(incident.severity)
            .removeprefix("SEVERITY_")
            .lower(),
            "status": status.removeprefix("INCIDENT_STATUS_").lower(),
            "created_at": _timestamp(incident.created_at),
            "url": f"{public_url}/incidents/{incident.id}",
        },
    }
    if event.note:
        body["text"] = event.note
    if event.HasField("alert"):
        body["alert"] = {"id": event.alert.id, "summary": event.alert.summary}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def _channel_name(channel: int) -> str:
    try:
        name = common_pb2.Channel.Name(common_pb2.Channel.ValueType(channel))
    except ValueError:
        return "unknown"
    return name.removeprefix("CHANNEL_").lower()


def render_test(subscription_id: str, at_iso: str, test_id: str) -> bytes:
    body = {"event_id": test_id, "type": "test", "at": at_iso, "webhook_id": subscription_id}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def incident_label(incident: incidents_pb2.Incident) -> str:
    """How people name an incident: its number ("#18"), else its id."""
    return f"#{incident.number}" if incident.number else f"id {incident.id}"


def retry_delay_ms(failures: int, retry_after_s: float | None = None) -> int:
    """The wait after the `failures`-th failure (1 = the first) of one event."""
    step: float = RETRY_STEPS_S[min(max(failures, 1), len(RETRY_STEPS_S)) - 1]
    if retry_after_s is not None:
        step = max(step, min(retry_after_s, RETRY_STEPS_S[-1]))
    return int(step * 1000)


def fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def without_secret(webhook: webhooks_pb2.Webhook) -> webhooks_pb2.Webhook:
    """What may leave the process: the secret replaced by its fingerprint."""
    shown = webhooks_pb2.Webhook()
    shown.CopyFrom(webhook)
    if webhook.secret:
        shown.secret_fingerprint = fingerprint(webhook.secret)
    shown.secret = ""
    return shown


def _list_violations(
    values: Iterable[str], field: str, known: Iterable[str] | None
) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    values = list(values)
    if len(values) > MAX_FILTERS:
        return [FieldViolation(field, f"at most {MAX_FILTERS} entries")]
    allowed = set(known) if known is not None else None
    for i, value in enumerate(values):
        if allowed is not None and value not in allowed:
            found.append(
                FieldViolation(f"{field}[{i}]", f"must be one of {', '.join(sorted(allowed))}")
            )
        elif allowed is None:
            found += id_violations(value, f"{field}[{i}]")
    return found


def validated_webhook(
    webhook: webhooks_pb2.Webhook, current: webhooks_pb2.Webhook | None
) -> webhooks_pb2.Webhook:
    """`webhook` normalised for storing (the current secret kept when none is sent), or
    InvalidArgument naming every bad field under `webhook.`."""
    violations = id_violations(webhook.id, "webhook.id")
    out = webhooks_pb2.Webhook()
    out.CopyFrom(webhook)
    out.secret_fingerprint = ""
    try:
        out.url = normalize_url(webhook.url, "webhook.url", allow_http=webhook.allow_insecure_http)
    except InvalidArgument as error:
        violations += error.violations
    if webhook.secret and len(webhook.secret) < MIN_SECRET_CHARS:
        violations.append(
            FieldViolation("webhook.secret", f"must be at least {MIN_SECRET_CHARS} characters")
        )
    if not webhook.secret and current is not None:
        out.secret = current.secret
    violations += _list_violations(webhook.event_types, "webhook.event_types", EVENT_TYPES.values())
    violations += _list_violations(webhook.service_ids, "webhook.service_ids", None)
    if webhook.secret_env:
        violations += _env_name_violations(webhook.secret_env, "webhook.secret_env")
    if violations:
        raise InvalidArgument(violations)
    del out.event_types[:]
    out.event_types.extend(sorted(set(webhook.event_types)))
    del out.service_ids[:]
    out.service_ids.extend(sorted(set(webhook.service_ids)))
    return out


def _env_name_violations(name: str, field: str) -> list[FieldViolation]:
    ok = name.replace("_", "a").isalnum() and name.isascii() and not name[0].isdigit()
    return [] if ok else [FieldViolation(field, "must be an environment variable's name")]


@dataclass(frozen=True)
class Queued:
    """One event waiting in an incident's queue for one subscription."""

    event_id: str
    event_type: str
    incident_id: str
    body: bytes
    text: str = ""
    """The status update's text (stakeholder deliveries render it per channel)."""
    summary: str = ""
    label: str = ""
    """How people name the incident ("#18"; "id 20" for one without a number)."""

    def encode(self) -> str:
        return json.dumps(
            {
                "id": self.event_id,
                "type": self.event_type,
                "incident": self.incident_id,
                "body": self.body.decode(),
                "text": self.text,
                "summary": self.summary,
                "label": self.label,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def decode(cls, raw: str | bytes) -> Queued:
        data = json.loads(raw)
        return cls(
            event_id=data["id"],
            event_type=data["type"],
            incident_id=data["incident"],
            body=data["body"].encode(),
            text=data.get("text", ""),
            summary=data.get("summary", ""),
            label=data.get("label", ""),
        )


SUBSCRIBER_NAMES = {
    webhooks_pb2.SUBSCRIBER_TYPE_USER: "user",
    webhooks_pb2.SUBSCRIBER_TYPE_EMAIL: "email",
    webhooks_pb2.SUBSCRIBER_TYPE_SLACK_CHANNEL: "slack_channel",
    webhooks_pb2.SUBSCRIBER_TYPE_WEBHOOK: "webhook",
}


def subscriber_type(name: str) -> int | None:
    for value, known in SUBSCRIBER_NAMES.items():
        if known == name:
            return value
    return None


def validated_subscription(sub: webhooks_pb2.Subscription) -> webhooks_pb2.Subscription:
    """The subscription normalised (address trimmed, a URL checked); InvalidArgument
    naming the fields under `subscription.` otherwise. Channel addresses (email, Slack)
    are checked by the channel (servicer)."""
    violations: list[FieldViolation] = []
    out = webhooks_pb2.Subscription()
    out.CopyFrom(sub)
    out.address = sub.address.strip()
    if not out.id:
        out.id = "sub-" + secrets.token_hex(6)
    violations += id_violations(out.id, "subscription.id")
    if bool(sub.service_id) == bool(sub.incident_id):
        violations.append(
            FieldViolation("subscription.service_id", "set exactly one of service_id, incident_id")
        )
    if sub.service_id:
        violations += id_violations(sub.service_id, "subscription.service_id")
    if sub.incident_id and not sub.incident_id.isdigit():
        violations.append(FieldViolation("subscription.incident_id", "must be an incident id"))
    if sub.subscriber_type not in SUBSCRIBER_NAMES:
        violations.append(
            FieldViolation(
                "subscription.subscriber_type",
                f"must be one of {', '.join(SUBSCRIBER_NAMES.values())}",
            )
        )
    elif sub.subscriber_type == webhooks_pb2.SUBSCRIBER_TYPE_USER:
        violations += id_violations(out.address, "subscription.address")
    elif sub.subscriber_type == webhooks_pb2.SUBSCRIBER_TYPE_WEBHOOK:
        try:
            out.address = normalize_url(out.address, "subscription.address")
        except InvalidArgument as error:
            violations += error.violations
    elif not out.address:
        violations.append(FieldViolation("subscription.address", "is required"))
    if violations:
        raise InvalidArgument(violations)
    return out


def subscription_selects(
    sub: webhooks_pb2.Subscription, event: incidents_pb2.IncidentEvent
) -> bool:
    """Stakeholders get status updates: of their incident, or of their service's."""
    if event.kind != incidents_pb2.INCIDENT_EVENT_KIND_STATUS_UPDATE:
        return False
    if sub.incident_id:
        return sub.incident_id == event.incident.id
    return sub.service_id == event.incident.service_id
