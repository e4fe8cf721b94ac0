"""iCal feeds: what calendar clients need to show and refresh on-call shifts."""

from datetime import datetime, timedelta, timezone

import pytest
from icalendar import Calendar, Component

from tests.scheduling.builders import layer, override, schedule, utc
from tocsin.scheduling import (
    Schedule,
    ScheduleShift,
    Shift,
    ShiftSource,
    final_shifts,
    schedule_calendar,
    shift_uid,
    user_calendar,
    user_shifts,
)

GENERATED = utc(2026, 11, 27, 3, 0)
WEEKLY = ShiftSource("layer", "weekly", 0)


def _plan(name: str = "Payments primary") -> Schedule:
    return Schedule(
        "primary",
        name,
        "America/New_York",
        (layer("weekly", datetime(2026, 11, 2, 9), "1w", "alice,bob"),),
        (override("carol", utc(2026, 11, 5), utc(2026, 11, 6), "o-1"),),
    )


def _events(feed: bytes) -> list[Component]:
    return list(Calendar.from_ical(feed).walk("VEVENT"))


def test_schedule_feed_has_one_event_per_final_shift() -> None:
    plan = _plan()
    shifts = final_shifts(plan, utc(2026, 11, 2), utc(2026, 11, 16))
    feed = schedule_calendar(plan, shifts, generated_at=GENERATED)
    calendar = Calendar.from_ical(feed)
    assert str(calendar["VERSION"]) == "2.0"
    assert str(calendar["PRODID"]).startswith("-//tocsin//")
    assert str(calendar["X-WR-CALNAME"]) == "On call: Payments primary"
    events = _events(feed)
    assert [str(e["SUMMARY"]) for e in events] == [
        "On call: Payments primary (alice)",
        "On call: Payments primary (carol)",
        "On call: Payments primary (alice)",
        "On call: Payments primary (bob)",
    ]
    assert [(e.decoded("DTSTART"), e.decoded("DTEND")) for e in events] == [
        (s.start, s.end) for s in shifts
    ]
    assert all(e.decoded("DTSTAMP") == GENERATED for e in events)
    assert "via weekly" in str(events[0]["DESCRIPTION"])


def test_times_are_written_in_utc_with_crlf_and_folded_lines() -> None:
    shift = Shift("alice", utc(2026, 11, 27, 23), utc(2026, 11, 28, 14), (WEEKLY,))
    long_name = "Payments primary " + "x" * 120
    feed = schedule_calendar(_plan(long_name), [shift], generated_at=GENERATED)
    assert b"DTSTART:20261127T230000Z\r\n" in feed
    assert b"DTEND:20261128T140000Z\r\n" in feed
    assert b"DTSTAMP:20261127T030000Z\r\n" in feed
    assert feed.endswith(b"END:VCALENDAR\r\n")
    assert feed.count(b"\n") == feed.count(b"\r\n")
    assert all(len(line) <= 75 for line in feed.split(b"\r\n"))
    assert str(_events(feed)[0]["SUMMARY"]) == f"On call: {long_name} (alice)"


def test_text_is_escaped() -> None:
    shift = Shift("alice", utc(2026, 11, 27), utc(2026, 11, 28), (WEEKLY,))
    name = "Payments, primary; EU\\US"
    feed = schedule_calendar(_plan(name), [shift], generated_at=GENERATED)
    assert b"SUMMARY:On call: Payments\\, primary\\; EU\\\\US (alice)" in feed
    assert str(_events(feed)[0]["SUMMARY"]) == f"On call: {name} (alice)"


def test_times_in_other_zones_are_converted_to_utc() -> None:
    plus_five = timezone(timedelta(hours=5))
    shift = Shift(
        "alice", datetime(2026, 11, 27, 5, tzinfo=plus_five), utc(2026, 11, 28), (WEEKLY,)
    )
    feed = schedule_calendar(
        _plan(), [shift], generated_at=datetime(2026, 11, 27, 8, tzinfo=plus_five)
    )
    assert b"DTSTART:20261127T000000Z\r\n" in feed
    assert b"DTSTAMP:20261127T030000Z\r\n" in feed
    assert shift_uid("primary", shift) == shift_uid(
        "primary", Shift("alice", utc(2026, 11, 27), utc(2026, 11, 29), ())
    )


def test_uids_are_stable_across_refreshes_and_distinct_between_shifts() -> None:
    plan = _plan()
    window = (utc(2026, 11, 2), utc(2026, 11, 16))
    first = _events(schedule_calendar(plan, final_shifts(plan, *window), generated_at=GENERATED))
    later = _events(
        schedule_calendar(
            plan, final_shifts(plan, *window), generated_at=GENERATED + timedelta(hours=1)
        )
    )
    uids = [str(e["UID"]) for e in first]
    assert uids == [str(e["UID"]) for e in later]
    assert len(set(uids)) == len(uids)
    shift = Shift("alice", utc(2026, 11, 27), utc(2026, 11, 28), (WEEKLY,))
    assert shift_uid("primary", shift) != shift_uid("secondary", shift)
    assert shift_uid("primary", shift) != shift_uid(
        "primary", Shift("bob", shift.start, shift.end, shift.sources)
    )
    assert shift_uid("primary", shift) != shift_uid(
        "primary", Shift("alice", shift.start + timedelta(hours=1), shift.end, shift.sources)
    )
    # The end may move (a longer shift) without the event changing identity.
    assert shift_uid("primary", shift) == shift_uid(
        "primary", Shift("alice", shift.start, shift.end + timedelta(days=1), shift.sources)
    )


def test_user_feed_spans_schedules() -> None:
    primary = _plan()
    secondary = schedule("UTC", layer("nights", datetime(2026, 11, 2, 20), "1d", "carol"))
    found = user_shifts([primary, secondary], "carol", utc(2026, 11, 5), utc(2026, 11, 6))
    feed = user_calendar("carol", found, generated_at=GENERATED)
    calendar = Calendar.from_ical(feed)
    assert str(calendar["X-WR-CALNAME"]) == "On call: carol"
    assert [str(e["SUMMARY"]) for e in _events(feed)] == [
        "On call: Payments primary (carol)",
        "On call: Test schedule (carol)",
    ]
    named = user_calendar("carol", found, generated_at=GENERATED, name="Carol's pager")
    assert str(Calendar.from_ical(named)["X-WR-CALNAME"]) == "Carol's pager"
    assert [str(e["UID"]) for e in _events(feed)] == [
        shift_uid(f.schedule_id, f.shift) for f in found
    ]


def test_an_empty_feed_is_still_a_calendar() -> None:
    feed = user_calendar("nobody", [], generated_at=GENERATED)
    assert feed.startswith(b"BEGIN:VCALENDAR\r\n")
    assert _events(feed) == []


def test_dtstamp_must_be_aware() -> None:
    shift = ScheduleShift("primary", "Primary", Shift("a", utc(2026, 1, 1), utc(2026, 1, 2), ()))
    with pytest.raises(ValueError, match="generated_at must be timezone-aware"):
        user_calendar("a", [shift], generated_at=datetime(2026, 1, 1))
