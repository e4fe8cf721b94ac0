"""Restriction windows: local wall time, crossing midnight, DST, lower layers showing through."""

from datetime import datetime, timedelta

import pytest

from tests.scheduling.builders import layer, local, schedule, utc, window
from tocsin.scheduling import Restriction, Schedule, final_shifts, who_is_on_call

NY = "America/New_York"
LONDON = "Europe/London"


def _on_call(plan: Schedule, at: datetime) -> str | None:
    answer = who_is_on_call(plan, at)
    return None if answer is None else answer.user


def _base_and_restricted(zone: str, *restrictions: Restriction) -> Schedule:
    """alice always (bottom), bob only inside the restrictions (top)."""
    start = datetime(2026, 1, 5, 0, 0)  # a Monday
    return schedule(
        zone,
        layer("base", start, "1w", "alice"),
        layer("restricted", start, "1d", "bob", *restrictions),
    )


# 2026-11-13 is a Friday.
@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (local(NY, 2026, 11, 13, 21, 59), "alice"),
        (local(NY, 2026, 11, 13, 22, 0), "bob"),  # Fri 22:00: window starts
        (local(NY, 2026, 11, 14, 3, 0), "bob"),  # Sat 03:00 still Friday's window
        (local(NY, 2026, 11, 14, 5, 59), "bob"),
        (local(NY, 2026, 11, 14, 6, 0), "alice"),  # half-open: ends at 06:00
        (local(NY, 2026, 11, 14, 22, 30), "alice"),  # Saturday has no window
        (local(NY, 2026, 11, 13, 3, 0), "alice"),  # Fri 03:00 belongs to Thursday: none
    ],
)
def test_window_crossing_midnight_belongs_to_the_day_it_starts(at: datetime, expected: str) -> None:
    plan = _base_and_restricted(NY, window("fri", "22:00", "06:00"))
    assert _on_call(plan, at) == expected


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (local(NY, 2026, 11, 15, 23, 0), "bob"),  # Sunday night
        (local(NY, 2026, 11, 16, 5, 0), "bob"),  # Monday morning, Sunday's window
        (local(NY, 2026, 11, 16, 7, 0), "alice"),
        (local(NY, 2026, 11, 16, 23, 0), "alice"),  # Monday night has no window
    ],
)
def test_sunday_window_runs_into_monday(at: datetime, expected: str) -> None:
    plan = _base_and_restricted(NY, window("sun", "22:00", "06:00"))
    assert _on_call(plan, at) == expected


def test_from_equal_to_is_a_whole_day_from_start_to_start() -> None:
    plan = _base_and_restricted(NY, window("wed", "09:00", "09:00"))
    assert _on_call(plan, local(NY, 2026, 11, 18, 8, 59)) == "alice"
    assert _on_call(plan, local(NY, 2026, 11, 18, 9, 0)) == "bob"
    assert _on_call(plan, local(NY, 2026, 11, 19, 8, 59)) == "bob"
    assert _on_call(plan, local(NY, 2026, 11, 19, 9, 0)) == "alice"


def test_outside_its_windows_a_lone_layer_has_nobody() -> None:
    plan = schedule(
        NY, layer("days", datetime(2026, 11, 2, 9), "1d", "a", window("mon", "09:00", "17:00"))
    )
    assert _on_call(plan, local(NY, 2026, 11, 2, 12)) == "a"
    assert _on_call(plan, local(NY, 2026, 11, 2, 17)) is None
    assert _on_call(plan, local(NY, 2026, 11, 3, 12)) is None
    shifts = final_shifts(plan, local(NY, 2026, 11, 1), local(NY, 2026, 11, 10))
    assert [(s.user, s.start, s.end) for s in shifts] == [
        ("a", utc(2026, 11, 2, 14), utc(2026, 11, 2, 22)),
        ("a", utc(2026, 11, 9, 14), utc(2026, 11, 9, 22)),
    ]


def test_restrictions_mask_the_rotation_without_moving_it() -> None:
    # A daily rotation restricted to Mondays: day 7 is b's (7 % 2 = 1), day 14 is a's.
    plan = schedule(
        NY, layer("l", datetime(2026, 11, 2, 9), "1d", "a,b", window("mon", "10:00", "11:00"))
    )
    assert _on_call(plan, local(NY, 2026, 11, 2, 10, 30)) == "a"
    assert _on_call(plan, local(NY, 2026, 11, 9, 10, 30)) == "b"
    assert _on_call(plan, local(NY, 2026, 11, 16, 10, 30)) == "a"


def test_a_handoff_inside_a_window_splits_it() -> None:
    plan = schedule(
        NY, layer("l", datetime(2026, 11, 2, 12), "1d", "a,b", window("tue", "09:00", "17:00"))
    )
    shifts = final_shifts(plan, local(NY, 2026, 11, 3), local(NY, 2026, 11, 4))
    assert [(s.user, s.start, s.end) for s in shifts] == [
        ("a", local(NY, 2026, 11, 3, 9), local(NY, 2026, 11, 3, 12)),
        ("b", local(NY, 2026, 11, 3, 12), local(NY, 2026, 11, 3, 17)),
    ]


