"""The schedules of the example oncall.yaml, with answers worked out by hand.

primary (America/New_York), from Monday 2026-11-02 09:00 local:
  follow-the-week, 1w: alice, bob, carol, alice, bob, ... (week k -> users[k % 3])
  weekday-days, 1d, Mon-Fri 09:00-17:00: dave on even days since the start, alice on odd
  override: carol from Fri 2026-11-27 18:00 to Sat 09:00
secondary (Europe/London): twelve-hour, 12h elapsed from 2026-11-01 08:00: bob, dave, ...
"""

from datetime import UTC, datetime, time
from typing import Any

import pytest
import yaml

from tests.scheduling.builders import utc
from tocsin.runtime.durations import parse_duration
from tocsin.scheduling import (
    Layer,
    Override,
    Restriction,
    Schedule,
    ShiftSource,
    final_shifts,
    parse_weekdays,
    user_shifts,
    validate_schedule,
    who_is_on_call,
)

# The `schedules` section of the example, copied verbatim (the example lives outside
# the repository); the users are alice, bob, carol and dave.
EXAMPLE_SCHEDULES = """
schedules:
  - id: primary
    name: Payments primary
    time_zone: America/New_York
    layers:
      - name: follow-the-week
        start: 2026-11-02T09:00      # first handoff, local time
        rotation: {length: 1w}       # d and w hand off at the same local time, across DST
        users: [alice, bob, carol]
      - name: weekday-days
        start: 2026-11-02T09:00
        rotation: {length: 1d}
        users: [dave, alice]
        restrictions:                # active only inside these local windows
          - {days: [mon, tue, wed, thu, fri], from: "09:00", to: "17:00"}
    overrides:
      - {user: carol, from: 2026-11-27T18:00, to: 2026-11-28T09:00}

  - id: secondary
    name: Payments secondary
    time_zone: Europe/London
    layers:
      - name: twelve-hour
        start: 2026-11-01T08:00
        rotation: {length: 12h}      # h is elapsed time, not wall-clock time
        users: [bob, dave]
"""


