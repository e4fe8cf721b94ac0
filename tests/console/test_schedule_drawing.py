"""The On call and Schedules pages' arithmetic, without a browser: runs of shifts, now and
next, and days drawn as long as they are in the viewer's zone (23 or 25 hours when the
clocks change)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from tocsin.console.oncall import now_and_next, runs, ts_of
from tocsin.console.schedules import draw_days
from tocsin.v1 import scheduling_pb2 as pb

NEW_YORK = ZoneInfo("America/New_York")


def shift(user: str, start: datetime, end: datetime, *, override: bool = False) -> pb.Shift:
    return pb.Shift(
        schedule_id="s",
        user_id=user,
        start=ts_of(start),
        end=ts_of(end),
        source=pb.SHIFT_SOURCE_OVERRIDE if override else pb.SHIFT_SOURCE_LAYER,
        source_name="ov-1" if override else "daily",
    )


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_now_and_next_merge_one_persons_adjacent_shifts() -> None:
    shifts = [
        shift("rosa", utc(2027, 3, 13, 14), utc(2027, 3, 14, 9)),
        shift("rosa", utc(2027, 3, 14, 9), utc(2027, 3, 14, 13), override=True),
        shift("quinn", utc(2027, 3, 14, 13), utc(2027, 3, 15, 13)),
    ]
    assert [(r.user_id, r.sources) for r in runs(shifts)] == [
        ("rosa", ("daily", "override")),
        ("quinn", ("daily",)),
    ]
    current, upcoming = now_and_next(shifts, utc(2027, 3, 14, 12, 59))
    assert current is not None and current.user_id == "rosa"
    assert current.end == utc(2027, 3, 14, 13)
    assert upcoming is not None and upcoming.user_id == "quinn"
    current, upcoming = now_and_next(shifts, utc(2027, 3, 15, 13))
    assert current is None and upcoming is None


def test_the_day_clocks_change_is_drawn_with_its_own_length() -> None:
    schedule = pb.Schedule(id="s", time_zone="America/New_York", layers=[pb.Layer(name="daily")])
    # Daily handoff at 09:00 New York: 14:00 UTC before the change, 13:00 UTC after.
    shifts = [
        shift("rosa", utc(2027, 3, 13, 14), utc(2027, 3, 14, 13)),
        shift("quinn", utc(2027, 3, 14, 13), utc(2027, 3, 15, 13)),
    ]
    days = draw_days(
        schedule, shifts, {"rosa": "Rosa", "quinn": "Quinn"}, NEW_YORK, date(2027, 3, 13), 3
    )
    assert [d.hours for d in days] == [24, 23, 24]
    change = days[1]
    assert change.dst and not days[0].dst
    # 06:00 local is 5 of the day's 23 hours in (02:00 does not exist that day).
    assert dict(change.marks)[6] == 5 / 23 * 100
    final = dict(change.rows)["on call"]
    assert [(p.name, round(p.x, 3), round(p.width, 3)) for p in final] == [
        ("Rosa", 0.0, round(8 / 23 * 100, 3)),  # until 09:00 local, 8 real hours in
        ("Quinn", round(8 / 23 * 100, 3), round(15 / 23 * 100, 3)),
    ]
    assert [p.name for p in dict(days[0].rows)["on call"]] == ["nobody", "Rosa"]
    assert dict(change.rows)["layer daily"] == final


def test_an_override_has_its_own_row_and_wins_the_final_row() -> None:
    schedule = pb.Schedule(id="s", time_zone="UTC", layers=[pb.Layer(name="daily")])
    shifts = [
        shift("rosa", utc(2027, 1, 4, 0), utc(2027, 1, 4, 12)),
        shift("quinn", utc(2027, 1, 4, 12), utc(2027, 1, 4, 18), override=True),
        shift("rosa", utc(2027, 1, 4, 18), utc(2027, 1, 5, 0)),
    ]
    [day] = draw_days(schedule, shifts, {}, ZoneInfo("UTC"), date(2027, 1, 4), 1)
    rows = dict(day.rows)
    assert [(p.user_id, p.override) for p in rows["overrides"]] == [("quinn", True)]
    assert [p.user_id for p in rows["on call"]] == ["rosa", "quinn", "rosa"]
    assert [p.user_id for p in rows["layer daily"]] == ["rosa", "rosa"]
