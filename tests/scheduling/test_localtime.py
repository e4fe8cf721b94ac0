"""RFC 5545 resolution of wall-clock times, on the real 2026 transition days."""

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from tests.scheduling.builders import utc
from tests.scheduling.reference import rfc5545_by_search
from tocsin.runtime.localtime import load_zone, resolve_wall_time, to_utc

# (zone, first instant of the new offset, offset before, offset after), written by hand
# from the published rules; the test below checks zoneinfo agrees.
TRANSITIONS_2026 = [
    ("America/New_York", utc(2026, 3, 8, 7), -5.0, -4.0),
    ("America/New_York", utc(2026, 11, 1, 6), -4.0, -5.0),
    ("Europe/London", utc(2026, 3, 29, 1), 0.0, 1.0),
    ("Europe/London", utc(2026, 10, 25, 1), 1.0, 0.0),
    ("Australia/Sydney", utc(2026, 4, 4, 16), 11.0, 10.0),
    ("Australia/Sydney", utc(2026, 10, 3, 16), 10.0, 11.0),
    ("Australia/Lord_Howe", utc(2026, 4, 4, 15), 11.0, 10.5),
    ("Australia/Lord_Howe", utc(2026, 10, 3, 15, 30), 10.5, 11.0),
]


def _offset_hours(zone: str, moment: datetime) -> float:
    offset = moment.astimezone(ZoneInfo(zone)).utcoffset()
    assert offset is not None
    return offset.total_seconds() / 3600


@pytest.mark.parametrize(("zone", "instant", "before", "after"), TRANSITIONS_2026)
def test_transition_dates_are_the_real_ones(
    zone: str, instant: datetime, before: float, after: float
) -> None:
    assert _offset_hours(zone, instant - timedelta(seconds=1)) == before
    assert _offset_hours(zone, instant) == after


def test_kolkata_has_no_transition_in_2026() -> None:
    day = utc(2026, 1, 1)
    while day.year == 2026:
        assert _offset_hours("Asia/Kolkata", day) == 5.5
        day += timedelta(hours=6)


# Wall times inside a gap use the offset from before the gap; repeated ones mean the
# first occurrence; everything else is unambiguous. Expected UTC written by hand.
RESOLUTIONS = [
    # gaps
    ("America/New_York", datetime(2026, 3, 8, 2, 30), utc(2026, 3, 8, 7, 30)),  # 03:30 EDT
    ("America/New_York", datetime(2026, 3, 8, 2, 0), utc(2026, 3, 8, 7, 0)),
    ("Europe/London", datetime(2026, 3, 29, 1, 30), utc(2026, 3, 29, 1, 30)),  # 02:30 BST
    ("Australia/Sydney", datetime(2026, 10, 4, 2, 30), utc(2026, 10, 3, 16, 30)),  # 03:30 AEDT
    ("Australia/Lord_Howe", datetime(2026, 10, 4, 2, 15), utc(2026, 10, 3, 15, 45)),  # 02:45
    # repeated hours: first occurrence
    ("America/New_York", datetime(2026, 11, 1, 1, 30), utc(2026, 11, 1, 5, 30)),  # EDT
    ("Europe/London", datetime(2026, 10, 25, 1, 30), utc(2026, 10, 25, 0, 30)),  # BST
    ("Australia/Sydney", datetime(2026, 4, 5, 2, 30), utc(2026, 4, 4, 15, 30)),  # AEDT
    ("Australia/Lord_Howe", datetime(2026, 4, 5, 1, 45), utc(2026, 4, 4, 14, 45)),  # +11
    # the edges of the anomalies
    ("America/New_York", datetime(2026, 3, 8, 3, 0), utc(2026, 3, 8, 7, 0)),
    ("America/New_York", datetime(2026, 11, 1, 2, 0), utc(2026, 11, 1, 7, 0)),
    ("America/New_York", datetime(2026, 11, 1, 0, 59), utc(2026, 11, 1, 4, 59)),
    # no DST
    ("Asia/Kolkata", datetime(2026, 3, 8, 2, 30), utc(2026, 3, 7, 21, 0)),
    ("Asia/Kolkata", datetime(2026, 11, 1, 1, 30), utc(2026, 10, 31, 20, 0)),
]


@pytest.mark.parametrize(("zone", "wall", "expected"), RESOLUTIONS)
def test_resolves_wall_time_like_rfc5545(zone: str, wall: datetime, expected: datetime) -> None:
    assert resolve_wall_time(wall, ZoneInfo(zone)) == expected
    assert to_utc(wall, ZoneInfo(zone)) == expected


@pytest.mark.parametrize(
    ("zone", "day"),
    [
        ("America/New_York", date(2026, 3, 8)),
        ("America/New_York", date(2026, 11, 1)),
        ("Europe/London", date(2026, 3, 29)),
        ("Europe/London", date(2026, 10, 25)),
        ("Australia/Sydney", date(2026, 4, 5)),
        ("Australia/Sydney", date(2026, 10, 4)),
        ("Australia/Lord_Howe", date(2026, 4, 5)),
        ("Australia/Lord_Howe", date(2026, 10, 4)),
        ("Asia/Kolkata", date(2026, 3, 8)),
    ],
)
def test_every_quarter_hour_of_a_transition_day_matches_the_rule(zone: str, day: date) -> None:
    tz = ZoneInfo(zone)
    wall = datetime.combine(day, datetime.min.time())
    while wall.date() == day:
        assert resolve_wall_time(wall, tz) == rfc5545_by_search(wall, tz), wall
        wall += timedelta(minutes=15)


def test_times_with_an_offset_are_used_as_given() -> None:
    new_york = ZoneInfo("America/New_York")
    est, edt = timezone(timedelta(hours=-5)), timezone(timedelta(hours=-4))
    # 02:30 does not exist in New York that day, but with an explicit offset it is exact.
    assert to_utc(datetime(2026, 3, 8, 2, 30, tzinfo=est), new_york) == utc(2026, 3, 8, 7, 30)
    assert to_utc(datetime(2026, 3, 8, 2, 30, tzinfo=edt), new_york) == utc(2026, 3, 8, 6, 30)
    # The second 01:30 of the repeated hour, chosen with fold=1.
    second = datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=new_york)
    assert to_utc(second, new_york) == utc(2026, 11, 1, 6, 30)


def test_unknown_zone_is_named() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        load_zone("Mars/Olympus")
    with pytest.raises(ValueError, match="unknown time zone"):
        load_zone("../etc/passwd")
