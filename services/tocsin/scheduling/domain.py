"""Who is on call: the questions other services ask of a schedule. Pure, no I/O.

Every answer is computed from the schedule value and the instants passed in; nothing
reads the clock. Instants must be timezone-aware; answers are in UTC.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from tocsin.scheduling.model import OnCall, Schedule, ScheduleShift, Shift


def who_is_on_call(schedule: Schedule, at: datetime) -> OnCall | None:
    """The user on call at `at` and the layer or override that put them there; None
    when nobody is. Raises InvalidArgument for a schedule that does not validate."""
    return schedule.plan.on_call_at(_utc(at, "at"))


def final_shifts(schedule: Schedule, start: datetime, end: datetime) -> list[Shift]:
    """The final on-call shifts within [start, end): clipped to it, sorted, non-overlapping,
    touching shifts of the same user merged. Gaps are times when nobody is on call."""
    start, end = _window(start, end)
    return schedule.plan.shifts_between(start, end)


def shift_at(
    schedule: Schedule, at: datetime, horizon: timedelta = timedelta(days=31)
) -> Shift | None:
    """The final (merged) shift in progress at `at`, None when nobody is on call.

    It is looked for at most `horizon` either side of `at`: a shift that runs on beyond
    that (e.g. a one-person rotation) is cut at `at - horizon` / `at + horizon`. The
    search window starts at a day and grows, so the usual answer costs a day's worth of
    shifts, not the horizon's.
    """
    moment = _utc(at, "at")
    if horizon <= timedelta(0):
        raise ValueError(f"horizon must be positive, got {horizon}")
    plan = schedule.plan
    if plan.on_call_at(moment) is None:
        return None
    reach = min(timedelta(days=1), horizon)
    while True:
        start, end = moment - reach, moment + reach
        shift = next(s for s in plan.shifts_between(start, end) if s.start <= moment < s.end)
        if (start < shift.start and shift.end < end) or reach >= horizon:
            return shift
        reach = min(reach * 4, horizon)


_MONTH_PAD = timedelta(days=7)
_MONTHS_KEPT = 36


def shift_at_fast(schedule: Schedule, at: datetime) -> Shift | None:
    """`shift_at`, answered by bisecting the final shifts of `at`'s month (computed once per
    month of a schedule value, with a week's margin either side) whenever the shift lies
    inside that window; a shift that reaches the window's edge is looked up the slow way,
    so the answer is always the whole merged shift."""
    moment = _utc(at, "at")
    key = (moment.year, moment.month)
    window_start = datetime(moment.year, moment.month, 1, tzinfo=UTC) - _MONTH_PAD
    next_month = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)
    window_end = next_month + _MONTH_PAD
    shifts = schedule.month_shifts.get(key)
    if shifts is None:
        if len(schedule.month_shifts) >= _MONTHS_KEPT:
            schedule.month_shifts.clear()
        shifts = schedule.plan.shifts_between(window_start, window_end)
        schedule.month_shifts[key] = shifts
    index = bisect.bisect_right(shifts, moment, key=lambda s: s.start) - 1
    if index < 0 or not shifts[index].start <= moment < shifts[index].end:
        return None
    shift = shifts[index]
    if shift.start <= window_start or shift.end >= window_end:
        return shift_at(schedule, moment)
    return shift


def user_shifts(
    schedules: Iterable[Schedule], user: str, start: datetime, end: datetime
) -> list[ScheduleShift]:
    """`user`'s final shifts within [start, end) across `schedules`, sorted by start.
    Shifts in different schedules may overlap: a user can be on call for two at once."""
    start, end = _window(start, end)
    found = [
        ScheduleShift(schedule.id, schedule.name, shift)
        for schedule in schedules
        for shift in schedule.plan.shifts_between(start, end)
        if shift.user == user
    ]
    found.sort(key=lambda s: (s.shift.start, s.schedule_id))
    return found


def _utc(moment: datetime, field: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{field} must be timezone-aware, got {moment.isoformat()}")
    return moment.astimezone(UTC)


def _window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    start, end = _utc(start, "start"), _utc(end, "end")
    if end < start:
        raise ValueError(f"end ({end.isoformat()}) must not be before start ({start.isoformat()})")
    return start, end