def _moment(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _schedule(entry: dict[str, Any]) -> Schedule:
    """A deliberately small reading of the YAML shape, enough for these tests."""
    layers = tuple(
        Layer(
            name=raw["name"],
            start=_moment(raw["start"]),
            rotation_length=parse_duration(raw["rotation"]["length"]),
            users=tuple(raw["users"]),
            restrictions=tuple(
                Restriction(
                    parse_weekdays(r["days"]),
                    time.fromisoformat(r["from"]),
                    time.fromisoformat(r["to"]),
                )
                for r in raw.get("restrictions", ())
            ),
        )
        for raw in entry["layers"]
    )
    overrides = tuple(
        Override(o["user"], _moment(o["from"]), _moment(o["to"]))
        for o in entry.get("overrides", ())
    )
    return Schedule(entry["id"], entry["name"], entry["time_zone"], layers, overrides)


SCHEDULES = {
    entry["id"]: _schedule(entry) for entry in yaml.safe_load(EXAMPLE_SCHEDULES)["schedules"]
}
PRIMARY, SECONDARY = SCHEDULES["primary"], SCHEDULES["secondary"]
USERS = {"alice", "bob", "carol", "dave"}
FOLLOW_THE_WEEK = ShiftSource("layer", "follow-the-week", 0)
WEEKDAY_DAYS = ShiftSource("layer", "weekday-days", 1)
OVERRIDE = ShiftSource("override", "", 0)
TWELVE_HOUR = ShiftSource("layer", "twelve-hour", 0)


def test_the_examples_validate_against_their_users() -> None:
    assert validate_schedule(PRIMARY, USERS) == []
    assert validate_schedule(SECONDARY, USERS) == []


@pytest.mark.parametrize(
    ("at", "user", "source"),
    [
        ("2026-11-27T20:00-05:00", "carol", OVERRIDE),  # Friday evening: the override
        ("2026-11-27T12:00-05:00", "alice", WEEKDAY_DAYS),  # day 25 is odd: alice
        ("2026-11-27T17:30-05:00", "alice", FOLLOW_THE_WEEK),  # week 3: alice again
        ("2026-11-28T08:59-05:00", "carol", OVERRIDE),
        ("2026-11-28T09:00-05:00", "alice", FOLLOW_THE_WEEK),  # override over, Saturday
        ("2026-11-02T09:00-05:00", "dave", WEEKDAY_DAYS),  # the very first handoff
        ("2026-11-02T17:00-05:00", "alice", FOLLOW_THE_WEEK),
        ("2026-11-10T10:00-05:00", "dave", WEEKDAY_DAYS),  # Tuesday, day 8
        ("2026-11-09T10:00-05:00", "alice", WEEKDAY_DAYS),  # Monday, day 7
        ("2026-11-09T08:59-05:00", "alice", FOLLOW_THE_WEEK),  # week 0's last minute
        ("2026-11-14T12:00-05:00", "bob", FOLLOW_THE_WEEK),  # Saturday of week 1
        ("2026-11-18T03:00-05:00", "carol", FOLLOW_THE_WEEK),  # week 2
        # After the spring-forward of 2027-03-14, Monday handoffs stay at 09:00 EDT.
        ("2027-03-15T08:30-04:00", "alice", FOLLOW_THE_WEEK),  # week 18
        ("2027-03-15T18:00-04:00", "bob", FOLLOW_THE_WEEK),  # week 19
        ("2027-03-15T09:00-04:00", "alice", WEEKDAY_DAYS),  # day 133
    ],
)
def test_who_is_on_call_for_primary(at: str, user: str, source: ShiftSource) -> None:
    answer = who_is_on_call(PRIMARY, datetime.fromisoformat(at))
    assert answer is not None
    assert (answer.user, answer.source) == (user, source)


def test_nobody_before_primary_starts() -> None:
    assert who_is_on_call(PRIMARY, datetime.fromisoformat("2026-11-02T08:59-05:00")) is None


def test_primary_shifts_around_the_override() -> None:
    start = datetime.fromisoformat("2026-11-27T00:00-05:00")
    end = datetime.fromisoformat("2026-11-29T00:00-05:00")
    shifts = final_shifts(PRIMARY, start, end)
    assert [(s.user, s.start, s.end, s.sources) for s in shifts] == [
        ("alice", utc(2026, 11, 27, 5), utc(2026, 11, 27, 23), (FOLLOW_THE_WEEK, WEEKDAY_DAYS)),
        ("carol", utc(2026, 11, 27, 23), utc(2026, 11, 28, 14), (OVERRIDE,)),
        ("alice", utc(2026, 11, 28, 14), utc(2026, 11, 29, 5), (FOLLOW_THE_WEEK,)),
    ]


@pytest.mark.parametrize(
    ("at", "user"),
    [
        ("2026-11-01T07:59+00:00", None),
        ("2026-11-01T08:00+00:00", "bob"),
        ("2026-11-01T20:00+00:00", "dave"),
        ("2026-11-02T07:59+00:00", "dave"),
        ("2026-11-02T08:00+00:00", "bob"),
        # 12h is elapsed time: after the clocks go forward on 2027-03-28 the handoffs
        # stay at 08:00Z/20:00Z, which London reads as 09:00/21:00. Day 151: shift 302.
        ("2027-04-01T09:00+01:00", "bob"),
        ("2027-04-01T08:59+01:00", "dave"),
        ("2027-04-01T21:00+01:00", "dave"),
    ],
)
def test_who_is_on_call_for_secondary(at: str, user: str | None) -> None:
    answer = who_is_on_call(SECONDARY, datetime.fromisoformat(at))
    if user is None:
        assert answer is None
    else:
        assert answer is not None
        assert (answer.user, answer.source) == (user, TWELVE_HOUR)


def test_bobs_shifts_across_both_schedules() -> None:
    start, end = utc(2026, 11, 9, 0), utc(2026, 11, 10, 0)
    found = user_shifts([PRIMARY, SECONDARY], "bob", start, end)
    assert [(f.schedule_id, f.shift.start, f.shift.end) for f in found] == [
        ("secondary", utc(2026, 11, 9, 8), utc(2026, 11, 9, 20)),
        ("primary", utc(2026, 11, 9, 22), end),  # Monday 17:00 EST: week 1 is bob's
    ]
    assert all(f.shift.start.tzinfo is UTC for f in found)