def test_overlapping_windows_of_one_layer_make_one_shift() -> None:
    plan = schedule(
        NY,
        layer(
            "l",
            datetime(2026, 11, 2, 0),
            "1w",
            "a",
            window("mon", "09:00", "17:00"),
            window("mon", "12:00", "20:00"),
        ),
    )
    shifts = final_shifts(plan, local(NY, 2026, 11, 2), local(NY, 2026, 11, 3))
    assert [(s.start, s.end) for s in shifts] == [
        (local(NY, 2026, 11, 2, 9), local(NY, 2026, 11, 2, 20))
    ]


# Window boundaries on transition days, resolved like any wall time: (zone, window, a
# UTC instant early that day, the expected UTC spans over the next 36 hours).
DST_WINDOWS = [
    # NY spring forward, Sunday 2026-03-08: 02:30 is in the gap -> 07:30Z (03:30 EDT)
    (NY, window("sun", "02:30", "04:00"), utc(2026, 3, 8),
     [(utc(2026, 3, 8, 7, 30), utc(2026, 3, 8, 8))]),
    # 02:30-03:00 resolves to 07:30Z-07:00Z: empty that day
    (NY, window("sun", "02:30", "03:00"), utc(2026, 3, 8), []),
    # NY fall back, Sunday 2026-11-01: 01:30 is the first (EDT) one, 03:00 EST = 08:00Z
    (NY, window("sun", "01:30", "03:00"), utc(2026, 11, 1),
     [(utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 8))]),
    # a window that ends in the repeated hour ends at its first occurrence
    (NY, window("sun", "00:00", "01:30"), utc(2026, 11, 1),
     [(utc(2026, 11, 1, 4), utc(2026, 11, 1, 5, 30))]),
    # London, Saturday 22:00 BST to Sunday 06:00 GMT across the fall-back night: 9 hours
    (LONDON, window("sat", "22:00", "06:00"), utc(2026, 10, 24, 12),
     [(utc(2026, 10, 24, 21), utc(2026, 10, 25, 6))]),
    # London spring forward: Saturday 22:00 GMT to Sunday 06:00 BST: 7 hours
    (LONDON, window("sat", "22:00", "06:00"), utc(2026, 3, 28, 12),
     [(utc(2026, 3, 28, 22), utc(2026, 3, 29, 5))]),
    # Lord Howe spring forward (02:00 -> 02:30), a window from inside the gap
    ("Australia/Lord_Howe", window("sun", "02:15", "03:00"), utc(2026, 10, 3, 12),
     [(utc(2026, 10, 3, 15, 45), utc(2026, 10, 3, 16))]),
    # Sydney fall back: a whole-day window on the 25-hour day lasts 25 hours
    ("Australia/Sydney", window("sun", "00:00", "00:00"), utc(2026, 4, 4, 6),
     [(utc(2026, 4, 4, 13), utc(2026, 4, 5, 14))]),
]  # fmt: skip


@pytest.mark.parametrize(("zone", "restriction", "day_start", "spans"), DST_WINDOWS)
def test_window_boundaries_follow_the_gap_and_fold_rules(
    zone: str, restriction: Restriction, day_start: datetime, spans: list[tuple[datetime, datetime]]
) -> None:
    plan = schedule(zone, layer("l", datetime(2026, 1, 1), "1w", "a", restriction))
    shifts = final_shifts(plan, day_start, day_start + timedelta(hours=36))
    assert [(s.start, s.end) for s in shifts] == spans
    for start, end in spans:
        assert _on_call(plan, start - timedelta(microseconds=1)) is None
        assert _on_call(plan, start) == "a"
        assert _on_call(plan, end - timedelta(microseconds=1)) == "a"
        assert _on_call(plan, end) is None


def test_window_of_the_next_local_day_can_begin_before_a_repeated_evening() -> None:
    # Antarctica/Casey went from +11 to +08 at 2010-03-04T15:00Z: the clock read Friday
    # 02:00 and was set back to Thursday 23:00. Friday's 00:00 window began at 13:00Z, so
    # at 15:30Z, when the clock reads Thursday 23:30 again, Friday's window is open.
    plan = schedule(
        "Antarctica/Casey",
        layer("l", datetime(2010, 1, 1), "1w", "a", window("fri", "00:00", "03:00")),
    )
    assert _on_call(plan, utc(2010, 3, 4, 12, 59)) is None
    assert _on_call(plan, utc(2010, 3, 4, 13)) == "a"
    assert _on_call(plan, utc(2010, 3, 4, 15, 30)) == "a"
    assert _on_call(plan, utc(2010, 3, 4, 18, 59)) == "a"
    assert _on_call(plan, utc(2010, 3, 4, 19)) is None
    shifts = final_shifts(plan, utc(2010, 3, 4), utc(2010, 3, 5))
    assert [(s.start, s.end) for s in shifts] == [(utc(2010, 3, 4, 13), utc(2010, 3, 4, 19))]
