"""Properties of final shifts over random schedules near DST transitions, checked
against the slow reference model in `reference.py`."""

from __future__ import annotations

import os
from bisect import bisect_right
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from itertools import pairwise
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.scheduling.reference import ReferenceSchedule, local_midnight
from tocsin.runtime.durations import parse_duration
from tocsin.scheduling import (
    Layer,
    Override,
    Restriction,
    Schedule,
    Shift,
    final_shifts,
    shift_at,
    who_is_on_call,
)
from tocsin.scheduling.domain import (
    shift_at_fast,
)

ZONES = [
    "America/New_York",
    "Europe/London",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
]
TRANSITION_DAYS = [
    date(2026, 3, 8),
    date(2026, 3, 29),
    date(2026, 4, 5),
    date(2026, 10, 4),
    date(2026, 10, 25),
    date(2026, 11, 1),
]
TRICKY_TIMES = [time(h, m) for h in (0, 1, 2, 3) for m in (0, 15, 30, 45)] + [
    time(9),
    time(17),
    time(22),
]
USERS = ["alice", "bob", "carol", "dave"]
SPAN = timedelta(days=3)  # queries look this far either side of the transition day

# Examples per property; raise it for a deeper search (e.g. TOCSIN_HYPOTHESIS_EXAMPLES=2000).
EXAMPLES = int(os.environ.get("TOCSIN_HYPOTHESIS_EXAMPLES", "40"))
PROPERTY = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

wall_times = st.one_of(
    st.sampled_from(TRICKY_TIMES),
    st.builds(time, st.integers(0, 23), st.sampled_from([0, 10, 30, 59])),
)


@dataclass(frozen=True)
class Case:
    schedule: Schedule
    start: datetime  # the query window, UTC
    end: datetime

    def reference(self) -> ReferenceSchedule:
        return ReferenceSchedule(self.schedule, self.end + timedelta(days=1))


@st.composite
def layers(draw: st.DrawFn, index: int, day: date) -> Layer:
    wall = datetime.combine(day + timedelta(days=draw(st.integers(-8, 1))), draw(wall_times))
    if draw(st.booleans()):
        start = wall
    else:
        start = wall.replace(tzinfo=timezone(timedelta(minutes=30 * draw(st.integers(-24, 28)))))
    restrictions = draw(
        st.lists(
            st.builds(
                Restriction, st.frozensets(st.integers(0, 6), min_size=1), wall_times, wall_times
            ),
            max_size=2,
        )
    )
    return Layer(
        f"layer-{index}",
        start,
        parse_duration(draw(st.sampled_from(["45m", "1h", "5h", "12h", "1d", "2d", "1w"]))),
        tuple(draw(st.lists(st.sampled_from(USERS), min_size=1, max_size=3))),
        tuple(restrictions),
    )


@st.composite
def cases(draw: st.DrawFn) -> Case:
    zone = draw(st.sampled_from(ZONES))
    day = draw(st.sampled_from(TRANSITION_DAYS))
    midnight = local_midnight(day, ZoneInfo(zone))
    count = draw(st.integers(0, 3))
    overrides = []
    for _ in range(draw(st.integers(0, 4))):
        start = midnight + timedelta(minutes=draw(st.integers(-4 * 1440, 4 * 1440)))
        end = start + timedelta(minutes=draw(st.integers(1, 2 * 1440)))
        overrides.append(Override(draw(st.sampled_from(USERS)), start, end))
    schedule = Schedule(
        "s",
        "S",
        zone,
        tuple(draw(layers(i, day)) for i in range(count)),
        tuple(overrides),
    )
    return Case(schedule, midnight - SPAN, midnight + SPAN)


def instants(case: Case, shifts: list[Shift]) -> st.SearchStrategy[list[datetime]]:
    """Random instants in the window, plus every shift boundary and the moment before."""
    tick = timedelta(microseconds=1)
    edges = [m for s in shifts for m in (s.start, s.start - tick, s.end, s.end - tick)]
    edges = [m for m in edges if case.start <= m < case.end]
    seconds = int((case.end - case.start).total_seconds())
    random = st.lists(st.integers(0, seconds - 1), max_size=25).map(
        lambda offsets: [case.start + timedelta(seconds=o) for o in offsets]
    )
    return random.map(lambda found: found + edges)


