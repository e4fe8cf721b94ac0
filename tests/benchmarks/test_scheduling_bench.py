"""Scheduling speed: a schedule with 5 layers, 30 users and 500 overrides.

Targets (in process): who_is_on_call under 50 us, a year of final_shifts under 50 ms.
Run with `pytest tests/benchmarks/test_scheduling_bench.py`; CI runs it with
`--benchmark-disable` (each body once, as a smoke test). Nothing here asserts on time.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, time, timedelta

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from tocsin.runtime.durations import parse_duration
from tocsin.scheduling import (
    Layer,
    Override,
    Restriction,
    Schedule,
    final_shifts,
    parse_weekdays,
    shift_at,
    who_is_on_call,
)
from tocsin.scheduling.plan import SchedulePlan

pytestmark = pytest.mark.benchmark

USERS = [f"user-{i:02d}" for i in range(30)]
YEAR_START = datetime(2026, 1, 1, tzinfo=UTC)
YEAR_END = datetime(2027, 1, 1, tzinfo=UTC)


def _big_schedule() -> Schedule:
    rng = random.Random(2026)
    start = datetime(2025, 12, 1, 9)
    weekdays = parse_weekdays(["mon", "tue", "wed", "thu", "fri"])
    # Lowest first. Only the bottom layer has no restrictions, so at many instants the
    # question falls through all five layers.
    layers = (
        Layer("weekly", start, parse_duration("1w"), tuple(USERS[0:10])),
        Layer(
            "weekend-days",
            start,
            parse_duration("12h"),
            tuple(USERS[10:16]),
            (Restriction(parse_weekdays(["sat", "sun"]), time(8), time(20)),),
        ),
        Layer(
            "weeknights",
            start,
            parse_duration("8h"),
            tuple(USERS[16:20]),
            (Restriction(weekdays, time(17), time(9)),),
        ),
        Layer(
            "office-days",
            start,
            parse_duration("1d"),
            tuple(USERS[20:26]),
            (Restriction(weekdays, time(9), time(12)), Restriction(weekdays, time(13), time(17))),
        ),
        Layer(
            "friday-late",
            start,
            parse_duration("2d"),
            tuple(USERS[26:30]),
            (Restriction(parse_weekdays(["fri"]), time(22), time(6)),),
        ),
    )
    overrides = []
    for i in range(500):
        begin = YEAR_START + timedelta(minutes=rng.randrange(0, 365 * 24 * 60))
        end = begin + timedelta(minutes=rng.randrange(30, 12 * 60))
        overrides.append(Override(rng.choice(USERS), begin, end, f"o-{i}"))
    return Schedule("big", "Big schedule", "America/New_York", layers, tuple(overrides))


@pytest.fixture(scope="module")
def big() -> Schedule:
    schedule = _big_schedule()
    assert who_is_on_call(schedule, YEAR_START) is not None  # builds the cached plan
    return schedule


def _moments(seed: int) -> list[datetime]:
    rng = random.Random(seed)
    return [YEAR_START + timedelta(seconds=rng.randrange(365 * 86400)) for _ in range(1000)]


def test_who_is_on_call_at_any_instant(benchmark: BenchmarkFixture, big: Schedule) -> None:
    moments = itertools.cycle(_moments(1))
    answer = benchmark(lambda: who_is_on_call(big, next(moments)))
    assert answer is not None


def test_who_is_on_call_through_all_layers(benchmark: BenchmarkFixture, big: Schedule) -> None:
    """Instants no override or upper layer covers: the question reaches the bottom layer."""
    deepest = [
        m
        for m in _moments(2)
        if who_is_on_call(big, m).source.name == "weekly"  # type: ignore[union-attr]
    ]
    moments = itertools.cycle(deepest)
    answer = benchmark(lambda: who_is_on_call(big, next(moments)))
    assert answer is not None
    assert answer.source.name == "weekly"


def test_who_is_on_call_on_days_not_asked_about_before(
    benchmark: BenchmarkFixture, big: Schedule
) -> None:
    """Instants spread over a century: restriction windows and handoffs of each day have to
    be resolved afresh (the plan remembers the last 1024 days per layer)."""
    rng = random.Random(4)
    moments = itertools.cycle(
        [YEAR_START + timedelta(seconds=rng.randrange(100 * 365 * 86400)) for _ in range(20000)]
    )
    assert benchmark(lambda: who_is_on_call(big, next(moments))) is not None


def test_a_year_of_final_shifts(benchmark: BenchmarkFixture, big: Schedule) -> None:
    shifts = benchmark(final_shifts, big, YEAR_START, YEAR_END)
    assert shifts[0].start == YEAR_START
    assert shifts[-1].end == YEAR_END


def test_shift_at(benchmark: BenchmarkFixture, big: Schedule) -> None:
    moments = itertools.cycle(_moments(3))
    assert benchmark(lambda: shift_at(big, next(moments))) is not None


def test_building_the_plan(benchmark: BenchmarkFixture) -> None:
    """What a request pays when the schedule value is new (e.g. just read from Redis)."""
    schedule = _big_schedule()
    plan = benchmark(SchedulePlan, schedule)
    assert plan.on_call_at(YEAR_START) is not None
