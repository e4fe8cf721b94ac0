"""Wall-clock times in a schedule's time zone, resolved the way RFC 5545 does.

A local time that does not exist (the hour skipped when clocks spring forward) is read
with the UTC offset in force before the gap, so 02:30 on a New York spring-forward day
is 07:30Z, which the clock shows as 03:30 EDT. A local time that exists twice (the hour
repeated when clocks fall back) means its first occurrence. PEP 495's `fold=0` gives
exactly these answers with `zoneinfo`, so resolution is `replace(tzinfo=zone, fold=0)`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def load_zone(name: str) -> ZoneInfo:
    """The IANA zone `name`; ValueError naming it if there is no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"unknown time zone {name!r}") from error


def resolve_wall_time(local: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of the naive wall-clock time `local` in `zone` (RFC 5545 rules)."""
    return local.replace(tzinfo=zone, fold=0).astimezone(UTC)


def resolve_day_time(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock `at` on local date `day` in `zone` (RFC 5545 rules)."""
    return resolve_wall_time(datetime.combine(day, at), zone)


def to_utc(moment: datetime, zone: ZoneInfo) -> datetime:
    """`moment` as a UTC instant: an offset is used as given, a naive time is wall-clock
    time in `zone`."""
    if moment.tzinfo is None:
        return resolve_wall_time(moment, zone)
    return moment.astimezone(UTC)


def wall_time(moment: datetime, zone: ZoneInfo) -> datetime:
    """The naive wall-clock reading in `zone` at the aware instant `moment`."""
    return moment.astimezone(zone).replace(tzinfo=None, fold=0)
