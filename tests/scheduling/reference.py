"""A slow, obviously-correct model of schedule semantics to check the fast one against.

It derives the RFC 5545 reading of a wall time by searching instants, enumerates every
handoff from the first one, and lists every restriction window day by day; it shares
no code with `tocsin.scheduling` beyond the value types.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from tocsin.scheduling import Layer, Schedule


def rfc5545_by_search(wall: datetime, zone: ZoneInfo) -> datetime:
    """The earliest instant whose local reading is `wall`; if there is none (a gap),
    `wall` read with the offset in force a day earlier."""
    offsets = {
        (wall.replace(tzinfo=UTC) + timedelta(hours=h)).astimezone(zone).utcoffset()
        for h in range(-30, 31, 3)
    }
    readings = [(wall - offset).replace(tzinfo=UTC) for offset in offsets if offset is not None]
    matches = [m for m in readings if m.astimezone(zone).replace(tzinfo=None) == wall]
    if matches:
        return min(matches)
    before = (wall.replace(tzinfo=UTC) - timedelta(days=1)).astimezone(zone).utcoffset()
    assert before is not None
    return (wall - before).replace(tzinfo=UTC)


def _instant(moment: datetime, zone: ZoneInfo) -> datetime:
    if moment.tzinfo is not None:
        return moment.astimezone(UTC)
    return rfc5545_by_search(moment, zone)


class ReferenceLayer:
    def __init__(self, layer: Layer, zone: ZoneInfo, until: datetime) -> None:
        self.users = layer.users
        first = _instant(layer.start, zone)
        wall = (
            layer.start.replace(tzinfo=None)
            if layer.start.tzinfo is None
            else (layer.start.astimezone(zone).replace(tzinfo=None))
        )
        self.handoffs = [first]
        length = layer.rotation_length
        while self.handoffs[-1] <= until:
            k = len(self.handoffs)
            if length.unit in ("d", "w"):
                step = timedelta(days=length.amount * (7 if length.unit == "w" else 1))
                self.handoffs.append(rfc5545_by_search(wall + k * step, zone))
            else:
                self.handoffs.append(first + k * length.as_timedelta())
        self.windows: list[tuple[datetime, datetime]] | None = None
        if layer.restrictions:
            self.windows = []
            day = first.astimezone(zone).date() - timedelta(days=2)
            while day <= until.astimezone(zone).date() + timedelta(days=2):
                for r in layer.restrictions:
                    if day.weekday() in r.days:
                        end_day = day + timedelta(days=1) if r.end <= r.start else day
                        self.windows.append(
                            (
                                rfc5545_by_search(datetime.combine(day, r.start), zone),
                                rfc5545_by_search(datetime.combine(end_day, r.end), zone),
                            )
                        )
                day += timedelta(days=1)

    def user_at(self, moment: datetime) -> str | None:
        k = bisect_right(self.handoffs, moment) - 1
        if k < 0:
            return None
        if self.windows is not None and not any(b <= moment < e for b, e in self.windows):
            return None
        return self.users[k % len(self.users)]


class ReferenceSchedule:
    """Answers for instants up to `until` (and a little before the earliest layer)."""

    def __init__(self, schedule: Schedule, until: datetime) -> None:
        zone = ZoneInfo(schedule.time_zone)
        self.layers = [ReferenceLayer(layer, zone, until) for layer in schedule.layers]
        self.overrides = [
            (_instant(o.start, zone), _instant(o.end, zone), o.user) for o in schedule.overrides
        ]

    def user_at(self, moment: datetime) -> str | None:
        for start, end, covering in reversed(self.overrides):
            if start <= moment < end:
                return covering
        for layer in reversed(self.layers):
            user = layer.user_at(moment)
            if user is not None:
                return user
        return None


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return rfc5545_by_search(datetime.combine(day, datetime.min.time()), zone)
