"""A schedule precomputed for fast queries (built once per `Schedule` value).

Overrides are flattened into sorted, non-overlapping pieces up front, so the override in
force at an instant is one bisect away. Each layer answers for an instant with rotation
arithmetic and a look at a few local days of restriction windows. Queries therefore cost
O(layers + log overrides), whatever the schedule's age.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from datetime import datetime
from zoneinfo import ZoneInfo

from tocsin.runtime.errors import InvalidArgument
from tocsin.runtime.localtime import load_zone, to_utc
from tocsin.runtime.windows import ActiveWindows, Interval
from tocsin.scheduling.model import (
    Layer,
    OnCall,
    Schedule,
    Shift,
    ShiftSource,
)
from tocsin.scheduling.rotation import Rotation
from tocsin.scheduling.timeline import Segment, merge_by_user, top_segments
from tocsin.scheduling.validation import validate_schedule


class LayerPlan:
    def __init__(self, layer: Layer, index: int, zone: ZoneInfo) -> None:
        self._users = layer.users
        self._rotation = Rotation(layer.start, layer.rotation_length, zone)
        self._windows = ActiveWindows(layer.restrictions, zone) if layer.restrictions else None
        self.source = ShiftSource("layer", layer.name, index)

    def user_at(self, moment: datetime, local: datetime) -> str | None:
        """Who this layer has on call at the UTC instant `moment`, which reads `local`."""
        k = self._rotation.index_at(moment, local.date())
        if k < 0 or (self._windows is not None and not self._windows.contains(moment, local)):
            return None
        return self._users[k % len(self._users)]

    def segments(self, start: datetime, end: datetime) -> list[Segment]:
        """This layer's on-call time within [start, end), clipped, sorted."""
        priority = self.source.index
        shifts = [
            Segment(
                max(begin, start),
                min(finish, end),
                priority,
                self._users[k % len(self._users)],
                self.source,
            )
            for k, begin, finish in self._rotation.shifts(start, end)
        ]
        if self._windows is None:
            return shifts
        return _within(shifts, self._windows.between(start, end))


def _within(shifts: list[Segment], windows: list[Interval]) -> list[Segment]:
    """The parts of sorted, disjoint `shifts` inside sorted, disjoint `windows`."""
    parts: list[Segment] = []
    i = j = 0
    while i < len(shifts) and j < len(windows):
        shift, (begin, finish) = shifts[i], windows[j]
        if shift.start < finish and begin < shift.end:
            parts.append(shift._replace(start=max(shift.start, begin), end=min(shift.end, finish)))
        if shift.end <= finish:
            i += 1
        else:
            j += 1
    return parts


class SchedulePlan:
    def __init__(self, schedule: Schedule) -> None:
        violations = validate_schedule(schedule)
        if violations:
            raise InvalidArgument(violations)
        self._zone = zone = load_zone(schedule.time_zone)
        self._layers = [LayerPlan(layer, i, zone) for i, layer in enumerate(schedule.layers)]
        self._layers_top_first = self._layers[::-1]
        self._overrides = top_segments(
            Segment(
                to_utc(o.start, zone),
                to_utc(o.end, zone),
                i,
                o.user,
                ShiftSource("override", o.id, i),
            )
            for i, o in enumerate(schedule.overrides)
        )
        self._override_starts = [piece.start for piece in self._overrides]
        self._override_ends = [piece.end for piece in self._overrides]

    def on_call_at(self, moment: datetime) -> OnCall | None:
        """Who is on call at the UTC instant `moment`, and why."""
        i = bisect_right(self._override_starts, moment) - 1
        if i >= 0 and moment < self._override_ends[i]:
            return OnCall(self._overrides[i].user, self._overrides[i].source)
        local = moment.astimezone(self._zone)
        for layer in self._layers_top_first:
            user = layer.user_at(moment, local)
            if user is not None:
                return OnCall(user, layer.source)
        return None

    def shifts_between(self, start: datetime, end: datetime) -> list[Shift]:
        """Final shifts within [start, end) (UTC), clipped, merged per user."""
        claims: list[Segment] = []
        for layer in self._layers:
            claims += layer.segments(start, end)
        above_layers = len(self._layers)
        first = bisect_right(self._override_ends, start)
        stop = bisect_left(self._override_starts, end)
        claims += (
            piece._replace(
                start=max(piece.start, start), end=min(piece.end, end), priority=above_layers
            )
            for piece in self._overrides[first:stop]
        )
        return merge_by_user(top_segments(claims))
