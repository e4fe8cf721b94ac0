"""Who is on call: the questions other services ask of a schedule. Pure, no I/O.

Every answer is computed from the schedule value and the instants passed in; nothing
reads the clock. Instants must be timezone-aware; answers are in UTC.
"""

from __future__ import annotations

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
