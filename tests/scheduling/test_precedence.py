"""Which claim wins: later layers over earlier, overrides over layers, later overrides over
earlier; half-open intervals; merging; nobody as an answer."""

from datetime import datetime, timedelta

import pytest

from tests.scheduling.builders import layer, local, override, schedule, utc, window
from tocsin.scheduling import (
    InvalidArgument,
    Schedule,
    ShiftSource,
    final_shifts,
    shift_at,
    user_shifts,
    who_is_on_call,
)

LONDON = "Europe/London"
MONDAY = datetime(2026, 6, 1)  # a Monday, BST: local = UTC + 1


def _on_call(plan: Schedule, at: datetime) -> str | None:
    answer = who_is_on_call(plan, at)
    return None if answer is None else answer.user


def _two_layers() -> Schedule:
    return schedule(
        LONDON,
        layer("weekly", MONDAY, "1w", "alice"),
        layer("office", MONDAY, "1d", "bob", window("mon,tue,wed,thu,fri", "09:00", "17:00")),
    )


def test_later_layer_wins_and_lower_layer_shows_through() -> None:
    plan = _two_layers()
    answer = who_is_on_call(plan, local(LONDON, 2026, 6, 1, 12))
    assert answer is not None
    assert (answer.user, answer.source) == ("bob", ShiftSource("layer", "office", 1))
    evening = who_is_on_call(plan, local(LONDON, 2026, 6, 1, 17))
    assert evening is not None
    assert (evening.user, evening.source) == ("alice", ShiftSource("layer", "weekly", 0))
    assert _on_call(plan, local(LONDON, 2026, 6, 6, 12)) == "alice"  # Saturday


def test_layer_order_decides_not_the_start() -> None:
    plan = schedule(
        LONDON,
        layer("top-later", MONDAY, "1w", "alice"),
        layer("bottom-earlier", MONDAY + timedelta(days=1), "1w", "bob"),
    )
    assert _on_call(plan, local(LONDON, 2026, 6, 1, 12)) == "alice"  # bob's layer not started
    assert _on_call(plan, local(LONDON, 2026, 6, 2, 12)) == "bob"


def test_override_wins_over_every_layer_half_open() -> None:
    plan = schedule(
        LONDON,
        *_two_layers().layers,
        overrides=(
            override("carol", local(LONDON, 2026, 6, 1, 10), local(LONDON, 2026, 6, 1, 11), "o-1"),
        ),
    )
    tick = timedelta(microseconds=1)
    start, end = local(LONDON, 2026, 6, 1, 10), local(LONDON, 2026, 6, 1, 11)
    assert _on_call(plan, start - tick) == "bob"
    answer = who_is_on_call(plan, start)
    assert answer is not None
    assert (answer.user, answer.source) == ("carol", ShiftSource("override", "o-1", 0))
    assert _on_call(plan, end - tick) == "carol"
    assert _on_call(plan, end) == "bob"


def test_overlapping_overrides_later_listed_wins() -> None:
    ten, twelve = local(LONDON, 2026, 6, 1, 10), local(LONDON, 2026, 6, 1, 12)
    one, two = local(LONDON, 2026, 6, 1, 13), local(LONDON, 2026, 6, 1, 14)
    short_on_top = schedule(
        LONDON,
        *_two_layers().layers,
        overrides=(override("carol", ten, two), override("dave", twelve, one)),
    )
    shifts = final_shifts(short_on_top, ten, two)
    assert [(s.user, s.start, s.end) for s in shifts] == [
        ("carol", ten, twelve),
        ("dave", twelve, one),
        ("carol", one, two),
    ]
    long_on_top = schedule(
        LONDON,
        *_two_layers().layers,
        overrides=(override("dave", twelve, one), override("carol", ten, two)),
    )
    assert [(s.user, s.start, s.end) for s in final_shifts(long_on_top, ten, two)] == [
        ("carol", ten, two)
    ]
    assert _on_call(long_on_top, twelve) == "carol"


def test_override_with_nobody_beneath_and_naive_local_times() -> None:
    plan = schedule(
        "America/New_York",
        overrides=(override("carol", datetime(2026, 3, 8, 2, 30), datetime(2026, 3, 8, 5)),),
    )
    # 02:30 is in the gap: the override starts at 07:30Z (03:30 EDT); 05:00 EDT = 09:00Z.
    assert _on_call(plan, utc(2026, 3, 8, 7, 29)) is None
    assert _on_call(plan, utc(2026, 3, 8, 7, 30)) == "carol"
    assert _on_call(plan, utc(2026, 3, 8, 9)) is None


def test_handoff_instant_belongs_to_the_next_shift() -> None:
    plan = schedule(LONDON, layer("l", MONDAY, "1d", "alice,bob"))
    handoff = local(LONDON, 2026, 6, 2, 0)
    assert _on_call(plan, handoff - timedelta(microseconds=1)) == "alice"
    assert _on_call(plan, handoff) == "bob"


def test_nobody_is_an_answer_not_an_error() -> None:
    empty = schedule(LONDON)
    assert who_is_on_call(empty, utc(2026, 6, 1)) is None
    assert final_shifts(empty, utc(2026, 6, 1), utc(2027, 6, 1)) == []
    assert shift_at(empty, utc(2026, 6, 1)) is None
    future = schedule(LONDON, layer("l", datetime(2030, 1, 1), "1d", "a"))
    assert who_is_on_call(future, utc(2026, 6, 1)) is None


