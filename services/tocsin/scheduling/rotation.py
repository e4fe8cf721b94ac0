"""Where a layer's handoffs fall, found by arithmetic instead of by walking shifts.

Elapsed lengths (s, m, h) hand off every fixed number of seconds, so the shift in
progress is one floor division away. Calendar lengths (d, w) hand off at the layer's
local wall time every so many local days; the shift index comes from the difference
of local dates, corrected by at most a step or two where the wall time of the handoff
has not come yet (or a DST change moved it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from tocsin.runtime.durations import Duration
from tocsin.runtime.localtime import resolve_wall_time, to_utc, wall_time


class Rotation:
    def __init__(self, start: datetime, length: Duration, zone: ZoneInfo) -> None:
        self.start = to_utc(start, zone)
        self._zone = zone
        self._step: timedelta | None = None if length.is_calendar else length.as_timedelta()
        self._step_days = length.days if length.is_calendar else 0
        # A naive start is the wall time the user asked for, even inside a DST gap where
        # the first handoff itself lands later; every later handoff keeps that wall time.
        self._wall_start = start if start.tzinfo is None else wall_time(start, zone)
        # Resolving a calendar handoff costs a time zone lookup; recent ones are remembered.
        self.handoff: Callable[[int], datetime] = (
            lru_cache(maxsize=1024)(self._calendar_handoff)
            if length.is_calendar
            else self._elapsed_handoff
        )
        """When shift `k` (k >= 0) begins, in UTC."""

    def _elapsed_handoff(self, k: int) -> datetime:
        assert self._step is not None
        return self.start + k * self._step

    def _calendar_handoff(self, k: int) -> datetime:
        if k == 0:
            return self.start
        local = self._wall_start + timedelta(days=k * self._step_days)
        return resolve_wall_time(local, self._zone)

    def index_at(self, moment: datetime, today: date) -> int:
        """The shift in progress at the UTC instant `moment`, whose local date is `today`;
        -1 before the first handoff."""
        if moment < self.start:
            return -1
        if self._step is not None:
            return (moment - self.start) // self._step
        elapsed_days = (today - self._wall_start.date()).days
        k = max(elapsed_days // self._step_days, 0)
        while k > 0 and self.handoff(k) > moment:
            k -= 1
        while self.handoff(k + 1) <= moment:
            k += 1
        return k

    def shifts(self, start: datetime, end: datetime) -> Iterator[tuple[int, datetime, datetime]]:
        """(k, begin, finish) of every shift overlapping [start, end), not clipped."""
        k = max(self.index_at(start, start.astimezone(self._zone).date()), 0)
        begin = self.handoff(k)
        while begin < end:
            finish = self.handoff(k + 1)
            yield k, begin, finish
            k, begin = k + 1, finish
