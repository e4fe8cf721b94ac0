"""Durations as users write them: `30s`, `5m`, `2h`, `1d`, `1w`.

Seconds, minutes and hours are elapsed time. Days and weeks are calendar time: in a
schedule they step the local date and keep the wall-clock time, so across a DST change a
"day" lasts 23 or 25 hours. Escalation delays and notification rules use the same syntax
(where only the elapsed length matters, use `as_timedelta()`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, cast

DurationUnit = Literal["s", "m", "h", "d", "w"]

_SECONDS_PER_UNIT: dict[str, int] = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_CALENDAR_UNITS = frozenset({"d", "w"})
_SYNTAX = re.compile(r"([0-9]+)([smhdw])")


@dataclass(frozen=True)
class Duration:
    """`amount` of `unit`. Zero or negative amounts can be built (and are reported by
    validation); `parse_duration` never returns one."""

    amount: int
    unit: DurationUnit

    def __post_init__(self) -> None:
        if self.unit not in _SECONDS_PER_UNIT:
            raise ValueError(f"unknown duration unit {self.unit!r}; use s, m, h, d or w")

    @property
    def is_calendar(self) -> bool:
        """True for days and weeks, which follow the local calendar rather than the clock."""
        return self.unit in _CALENDAR_UNITS

    @property
    def days(self) -> int:
        """The number of calendar days of a `d` or `w` duration."""
        if not self.is_calendar:
            raise ValueError(f"{self} is elapsed time, not a number of days")
        return self.amount * (7 if self.unit == "w" else 1)

    def as_timedelta(self) -> timedelta:
        """The nominal elapsed length (a day counts as 24 hours)."""
        return timedelta(seconds=self.amount * _SECONDS_PER_UNIT[self.unit])

    def __str__(self) -> str:
        return f"{self.amount}{self.unit}"


def parse_duration(text: str) -> Duration:
    """Parse `<positive integer><s|m|h|d|w>`, e.g. `90s` or `1w`.

    Raises ValueError naming the offending value for anything else, including `0m`.
    """
    match = _SYNTAX.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"invalid duration {text!r}: expected a positive whole number followed by "
            "s, m, h, d or w (e.g. 30s, 5m, 2h, 1d, 1w)"
        )
    amount = int(match.group(1))
    if amount == 0:
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return Duration(amount, cast(DurationUnit, match.group(2)))
