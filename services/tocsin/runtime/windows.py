"""Local-time windows on days of the week: when a restricted schedule layer is active,
and a service's support hours (the same semantics for both, DST included).

A window is a wall-clock span on one local date; one whose end is at or before its start
runs into the next day and still belongs to the day it starts on. Both ends are resolved
with the RFC 5545 rules, so on a spring-forward day a window can come out shorter, or
empty (e.g. 02:30-03:00 in New York), and is then skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from tocsin.runtime.errors import FieldViolation
from tocsin.runtime.localtime import resolve_day_time
from tocsin.v1 import scheduling_pb2

_ONE_DAY = timedelta(days=1)

Interval = tuple[datetime, datetime]


@dataclass(frozen=True)
class Restriction:
    """A window of local wall time in which a layer is active, on each of `days`
    (0 = Monday). A window whose `end` is at or before its `start` crosses midnight and
    belongs to the day it starts on; `start == end` is a whole day, start to start."""

    days: frozenset[int]
    start: time
    end: time


def restriction_from_proto(
    msg: scheduling_pb2.Restriction, path: str, violations: list[FieldViolation]
) -> Restriction:
    """The window `msg` describes; problems are added to `violations`, named under `path`."""
    days: set[int] = set()
    for i, day in enumerate(msg.days):
        if day == scheduling_pb2.WEEKDAY_UNSPECIFIED or day not in scheduling_pb2.Weekday.values():
            violations.append(FieldViolation(f"{path}.days[{i}]", "must be a day of the week"))
        else:
            days.add(int(day) - 1)
    bounds = []
    for field, text in (("from", getattr(msg, "from")), ("to", msg.to)):
        try:
            bounds.append(time.fromisoformat(text))
        except ValueError:
            violations.append(FieldViolation(f"{path}.{field}", f"expected HH:MM, got {text!r}"))
            bounds.append(time(0))
    return Restriction(frozenset(days), bounds[0], bounds[1])


def restriction_violations(path: str, restriction: Restriction) -> list[FieldViolation]:
    """What is wrong with a window: no day, an unknown day, a time with a UTC offset."""
    violations: list[FieldViolation] = []
    if not restriction.days:
        violations.append(FieldViolation(f"{path}.days", "needs at least one day"))
    violations += [
        FieldViolation(f"{path}.days", f"unknown day {day}; days are 0 (Monday) to 6 (Sunday)")
        for day in sorted(restriction.days)
        if day not in range(7)
    ]
    violations += [
        FieldViolation(f"{path}.{field}", "must be a wall-clock time without a UTC offset")
        for field, moment in (("from", restriction.start), ("to", restriction.end))
        if moment.tzinfo is not None
    ]
    return violations


class ActiveWindows:
    """The windows of one layer. A day's windows are resolved once and remembered (for
    the most recently used days), so repeated questions cost a few comparisons."""

    def __init__(self, restrictions: Sequence[Restriction], zone: ZoneInfo) -> None:
        self._zone = zone
        self._by_weekday: list[list[tuple[time, time, timedelta]]] = [[] for _ in range(7)]
        for restriction in restrictions:
            runs_over = _ONE_DAY if restriction.end <= restriction.start else timedelta(0)
            for day in restriction.days:
                self._by_weekday[day].append((restriction.start, restriction.end, runs_over))
        self._some_run_over = any(r.end <= r.start for r in restrictions)
        self._windows_on = lru_cache(maxsize=1024)(self._resolve_windows_on)

    def _resolve_windows_on(self, day: date) -> tuple[Interval, ...]:
        windows = []
        for start, end, runs_over in self._by_weekday[day.weekday()]:
            begin = resolve_day_time(day, start, self._zone)
            finish = resolve_day_time(day + runs_over, end, self._zone)
            if begin < finish:
                windows.append((begin, finish))
        return tuple(windows)

    def contains(self, moment: datetime, local: datetime) -> bool:
        """Whether the UTC instant `moment`, which reads `local` in the zone, lies in a window."""
        today = local.date()
        days = [today]
        # Only a window that runs past midnight reaches in from the day before. A window of
        # the next day can have begun only if the clock was set back across midnight and
        # `local` is being read for the second time (fold=1).
        if self._some_run_over:
            days.append(today - _ONE_DAY)
        if local.fold:
            days.append(today + _ONE_DAY)
        for day in days:
            for begin, finish in self._windows_on(day):
                if begin <= moment < finish:
                    return True
        return False

    def between(self, start: datetime, end: datetime) -> list[Interval]:
        """The windows overlapping [start, end), clipped to it, sorted, overlaps merged."""
        day = start.astimezone(self._zone).date() - _ONE_DAY
        last = end.astimezone(self._zone).date() + _ONE_DAY
        windows: list[Interval] = []
        while day <= last:
            windows.extend(
                (max(begin, start), min(finish, end))
                for begin, finish in self._windows_on(day)
                if begin < end and finish > start
            )
            day += _ONE_DAY
        windows.sort()
        merged: list[Interval] = []
        for begin, finish in windows:
            if merged and begin <= merged[-1][1]:
                if finish > merged[-1][1]:
                    merged[-1] = (merged[-1][0], finish)
            else:
                merged.append((begin, finish))
        return merged

    def next_start(
        self, moment: datetime, horizon: timedelta = timedelta(days=8)
    ) -> datetime | None:
        """The earliest instant at or after `moment` inside a window (`moment` itself when
        it is inside one); None when no window begins within `horizon`."""
        windows = self.between(moment, moment + horizon)
        return windows[0][0] if windows else None
