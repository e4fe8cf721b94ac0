"""The incident archive's pure logic: what an event or a timeline means for the archive,
search words, percentiles, and the report's arithmetic. No I/O.

Guarantees the store builds on: everything here is a function of its input only, and
merging an event's text into an incident's text that already holds it changes nothing,
so writing the same event (or the same timeline) again leaves the archive as it was.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from google.protobuf.json_format import MessageToDict

from tocsin.v1 import common_pb2, incidents_pb2

SEARCH_TEXT_MAX = 32_768
"""Characters of searchable text kept per incident (a storm's alerts add little after it)."""
NOTES_IN_LISTS = 3
"""Notes shown with each incident in search and similar results (the latest ones)."""

# Pages per person are counted in three parts of the local day (see the README):
BUSINESS_START_H, BUSINESS_END_H = 9, 18  # Monday to Friday
NIGHT_START_H, NIGHT_END_H = 22, 8  # every day
_WORD = re.compile(r"[^\W_]+(?:[._-][^\W_]+)*", re.UNICODE)
_STOP_WORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or the to was were "
    "with this that".split()
)

SYNC_KINDS = frozenset(
    {
        incidents_pb2.INCIDENT_EVENT_KIND_ACKNOWLEDGED,
        incidents_pb2.INCIDENT_EVENT_KIND_RESOLVED,
        incidents_pb2.INCIDENT_EVENT_KIND_SNOOZED,
        incidents_pb2.INCIDENT_EVENT_KIND_REASSIGNED,
        incidents_pb2.INCIDENT_EVENT_KIND_NOTE_ADDED,
        incidents_pb2.INCIDENT_EVENT_KIND_STATUS_UPDATE,
    }
)
"""Events after which the archive copies the incident's whole timeline from the incidents
service: the pages escalation wrote to it since the last event are not on the stream."""


def actor_name(actor: common_pb2.Actor) -> str:
    """Who acted, as reports and filters name them: the user id, else the display text."""
    return actor.user_id or actor.display


def searchable_parts(
    incident: incidents_pb2.Incident | None,
    alert: incidents_pb2.Alert | None = None,
    note: str = "",
) -> list[str]:
    """The text an event adds to its incident's searchable text."""
    parts: list[str] = []
    if incident is not None:
        parts += [incident.summary, incident.source]
    if alert is not None and alert.ByteSize():
        parts += [alert.summary, alert.source, alert.component, alert.group]
        parts.append(getattr(alert, "class"))
        if alert.details.fields:
            parts.append(_details_text(MessageToDict(alert.details)))
    if note:
        parts.append(note)
    return [part for part in (p.strip() for p in parts) if part]


def _details_text(value: object) -> str:
    """The words of an alert's details: keys and scalar values, nested flattened."""
    out: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, Mapping):
            for key, child in node.items():
                out.append(str(key))
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)
        elif node is not None:
            out.append(str(node) if not isinstance(node, bool) else json.dumps(node))

    walk(value)
    return " ".join(out)


def merge_search_text(current: str, parts: Iterable[str]) -> str:
    """`current` with each part appended unless it is already in it: appending is
    idempotent, so replaying an event leaves the text as it was."""
    text = current
    for part in parts:
        if part and part not in text and len(text) < SEARCH_TEXT_MAX:
            text = (text + "\n" + part if text else part)[:SEARCH_TEXT_MAX]
    return text


def search_words(text: str, limit: int = 32) -> list[str]:
    """The words of a query, lowercased, without punctuation (safe to quote into FTS5 or
    to_tsquery), in order, without duplicates."""
    seen: list[str] = []
    for match in _WORD.finditer(text.lower()):
        word = match.group(0)
        if word not in seen:
            seen.append(word)
        if len(seen) == limit:
            break
    return seen


def similarity_words(text: str, limit: int = 24) -> list[str]:
    """Words worth comparing incidents by: the query words minus common stop words and
    numbers (ids, counts), which would make everything look alike."""
    return [w for w in search_words(text, 4 * limit) if w not in _STOP_WORDS and not w.isdigit()][
        :limit
    ]


@dataclass(frozen=True)
class PageRow:
    """One person paged by one escalation level (from an ESCALATED timeline entry)."""

    level: int
    loop: int
    epoch: int
    user_id: str
    at_ms: int


