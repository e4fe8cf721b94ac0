"""On-call shifts as iCalendar (RFC 5545) feeds that calendar clients subscribe to.

Times are written in UTC, which Google Calendar and Outlook read without needing a
VTIMEZONE. Each event's UID is derived from the schedule, the user and the shift start,
so a client refreshing the feed updates events in place instead of duplicating them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime

from icalendar import Calendar, Event

from tocsin.scheduling.model import Schedule, ScheduleShift, Shift

PRODID = "-//tocsin//on-call schedules//EN"


def shift_uid(schedule_id: str, shift: Shift) -> str:
    """A stable identity for a shift: same schedule, user and start -> same UID."""
    key = "\x00".join((schedule_id, shift.user, shift.start.astimezone(UTC).isoformat()))
    return f"{hashlib.sha256(key.encode()).hexdigest()[:32]}@tocsin"


def schedule_calendar(
    schedule: Schedule, shifts: Iterable[Shift], *, generated_at: datetime
) -> bytes:
    """A feed of `schedule`'s final shifts (e.g. from `final_shifts`). `generated_at`
    (aware, from the caller's clock) becomes every event's DTSTAMP."""
    calendar = _calendar(f"On call: {schedule.name}")
    for shift in shifts:
        calendar.add_component(_event(schedule.id, schedule.name, shift, generated_at))
    return calendar.to_ical()


def user_calendar(
    user: str, shifts: Iterable[ScheduleShift], *, generated_at: datetime, name: str | None = None
) -> bytes:
    """A feed of one user's shifts across schedules (e.g. from `user_shifts`)."""
    calendar = _calendar(name or f"On call: {user}")
    for found in shifts:
        calendar.add_component(
            _event(found.schedule_id, found.schedule_name, found.shift, generated_at)
        )
    return calendar.to_ical()


def _calendar(name: str) -> Calendar:
    calendar = Calendar()
    calendar.add("prodid", PRODID)
    calendar.add("version", "2.0")
    calendar.add("calscale", "GREGORIAN")
    calendar.add("method", "PUBLISH")
    calendar.add("x-wr-calname", name)
    return calendar


def _event(schedule_id: str, schedule_name: str, shift: Shift, generated_at: datetime) -> Event:
    if generated_at.tzinfo is None:
        raise ValueError(f"generated_at must be timezone-aware, got {generated_at.isoformat()}")
    event = Event()
    event.add("uid", shift_uid(schedule_id, shift))
    event.add("dtstamp", generated_at.astimezone(UTC))
    event.add("dtstart", shift.start.astimezone(UTC))
    event.add("dtend", shift.end.astimezone(UTC))
    event.add("summary", f"On call: {schedule_name} ({shift.user})")
    via = ", ".join(source.name for source in shift.sources)
    event.add("description", f"{shift.user} is on call for {schedule_name} (via {via}).")
    event.add("transp", "TRANSPARENT")
    return event
