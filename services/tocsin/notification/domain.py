"""Notification's pure logic: contact methods, rules, cycles, attempts and what they say.

A user's settings (contact methods and rules) are one small protobuf, changed here as a
whole and written by the store with a compare-and-set. A notification cycle is a snapshot
of the rules taken when Notify starts it, so editing rules does not change a page already
under way; the contact method itself is looked up again when a rule fires, so a corrected
number or a STOP takes effect at once.

Identifiers carry their location, so a webhook can find what it refers to without an
index: a cycle is `<incident>-<n>`, a rule's attempt (and its timer) `<cycle>-<rule>`, a
test page's attempt `test-<user>-<n>`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import phonenumbers
from google.protobuf.duration_pb2 import Duration

from tocsin.notification import keys
from tocsin.notification.channels import ChannelRegistry, channel_name
from tocsin.notification.records import AttemptRecord, CycleRule
from tocsin.notification.records import TimerPayload as TimerPayload
from tocsin.notification.records import attempts_in_order as records_in_order
from tocsin.runtime.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound
from tocsin.runtime.ids import id_violations
from tocsin.v1 import common_pb2, incidents_pb2, notification_pb2

SMS = notification_pb2.CONTACT_METHOD_TYPE_SMS
VOICE = notification_pb2.CONTACT_METHOD_TYPE_VOICE
SLACK = notification_pb2.CONTACT_METHOD_TYPE_SLACK
CHANNEL_WORDS: dict[int, str] = {SMS: "SMS", VOICE: "Voice call"}
"""How the timeline names a channel; others by their name, capitalised ("Email")."""

SENDING = notification_pb2.ATTEMPT_STATUS_SENDING
SENT = notification_pb2.ATTEMPT_STATUS_SENT
DELIVERED = notification_pb2.ATTEMPT_STATUS_DELIVERED
FAILED = notification_pb2.ATTEMPT_STATUS_FAILED
UNKNOWN = notification_pb2.ATTEMPT_STATUS_UNKNOWN
SKIPPED = notification_pb2.ATTEMPT_STATUS_SKIPPED

STOPPED_STATUSES = frozenset(
    {incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED, incidents_pb2.INCIDENT_STATUS_RESOLVED}
)
"""An incident in one of these pages nobody (a snoozed incident is ACKNOWLEDGED)."""

MAX_CONTACT_METHODS = 20
MAX_RULES = 20
MAX_RULE_DELAY_MS = 24 * 3600 * 1000
MAX_IDEMPOTENCY_KEY = 255
MAX_INCIDENT_SUMMARY = 1024
"""A summary carried in Notify is at most this long (the incidents service's own limit)."""
CARRIED_WORDS_MAX_AGE_MS = 5_000
"""How young an incident must be for its first page to take its words from Notify when
the status mirror does not hold it yet. Older, the page asks the incidents service, which
also says whether it still is triggered: both consumers of its events are then behind,
and the mirror's empty status says nothing about an acknowledgement or a resolution
queued behind the TRIGGERED event."""
REPLY_SUMMARY_CHARS = 80
"""An SMS answer keeps to one segment: the summary is cut to this."""

_INCIDENT_ID = re.compile(r"[1-9][0-9]{0,17}")
_RULE_ATTEMPT = re.compile(r"(?P<incident>[1-9][0-9]{0,17})-(?P<cycle>[0-9]+)-(?P<rule>[0-9]+)")
_TEST_ATTEMPT = re.compile(r"test-(?P<user>[a-z0-9][a-z0-9._-]{0,62})-(?P<n>[0-9]+)")
_NOTICE_ATTEMPT = re.compile(r"notice-(?P<digest>[0-9a-f]{16})-(?P<n>[0-9]+)-(?P<user>[^\s|]+)")

OPTED_OUT_CODE = 21610
"""The recipient replied STOP: Twilio refuses every further SMS to them until START."""


# -- addresses and settings -----------------------------------------------------------


def normalize_phone(address: str, field: str) -> str:
    """`address` in E.164 (`+14155550100`), or InvalidArgument naming `field`.

    The number is not repeated in the error: errors get logged, phone numbers must not.
    """
    try:
        parsed = phonenumbers.parse(address, None)
    except phonenumbers.NumberParseException:
        raise InvalidArgument.one(
            field, "must be a phone number in international format, e.g. +14155550100"
        ) from None
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidArgument.one(field, "is not a valid phone number")
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def validated_contact_method(
    method: notification_pb2.ContactMethod,
    channels: ChannelRegistry,
    field: str = "contact_method",
) -> notification_pb2.ContactMethod:
    """A copy of `method` with its address normalised by its channel (E.164 for a phone);
    every problem named by field path. A type no channel of `channels` sends is refused."""
    violations = [
        *id_violations(method.id, f"{field}.id"),
        *id_violations(method.user_id, f"{field}.user_id"),
    ]
    address = ""
    channel = channels.find(method.type)
    if channel is None:
        violation = channels.type_violation(method.type, f"{field}.type")
        violations.extend([violation] if violation else [])
    else:
        try:
            address = channel.normalize_address(method.address, f"{field}.address")
        except InvalidArgument as error:
            violations.extend(error.violations)
    if violations:
        raise InvalidArgument(violations)
    normalized = notification_pb2.ContactMethod()
    normalized.CopyFrom(method)
    normalized.address = address
    return normalized


def duration_ms(duration: Duration) -> int:
    return duration.seconds * 1000 + duration.nanos // 1_000_000


def validated_rules(
    rules: Sequence[notification_pb2.NotificationRule],
    methods: Iterable[notification_pb2.ContactMethod],
) -> list[notification_pb2.NotificationRule]:
    """The rules ordered by delay (stable), each naming one of `methods`."""
    known = {m.id for m in methods}
    violations: list[FieldViolation] = []
    if len(rules) > MAX_RULES:
        violations.append(FieldViolation("rules", f"at most {MAX_RULES} rules, got {len(rules)}"))
    for i, rule in enumerate(rules):
        if rule.contact_method_id not in known:
            violations.append(
                FieldViolation(
                    f"rules[{i}].contact_method_id",
                    f"{rule.contact_method_id!r} is not one of this user's contact methods",
                )
            )
        if rule.urgency not in common_pb2.Urgency.values():
            violations.append(
                FieldViolation(f"rules[{i}].urgency", f"unknown urgency {rule.urgency}")
            )
        delay = duration_ms(rule.delay)
        if delay < 0 or rule.delay.nanos < 0:
            violations.append(FieldViolation(f"rules[{i}].delay", "must not be negative"))
        elif delay > MAX_RULE_DELAY_MS:
            violations.append(FieldViolation(f"rules[{i}].delay", "must be at most 24 hours"))
    if violations:
        raise InvalidArgument(violations)
    stored = []
    for rule in rules:
        copy = notification_pb2.NotificationRule()
        copy.CopyFrom(rule)
        if copy.urgency == common_pb2.URGENCY_HIGH:
            copy.urgency = common_pb2.URGENCY_UNSPECIFIED  # unset is high: one form stored
        stored.append(copy)
    return sorted(stored, key=lambda r: duration_ms(r.delay))


Settings = notification_pb2.GetUserNotificationSettingsResponse


def _settings(
    methods: Iterable[notification_pb2.ContactMethod],
    rules: Iterable[notification_pb2.NotificationRule],
) -> Settings:
    return Settings(
        contact_methods=sorted(methods, key=lambda m: m.id),
        rules=sorted(rules, key=lambda r: duration_ms(r.delay)),
    )


def with_contact_method(current: Settings, method: notification_pb2.ContactMethod) -> Settings:
    """`current` plus a new contact method (AlreadyExists if the user has that id).

    `disabled` belongs to the recipient (STOP sets it, START clears it), so a new
    contact method starts enabled whatever the request said.
    """
    method = _with_disabled(method, False)
    if any(m.id == method.id for m in current.contact_methods):
        raise AlreadyExists(f"contact method {method.id!r} already exists")
    if len(current.contact_methods) >= MAX_CONTACT_METHODS:
        raise InvalidArgument.one(
            "contact_method", f"a user has at most {MAX_CONTACT_METHODS} contact methods"
        )
    return _settings([*current.contact_methods, method], current.rules)


def with_replaced_contact_method(
    current: Settings, method: notification_pb2.ContactMethod
) -> Settings:
    """`current` with `method` replacing the one with its id. A STOP stays in force while
    the number and channel stay the same; a new number starts enabled."""
    previous = contact_method(current, method.id)
    if previous is None:
        raise NotFound(f"contact method {method.id!r} does not exist")
    same_phone = previous.address == method.address and previous.type == method.type
    method = _with_disabled(method, previous.disabled and same_phone)
    methods = [method if m.id == method.id else m for m in current.contact_methods]
    return _settings(methods, current.rules)


def _with_disabled(
    method: notification_pb2.ContactMethod, disabled: bool
) -> notification_pb2.ContactMethod:
    copy = notification_pb2.ContactMethod()
    copy.CopyFrom(method)
    copy.disabled = disabled
    return copy


def without_contact_method(current: Settings, method_id: str) -> Settings:
    """`current` without the contact method and every rule that uses it."""
    methods = [m for m in current.contact_methods if m.id != method_id]
    rules = [r for r in current.rules if r.contact_method_id != method_id]
    return _settings(methods, rules)


def with_rules(current: Settings, rules: Sequence[notification_pb2.NotificationRule]) -> Settings:
    return _settings(current.contact_methods, validated_rules(rules, current.contact_methods))


def with_number_enabled(current: Settings, number: str, enabled: bool) -> Settings:
    """STOP/START: (dis)able the SMS contact methods with `number`.

    Only SMS: Twilio's STOP blocks text messages from our number, not calls, so a person
    who opts out of texts can still be woken by a call (and the proto's `disabled` flag
    means exactly "replied STOP").
    """
    methods = []
    for m in current.contact_methods:
        copy = notification_pb2.ContactMethod()
        copy.CopyFrom(m)
        if m.address == number and m.type == SMS:
            copy.disabled = not enabled
        methods.append(copy)
    return _settings(methods, current.rules)


def rules_for(
    settings: Settings, urgency: int = common_pb2.URGENCY_HIGH
) -> list[notification_pb2.NotificationRule]:
    """The user's rules for an incident of `urgency`, ordered by delay. High: the rules
    marked high (or unmarked). Low: the rules marked low; a user with none gets their
    high-urgency rules without the voice calls (by default a low-urgency incident never
    rings a phone)."""
    high = [r for r in settings.rules if r.urgency != common_pb2.URGENCY_LOW]
    if urgency != common_pb2.URGENCY_LOW:
        return high
    low = [r for r in settings.rules if r.urgency == common_pb2.URGENCY_LOW]
    if low:
        return low
    types = {m.id: m.type for m in settings.contact_methods}
    voice = notification_pb2.CONTACT_METHOD_TYPE_VOICE
    return [r for r in high if types.get(r.contact_method_id) != voice]


def rules_snapshot(settings: Settings, urgency: int = common_pb2.URGENCY_HIGH) -> list[CycleRule]:
    """The rules for `urgency` as a cycle keeps them: contact method, delay (ms), channel."""
    types = {m.id: m.type for m in settings.contact_methods}
    return [
        CycleRule(r.contact_method_id, duration_ms(r.delay), types[r.contact_method_id])
        for r in rules_for(settings, urgency)
        if r.contact_method_id in types
    ]


def unreachable_reason(
    user_id: str, settings: Settings, urgency: int = common_pb2.URGENCY_HIGH
) -> str:
    """Why no rule of the user for `urgency` can reach them, or "" when one can."""
    if not settings.contact_methods:
        return f"{user_id} has no contact method"
    rules = rules_for(settings, urgency)
    if not rules:
        if urgency == common_pb2.URGENCY_LOW and settings.rules:
            return f"{user_id} has no low-urgency notification rules (and no rule but calls)"
        return f"{user_id} has no notification rules"
    usable = {m.id for m in settings.contact_methods if not m.disabled}
    if not any(r.contact_method_id in usable for r in rules):
        return f"every contact method {user_id}'s rules use is disabled (STOP)"
    return ""


def retry_deadline(
    first_ms: int,
    created_ms: int,
    delays_ms: Sequence[int],
    rule_index: int,
    level_due_ms: int,
    min_window_ms: int,
) -> int:
    """Until when a send of rule `rule_index` that the provider did not process is worth
    retrying: until the user's next rule or the escalation's next level (`level_due_ms`,
    0 if not known) is due, whichever comes first, and at least `min_window_ms` after the
    first refusal (`first_ms`). Rules are ordered by delay."""
    ends = [created_ms + d for d in delays_ms[rule_index + 1 : rule_index + 2]]
    if level_due_ms > 0:
        ends.append(level_due_ms)
    return max(first_ms + min_window_ms, min(ends, default=0))


def contact_method(settings: Settings, method_id: str) -> notification_pb2.ContactMethod | None:
    return next((m for m in settings.contact_methods if m.id == method_id), None)


# -- identifiers ----------------------------------------------------------------------


def check_incident_id(incident_id: str, field: str = "incident_id") -> None:
    if not _INCIDENT_ID.fullmatch(incident_id):
        raise InvalidArgument.one(field, f"must be a decimal incident id, got {incident_id!r}")


def rule_attempt_id(cycle_id: str, rule_index: int) -> str:
    return f"{cycle_id}-{rule_index}"


@dataclass(frozen=True)
class IncidentWords:
    """What a page says of its incident, as the caller of Notify read it (escalation: the
    TRIGGERED event that started it)."""

    summary: str
    number: int
    created_ms: int

    def fresh(self, now_ms: int) -> bool:
        """Young enough to page with while the mirror does not hold the incident
        (CARRIED_WORDS_MAX_AGE_MS)."""
        return bool(self.summary) and 0 <= now_ms - self.created_ms <= CARRIED_WORDS_MAX_AGE_MS


@dataclass(frozen=True)
class AttemptLocation:
    """Where an attempt is stored: under its incident, or (a test page, a notice) under its
    user (a channel target's id for a notice to a channel)."""

    attempt_id: str
    incident_id: str | None
    user_id: str | None


def locate_attempt(attempt_id: str) -> AttemptLocation | None:
    """Parse an attempt id; None if it is not one tocsin makes."""
    if match := _RULE_ATTEMPT.fullmatch(attempt_id):
        return AttemptLocation(attempt_id, match["incident"], None)
    if match := _TEST_ATTEMPT.fullmatch(attempt_id):
        return AttemptLocation(attempt_id, None, match["user"])
    if match := _NOTICE_ATTEMPT.fullmatch(attempt_id):
        return AttemptLocation(attempt_id, None, match["user"])
    return None


def notice_attempt_id(idempotency_key: str, index: int, user_id: str) -> str:
    """The id of a notice's attempt on its `index`-th target (locate_attempt finds it)."""
    return f"notice-{keys.notice_digest(idempotency_key)[:16]}-{index}-{user_id}"


# -- attempts -------------------------------------------------------------------------


def attempt_from_record(record: bytes | str) -> notification_pb2.Attempt:
    """An attempt as the Lua scripts store it (records.AttemptRecord) -> proto."""
    return AttemptRecord.decode(record).to_proto()


def attempts_in_order(records: Iterable[bytes]) -> list[notification_pb2.Attempt]:
    return [r.to_proto() for r in records_in_order(records)]


PROVIDER_STATUSES = {
    "accepted": SENT,
    "scheduled": SENT,
    "queued": SENT,
    "sending": SENT,
    "sent": SENT,
    "initiated": SENT,
    "ringing": SENT,
    "delivered": DELIVERED,
    "read": DELIVERED,
    "in-progress": DELIVERED,
    "answered": DELIVERED,
    "completed": DELIVERED,
    "undelivered": FAILED,
    "failed": FAILED,
    "busy": FAILED,
    "no-answer": FAILED,
    "canceled": FAILED,
}
"""Twilio's MessageStatus / CallStatus words -> attempt status (a call that was
answered is delivered: someone heard it)."""

FINAL_STATUSES = frozenset({DELIVERED, FAILED, SKIPPED})


def attempt_status_of(provider_status: str) -> int | None:
    return PROVIDER_STATUSES.get(provider_status.strip().lower())


# -- what people read -----------------------------------------------------------------


def channel_word(channel: int) -> str:
    return CHANNEL_WORDS.get(channel) or channel_name(channel).capitalize()


def short_summary(summary: str) -> str:
    text = " ".join(summary.split())
    if len(text) > REPLY_SUMMARY_CHARS:
        return text[: REPLY_SUMMARY_CHARS - 3].rstrip() + "..."
    return text


def incident_title(incident: incidents_pb2.Incident) -> str:
    summary = short_summary(incident.summary)
    label = f"#{incident.number}" if incident.number else f"#{incident.id}"
    return f"{label}: {summary}" if summary else label


def help_reply(code: str | None = None) -> str:
    example = code or "4"
    return (
        f"tocsin: reply '{example}a' to acknowledge or '{example}r' to resolve a page, "
        "STOP to stop text pages."
    )


def unknown_code_reply(code: str) -> str:
    return f"Unknown code {code}"


NO_RECENT_PAGE_REPLY = (
    "No recent page to this number. Reply with the code from the page, e.g. '4a'."
)


def attempt_timeline_text(
    channel: int, user_id: str, method_id: str, what: str, detail: str = ""
) -> str:
    text = f"{channel_word(channel)} to {user_id} ({method_id}) {what}"
    return f"{text}: {detail}" if detail else text