def test_final_shifts_are_clipped_and_merge_the_same_user_across_sources() -> None:
    plan = schedule(
        LONDON,
        layer("weekly", MONDAY, "1w", "alice"),
        layer("office", MONDAY, "1d", "alice,bob", window("mon,tue", "09:00", "17:00")),
        overrides=(
            override("alice", local(LONDON, 2026, 6, 2, 17), local(LONDON, 2026, 6, 2, 20)),
        ),
    )
    shifts = final_shifts(plan, local(LONDON, 2026, 6, 1, 6), local(LONDON, 2026, 6, 3, 6))
    weekly, office = ShiftSource("layer", "weekly", 0), ShiftSource("layer", "office", 1)
    on_top = ShiftSource("override", "", 0)
    assert shifts[0].user == "alice"
    assert (shifts[0].start, shifts[0].end) == (
        local(LONDON, 2026, 6, 1, 6),
        local(LONDON, 2026, 6, 2, 9),
    )
    assert shifts[0].sources == (weekly, office)
    assert [(s.user, s.start, s.end) for s in shifts[1:]] == [
        ("bob", local(LONDON, 2026, 6, 2, 9), local(LONDON, 2026, 6, 2, 17)),
        ("alice", local(LONDON, 2026, 6, 2, 17), local(LONDON, 2026, 6, 3, 6)),
    ]
    assert shifts[2].sources == (on_top, weekly)


def test_one_person_rotation_is_one_shift() -> None:
    plan = schedule(LONDON, layer("l", MONDAY, "12h", "alice"))
    start, end = local(LONDON, 2026, 6, 1), local(LONDON, 2026, 6, 30)
    assert [(s.user, s.start, s.end) for s in final_shifts(plan, start, end)] == [
        ("alice", start, end)
    ]


def test_shift_at_gives_the_whole_merged_shift() -> None:
    plan = _two_layers()
    shift = shift_at(plan, local(LONDON, 2026, 6, 2, 20))
    assert shift is not None
    assert (shift.user, shift.start, shift.end) == (
        "alice",
        local(LONDON, 2026, 6, 2, 17),
        local(LONDON, 2026, 6, 3, 9),
    )
    # The weekend runs Friday 17:00 to Monday 09:00: longer than the first day looked at.
    weekend = shift_at(plan, local(LONDON, 2026, 6, 6, 12))
    assert weekend is not None
    assert (weekend.start, weekend.end) == (
        local(LONDON, 2026, 6, 5, 17),
        local(LONDON, 2026, 6, 8, 9),
    )


def test_shift_at_cuts_a_never_ending_shift_at_the_horizon() -> None:
    plan = schedule(LONDON, layer("l", MONDAY, "1w", "alice"))
    at = utc(2026, 7, 1)
    shift = shift_at(plan, at, horizon=timedelta(days=10))
    assert shift is not None
    assert (shift.start, shift.end) == (at - timedelta(days=10), at + timedelta(days=10))
    assert shift_at(plan, at - timedelta(days=60)) is None
    with pytest.raises(ValueError, match="horizon must be positive"):
        shift_at(plan, at, horizon=timedelta(0))


def test_user_shifts_across_schedules() -> None:
    first = _two_layers()
    second = Schedule(
        "other",
        "Other",
        "UTC",
        (layer("nights", MONDAY, "1d", "bob", window("mon", "20:00", "22:00")),),
    )
    start, end = local(LONDON, 2026, 6, 1), local(LONDON, 2026, 6, 2)
    found = user_shifts([first, second], "bob", start, end)
    assert [(f.schedule_id, f.schedule_name, f.shift.start, f.shift.end) for f in found] == [
        ("sched", "Test schedule", local(LONDON, 2026, 6, 1, 9), local(LONDON, 2026, 6, 1, 17)),
        ("other", "Other", utc(2026, 6, 1, 20), utc(2026, 6, 1, 22)),
    ]
    assert user_shifts([first, second], "nobody-here", start, end) == []


def test_answers_are_in_utc_whatever_zone_the_question_uses() -> None:
    plan = _two_layers()
    shifts = final_shifts(plan, local(LONDON, 2026, 6, 1, 12), local(LONDON, 2026, 6, 1, 18))
    assert all(s.start.utcoffset() == timedelta(0) for s in shifts)
    assert shifts[0].start == utc(2026, 6, 1, 11)


def test_bad_questions_are_errors_naming_the_argument() -> None:
    plan = _two_layers()
    with pytest.raises(ValueError, match="at must be timezone-aware"):
        who_is_on_call(plan, datetime(2026, 6, 1, 12))
    with pytest.raises(ValueError, match="start must be timezone-aware"):
        final_shifts(plan, datetime(2026, 6, 1), utc(2026, 6, 2))
    with pytest.raises(ValueError, match="must not be before start"):
        final_shifts(plan, utc(2026, 6, 2), utc(2026, 6, 1))
    assert final_shifts(plan, utc(2026, 6, 2), utc(2026, 6, 2)) == []


def test_an_invalid_schedule_cannot_be_asked() -> None:
    broken = Schedule("x", "X", "Nowhere/Town", (layer("l", MONDAY, "1d", "a"),))
    with pytest.raises(
        InvalidArgument, match="time_zone: unknown time zone 'Nowhere/Town'"
    ) as raised:
        who_is_on_call(broken, utc(2026, 6, 1))
    assert [v.field for v in raised.value.violations] == ["time_zone"]