def pages_from_timeline(entries: Sequence[incidents_pb2.TimelineEntry]) -> list[PageRow]:
    """Who was paged and when: every user of every ESCALATED entry."""
    pages: list[PageRow] = []
    for entry in entries:
        if entry.kind != incidents_pb2.TIMELINE_KIND_ESCALATED:
            continue
        attributes = entry.attributes
        try:
            level = int(attributes.get("level", "0"))
            loop = int(attributes.get("loop", "0"))
            epoch = int(attributes.get("epoch", "0"))
        except ValueError:
            continue
        for user in filter(None, attributes.get("users", "").split(",")):
            pages.append(PageRow(level, loop, epoch, user, entry.at.ToMilliseconds()))
    return pages


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (as
    numpy's default); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def iso_week(ms: int) -> str:
    """The ISO week of a moment in UTC, e.g. "2026-W49"."""
    year, week, _ = datetime.fromtimestamp(ms / 1000, UTC).isocalendar()
    return f"{year}-W{week:02d}"


def day_part(local: datetime) -> str:
    """ "business", "evening" or "night" for a local time (see the README)."""
    hour = local.hour
    if hour >= NIGHT_START_H or hour < NIGHT_END_H:
        return "night"
    if local.weekday() < 5 and BUSINESS_START_H <= hour < BUSINESS_END_H:
        return "business"
    return "evening"


@dataclass
class IncidentTimes:
    """What the report needs of one incident."""

    incident_id: str
    service_id: str
    created_ms: int
    first_response_ms: int | None
    resolved_ms: int | None


@dataclass
class Times:
    incidents: int = 0
    acknowledged: int = 0
    resolved: int = 0
    mtta_median_s: float = 0.0
    mtta_p90_s: float = 0.0
    mttr_median_s: float = 0.0
    mttr_p90_s: float = 0.0


def response_times(incidents: Sequence[IncidentTimes]) -> Times:
    tta = [
        (i.first_response_ms - i.created_ms) / 1000
        for i in incidents
        if i.first_response_ms is not None
    ]
    ttr = [(i.resolved_ms - i.created_ms) / 1000 for i in incidents if i.resolved_ms is not None]
    return Times(
        incidents=len(incidents),
        acknowledged=len(tta),
        resolved=len(ttr),
        mtta_median_s=percentile(tta, 50),
        mtta_p90_s=percentile(tta, 90),
        mttr_median_s=percentile(ttr, 50),
        mttr_p90_s=percentile(ttr, 90),
    )


@dataclass
class PageFact:
    incident_id: str
    service_id: str
    user_id: str
    level: int
    at_ms: int


@dataclass
class ServiceFigures:
    service_id: str
    times: Times
    pages: int
    paged_incidents: int
    escalated_incidents: int

    @property
    def escalation_rate(self) -> float:
        return self.escalated_incidents / self.paged_incidents if self.paged_incidents else 0.0


@dataclass
class WeekFigures:
    week: str
    service_id: str
    times: Times
    pages: int


@dataclass
class PersonFigures:
    user_id: str
    time_zone: str
    pages: int = 0
    business_hours: int = 0
    evenings: int = 0
    nights: int = 0
    by_hour: list[int] = field(default_factory=lambda: [0] * 24)


@dataclass
class Report:
    total: ServiceFigures
    services: list[ServiceFigures]
    weeks: list[WeekFigures]
    people: list[PersonFigures]
    total_weeks: list[WeekFigures]


def _figures(
    service_id: str, incidents: list[IncidentTimes], pages: list[PageFact]
) -> ServiceFigures:
    paged = {p.incident_id for p in pages}
    escalated = {p.incident_id for p in pages if p.level > 0}
    return ServiceFigures(
        service_id, response_times(incidents), len(pages), len(paged), len(escalated)
    )


def build_report(
    incidents: Sequence[IncidentTimes],
    pages: Sequence[PageFact],
    zones: Mapping[str, str],
    default_zone: str,
) -> Report:
    """Every figure of a report from the incidents opened in its window and their pages.
    `zones` maps a user to their IANA zone; others are counted in `default_zone`."""
    by_service: dict[str, list[IncidentTimes]] = {}
    for incident in incidents:
        by_service.setdefault(incident.service_id, []).append(incident)
    pages_by_service: dict[str, list[PageFact]] = {}
    for page in pages:
        pages_by_service.setdefault(page.service_id, []).append(page)
    services = [
        _figures(s, by_service.get(s, []), pages_by_service.get(s, []))
        for s in sorted(set(by_service) | set(pages_by_service))
    ]
    total = _figures("", list(incidents), list(pages))
    week_of = {i.incident_id: iso_week(i.created_ms) for i in incidents}
    weeks_in: dict[tuple[str, str], list[IncidentTimes]] = {}
    for incident in incidents:
        weeks_in.setdefault((week_of[incident.incident_id], incident.service_id), []).append(
            incident
        )
    week_pages: dict[tuple[str, str], int] = {}
    for page in pages:
        week = week_of.get(page.incident_id)
        if week is not None:
            week_pages[(week, page.service_id)] = week_pages.get((week, page.service_id), 0) + 1
    weeks = [
        WeekFigures(week, service, response_times(items), week_pages.get((week, service), 0))
        for (week, service), items in sorted(weeks_in.items())
    ]
    all_weeks: dict[str, list[IncidentTimes]] = {}
    for incident in incidents:
        all_weeks.setdefault(week_of[incident.incident_id], []).append(incident)
    total_weeks = [
        WeekFigures(
            week,
            "",
            response_times(items),
            sum(n for (w, _), n in week_pages.items() if w == week),
        )
        for week, items in sorted(all_weeks.items())
    ]
    people: dict[str, PersonFigures] = {}
    for page in pages:
        zone_name = zones.get(page.user_id) or default_zone
        person = people.setdefault(page.user_id, PersonFigures(page.user_id, zone_name))
        local = datetime.fromtimestamp(page.at_ms / 1000, ZoneInfo(zone_name))
        person.pages += 1
        person.by_hour[local.hour] += 1
        part = day_part(local)
        if part == "business":
            person.business_hours += 1
        elif part == "evening":
            person.evenings += 1
        else:
            person.nights += 1
    ranked = sorted(people.values(), key=lambda p: (-p.pages, p.user_id))
    return Report(total, services, weeks, ranked, total_weeks)


def default_since(until: datetime) -> datetime:
    return until - timedelta(days=30)
