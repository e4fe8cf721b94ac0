"""The month-indexed shift lookup answers exactly as the slow search does, around month
boundaries too, on the benchmark schedule of 5 layers, 30 users and 500 overrides."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from tests.benchmarks.test_scheduling_bench import YEAR_START, _big_schedule
from tocsin.runtime.durations import parse_duration
from tocsin.scheduling import Layer, Schedule, shift_at
from tocsin.scheduling.domain import shift_at_fast


def test_fast_lookup_matches_the_slow_search_all_year() -> None:
    schedule = _big_schedule()
    rng = random.Random(11)
    moments = [YEAR_START + timedelta(seconds=rng.randrange(365 * 86400)) for _ in range(400)]
    for month in range(1, 13):  # each month's first instants and the last before them
        first = datetime(2026, month, 1, tzinfo=UTC)
        moments += [first, first - timedelta(microseconds=1), first + timedelta(hours=3)]
    for moment in moments:
        assert shift_at_fast(schedule, moment) == shift_at(schedule, moment), moment
    assert len(schedule.month_shifts) >= 12


def test_a_shift_longer_than_the_window_is_looked_up_whole() -> None:
    solo = Schedule(
        "solo",
        "Solo",
        "Europe/London",
        (Layer("always", datetime(2026, 1, 1, 9), parse_duration("1w"), ("alice",)),),
    )
    moment = datetime(2026, 6, 15, 12, tzinfo=UTC)
    fast = shift_at_fast(solo, moment)
    assert fast == shift_at(solo, moment)
    assert fast is not None and fast.end - fast.start > timedelta(days=45)