def shift_containing(shifts: list[Shift], moment: datetime) -> Shift | None:
    i = bisect_right([s.start for s in shifts], moment) - 1
    return shifts[i] if i >= 0 and moment < shifts[i].end else None


@PROPERTY
@given(cases())
def test_final_shifts_are_sorted_disjoint_clipped_and_merged(case: Case) -> None:
    shifts = final_shifts(case.schedule, case.start, case.end)
    for shift in shifts:
        assert case.start <= shift.start < shift.end <= case.end
        assert shift.sources
    for before, after in pairwise(shifts):
        assert before.end <= after.start
        if before.end == after.start:
            assert before.user != after.user


@PROPERTY
@given(st.data(), cases())
def test_shifts_cover_exactly_when_someone_is_on_call(data: st.DataObject, case: Case) -> None:
    shifts = final_shifts(case.schedule, case.start, case.end)
    reference = case.reference()
    for moment in data.draw(instants(case, shifts)):
        shift = shift_containing(shifts, moment)
        expected = reference.user_at(moment)
        assert (shift is not None) == (expected is not None), moment
        assert (shift and shift.user) == expected, moment


@PROPERTY
@given(st.data(), cases())
def test_who_is_on_call_agrees_with_final_shifts_and_the_reference(
    data: st.DataObject, case: Case
) -> None:
    shifts = final_shifts(case.schedule, case.start, case.end)
    reference = case.reference()
    for moment in data.draw(instants(case, shifts)):
        answer = who_is_on_call(case.schedule, moment)
        shift = shift_containing(shifts, moment)
        assert (answer and answer.user) == reference.user_at(moment), moment
        assert (answer is None) == (shift is None)
        if answer is not None and shift is not None:
            assert answer.user == shift.user
            assert answer.source in shift.sources
            whole = shift_at(case.schedule, moment)
            assert whole is not None
            clipped = (max(whole.start, case.start), min(whole.end, case.end))
            assert (whole.user, *clipped) == (shift.user, shift.start, shift.end)


@PROPERTY
@given(st.data(), cases())
def test_an_override_always_wins(data: st.DataObject, case: Case) -> None:
    for index, override in enumerate(case.schedule.overrides):
        length = (override.end - override.start) // timedelta(microseconds=1)
        moment = override.start + timedelta(microseconds=data.draw(st.integers(0, length - 1)))
        answer = who_is_on_call(case.schedule, moment)
        assert answer is not None
        assert answer.source.kind == "override"
        on_top = max(i for i, o in enumerate(case.schedule.overrides) if o.start <= moment < o.end)
        assert on_top >= index
        assert (answer.user, answer.source.index) == (
            case.schedule.overrides[on_top].user,
            on_top,
        )


@PROPERTY
@given(st.data(), cases())
def test_the_answer_does_not_depend_on_the_query_window(data: st.DataObject, case: Case) -> None:
    seconds = int((case.end - case.start).total_seconds())
    at = case.start + timedelta(seconds=data.draw(st.integers(0, seconds - 1)))
    before = [timedelta(seconds=data.draw(st.integers(1, seconds))) for _ in range(2)]
    after = [timedelta(seconds=data.draw(st.integers(1, seconds))) for _ in range(2)]
    windows = [(at - b, at + a) for b, a in zip(before, after, strict=True)]
    found = [shift_containing(final_shifts(case.schedule, s, e), at) for s, e in windows]
    (s1, e1), (s2, e2) = windows
    common = (max(s1, s2), min(e1, e2))
    clipped = [
        None if f is None else (f.user, max(f.start, common[0]), min(f.end, common[1]))
        for f in found
    ]
    assert clipped[0] == clipped[1]
    answer = who_is_on_call(case.schedule, at)
    assert (answer and answer.user) == (clipped[0] and clipped[0][0])


@PROPERTY
@given(st.data(), cases())
def test_the_fast_shift_lookup_gives_the_same_whole_shift(data: st.DataObject, case: Case) -> None:
    shifts = final_shifts(case.schedule, case.start, case.end)
    for moment in data.draw(instants(case, shifts)):
        assert shift_at_fast(case.schedule, moment) == shift_at(case.schedule, moment), moment
