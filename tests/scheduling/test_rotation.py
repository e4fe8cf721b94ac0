"""Handoffs: elapsed lengths tick in real time, d and w keep the local wall time."""

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from tests.scheduling.builders import layer, local, schedule, utc
from tocsin.scheduling import final_shifts, who_is_on_call

SPRING = "spring"
FALL = "fall"

# (zone, local date of the transition, kind, how much shorter/longer that day is)
TRANSITION_DAYS = [
    ("America/New_York", date(2026, 3, 8), SPRING, timedelta(hours=1)),
    ("America/New_York", date(2026, 11, 1), FALL, timedelta(hours=1)),
    ("Europe/London", date(2026, 3, 29), SPRING, timedelta(hours=1)),
    ("Europe/London", date(2026, 10, 25), FALL, timedelta(hours=1)),
    ("Australia/Sydney", date(2026, 10, 4), SPRING, timedelta(hours=1)),
    ("Australia/Sydney", date(2026, 4, 5), FALL, timedelta(hours=1)),
    ("Australia/Lord_Howe", date(2026, 10, 4), SPRING, timedelta(minutes=30)),
    ("Australia/Lord_Howe", date(2026, 4, 5), FALL, timedelta(minutes=30)),
    ("Asia/Kolkata", date(2026, 3, 8), SPRING, timedelta(0)),
    ("Asia/Kolkata", date(2026, 11, 1), FALL, timedelta(0)),
]


def _wall(zone: str, moment: datetime) -> tuple[int, int]:
    reading = moment.astimezone(ZoneInfo(zone))
    return reading.hour, reading.minute


@pytest.mark.parametrize(("zone", "day", "kind", "change"), TRANSITION_DAYS)
@pytest.mark.parametrize(("length", "days"), [("1d", 1), ("1w", 7)])
def test_calendar_lengths_keep_the_wall_time_across_dst(
    zone: str, day: date, kind: str, change: timedelta, length: str, days: int
) -> None:
    start = datetime.combine(day - timedelta(days=days), datetime.min.time()).replace(hour=9)
    plan = schedule(zone, layer("l", start, length, "alice,bob,carol"))
    end = start + timedelta(days=3 * days)
    window_start = local(zone, start.year, start.month, start.day, 9)
    shifts = final_shifts(plan, window_start, local(zone, end.year, end.month, end.day, 9))
    assert [s.user for s in shifts] == ["alice", "bob", "carol"]
    assert [_wall(zone, s.start) for s in shifts] == [(9, 0)] * 3
    nominal = timedelta(days=days)
    expected_first = nominal - change if kind == SPRING else nominal + change
    assert shifts[0].end - shifts[0].start == expected_first
    assert shifts[1].end - shifts[1].start == nominal


@pytest.mark.parametrize(("zone", "day", "kind", "change"), TRANSITION_DAYS)
def test_elapsed_lengths_ignore_dst(zone: str, day: date, kind: str, change: timedelta) -> None:
    start = datetime.combine(day - timedelta(days=1), datetime.min.time()).replace(hour=9)
    plan = schedule(zone, layer("l", start, "12h", "alice,bob,carol"))
    window_start = local(zone, start.year, start.month, start.day, 9)
    shifts = final_shifts(plan, window_start, window_start + timedelta(hours=36))
    assert [s.user for s in shifts] == ["alice", "bob", "carol"]
    assert all(s.end - s.start == timedelta(hours=12) for s in shifts)
    # So after the change the handoff shows a different wall time.
    shift_by = change if kind == SPRING else -change
    after = (datetime(2000, 1, 1, 9) + shift_by).time()
    assert _wall(zone, shifts[2].start) == (after.hour, after.minute)


