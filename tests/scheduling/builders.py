"""Short ways to write schedules and instants in scheduling tests."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

from tocsin.runtime.durations import parse_duration
from tocsin.scheduling import Layer, Override, Restriction, Schedule, parse_weekdays


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def local(zone: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """The UTC instant of a wall-clock reading that exists exactly once in `zone`. (UTC so
    that adding a timedelta adds elapsed time, not wall time.)"""
    moment = datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone)).astimezone(UTC)
    reading = moment.astimezone(ZoneInfo(zone)).replace(tzinfo=None)
    assert reading == datetime(year, month, day, hour, minute), "not a unique wall time"
    return moment


def window(days: str, start: str, end: str) -> Restriction:
    """`window("fri", "22:00", "06:00")`; days comma-separated."""
    return Restriction(
        parse_weekdays(days.split(",")), time.fromisoformat(start), time.fromisoformat(end)
    )


def layer(name: str, start: datetime, length: str, users: str, *restrictions: Restriction) -> Layer:
    """`layer("days", datetime(2026, 3, 7, 9), "1d", "alice,bob")`."""
    return Layer(name, start, parse_duration(length), tuple(users.split(",")), restrictions)


def override(user: str, start: datetime, end: datetime, id: str = "") -> Override:
    return Override(user, start, end, id)


def schedule(zone: str, *layers: Layer, overrides: tuple[Override, ...] = ()) -> Schedule:
    return Schedule("sched", "Test schedule", zone, layers, overrides)