def test_24h_and_1d_differ_across_spring_forward() -> None:
    zone = "America/New_York"
    start = datetime(2026, 3, 7, 9)
    days = schedule(zone, layer("l", start, "1d", "alice,bob"))
    hours = schedule(zone, layer("l", start, "24h", "alice,bob"))
    at = local(zone, 2026, 3, 8, 9, 30)  # 13:30Z
    assert who_is_on_call(days, at).user == "bob"  # type: ignore[union-attr]
    assert who_is_on_call(hours, at).user == "alice"  # type: ignore[union-attr]
    assert who_is_on_call(hours, utc(2026, 3, 8, 14)).user == "bob"  # type: ignore[union-attr]


# Daily handoffs at a wall time that falls in the gap or the repeated hour on the
# transition day: (zone, wall time, transition date, handoff the day before, on the
# day, the day after), all in UTC, worked out by hand.
ODD_HANDOFFS = [
    # gaps: the offset from before the gap
    ("America/New_York", (2, 30), date(2026, 3, 8),
     utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30)),
    ("Europe/London", (1, 30), date(2026, 3, 29),
     utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30)),
    ("Australia/Sydney", (2, 30), date(2026, 10, 4),
     utc(2026, 10, 2, 16, 30), utc(2026, 10, 3, 16, 30), utc(2026, 10, 4, 15, 30)),
    ("Australia/Lord_Howe", (2, 15), date(2026, 10, 4),
     utc(2026, 10, 2, 15, 45), utc(2026, 10, 3, 15, 45), utc(2026, 10, 4, 15, 15)),
    # repeated hours: the first occurrence
    ("America/New_York", (1, 30), date(2026, 11, 1),
     utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)),
    ("Europe/London", (1, 30), date(2026, 10, 25),
     utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)),
    ("Australia/Sydney", (2, 30), date(2026, 4, 5),
     utc(2026, 4, 3, 15, 30), utc(2026, 4, 4, 15, 30), utc(2026, 4, 5, 16, 30)),
    ("Australia/Lord_Howe", (1, 45), date(2026, 4, 5),
     utc(2026, 4, 3, 14, 45), utc(2026, 4, 4, 14, 45), utc(2026, 4, 5, 15, 15)),
    # no DST: nothing odd
    ("Asia/Kolkata", (2, 30), date(2026, 3, 8),
     utc(2026, 3, 6, 21, 0), utc(2026, 3, 7, 21, 0), utc(2026, 3, 8, 21, 0)),
]  # fmt: skip


@pytest.mark.parametrize(("zone", "wall", "day", "before", "on", "after"), ODD_HANDOFFS)
def test_handoffs_inside_gaps_and_repeated_hours(
    zone: str,
    wall: tuple[int, int],
    day: date,
    before: datetime,
    on: datetime,
    after: datetime,
) -> None:
    first = datetime.combine(day - timedelta(days=1), datetime.min.time()).replace(
        hour=wall[0], minute=wall[1]
    )
    plan = schedule(zone, layer("l", first, "1d", "alice,bob,carol,dave"))
    shifts = final_shifts(plan, before, after + timedelta(hours=1))
    assert [(s.user, s.start) for s in shifts] == [
        ("alice", before),
        ("bob", on),
        ("carol", after),
    ]
    tick = timedelta(microseconds=1)
    assert who_is_on_call(plan, on - tick).user == "alice"  # type: ignore[union-attr]
    assert who_is_on_call(plan, on).user == "bob"  # type: ignore[union-attr]
    assert who_is_on_call(plan, after - tick).user == "bob"  # type: ignore[union-attr]
    assert who_is_on_call(plan, after).user == "carol"  # type: ignore[union-attr]
    assert who_is_on_call(plan, before - tick) is None


def test_first_handoff_inside_a_gap_keeps_the_asked_wall_time_afterwards() -> None:
    # Starting at 02:30 on the spring-forward day: the first handoff is 03:30 EDT, the
    # following ones are at 02:30 again.
    plan = schedule("America/New_York", layer("l", datetime(2026, 3, 8, 2, 30), "1d", "a,b"))
    shifts = final_shifts(plan, utc(2026, 3, 8), utc(2026, 3, 10, 7))
    assert [(s.user, s.start) for s in shifts] == [
        ("a", utc(2026, 3, 8, 7, 30)),
        ("b", utc(2026, 3, 9, 6, 30)),
        ("a", utc(2026, 3, 10, 6, 30)),
    ]


def test_a_start_with_an_offset_is_used_as_given_and_its_wall_time_kept() -> None:
    new_york = "America/New_York"
    # The second 01:30 of the repeated hour, given explicitly as EST.
    start = datetime(2026, 11, 1, 1, 30, tzinfo=timezone(timedelta(hours=-5)))
    plan = schedule(new_york, layer("l", start, "1d", "a,b"))
    assert who_is_on_call(plan, utc(2026, 11, 1, 6, 29)) is None
    assert who_is_on_call(plan, utc(2026, 11, 1, 6, 30)).user == "a"  # type: ignore[union-attr]
    assert who_is_on_call(plan, utc(2026, 11, 2, 6, 30)).user == "b"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("length", "at", "expected"),
    [
        ("1d", local("America/New_York", 2027, 1, 1, 10), "c"),  # day 365, 365 % 3 = 2
        ("1d", local("America/New_York", 2027, 1, 1, 8), "b"),  # still day 364
        ("1w", local("America/New_York", 2036, 1, 1, 12), "c"),  # week 521, 521 % 3 = 2
        ("30m", local("America/New_York", 2026, 1, 1, 16, 15), "c"),  # shift 14
        ("30s", local("America/New_York", 2026, 1, 1, 10, 0), "a"),  # shift 120
        # 1595.5 elapsed hours (1596.5 on the wall clock) = shift 227
        ("7h", local("America/New_York", 2026, 3, 8, 21, 30), "c"),
    ],
)
def test_shift_k_belongs_to_user_k_mod_n(length: str, at: datetime, expected: str) -> None:
    plan = schedule("America/New_York", layer("l", datetime(2026, 1, 1, 9), length, "a,b,c"))
    assert who_is_on_call(plan, at).user == expected  # type: ignore[union-attr]


def test_nobody_before_the_first_handoff() -> None:
    plan = schedule("Europe/London", layer("l", datetime(2026, 6, 1, 9), "1w", "a,b"))
    assert who_is_on_call(plan, utc(2026, 6, 1, 7, 59)) is None
    assert who_is_on_call(plan, utc(2026, 6, 1, 8)).user == "a"  # type: ignore[union-attr]
    assert final_shifts(plan, utc(2026, 5, 1), utc(2026, 6, 1, 8)) == []


def test_a_handoff_of_the_next_local_day_can_come_before_a_repeated_evening() -> None:
    # Antarctica/Casey went from +11 to +08 at 2010-03-04T15:00Z (Friday 02:00 back to
    # Thursday 23:00). Friday's 00:30 handoff was at 13:30Z, so at 15:30Z, when the clock
    # reads Thursday 23:30 for the second time, Friday's shift is on.
    plan = schedule("Antarctica/Casey", layer("l", datetime(2010, 3, 1, 0, 30), "1d", "a,b,c,d"))
    assert who_is_on_call(plan, utc(2010, 3, 4, 13, 29)).user == "d"  # type: ignore[union-attr]
    assert who_is_on_call(plan, utc(2010, 3, 4, 13, 30)).user == "a"  # type: ignore[union-attr]
    assert who_is_on_call(plan, utc(2010, 3, 4, 15, 30)).user == "a"  # type: ignore[union-attr]
    assert who_is_on_call(plan, utc(2010, 3, 5, 16, 29)).user == "a"  # type: ignore[union-attr]
    assert who_is_on_call(plan, utc(2010, 3, 5, 16, 30)).user == "b"  # type: ignore[union-attr]
