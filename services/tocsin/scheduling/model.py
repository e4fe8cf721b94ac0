"""The values a schedule is made of, and the answers computed from it.

All values are frozen. Times without a UTC offset (a layer's `start`, an override's
`start`/`end`) are wall-clock times in the schedule's time zone, resolved by the RFC 5545
rules in `localtime`; times with an offset are used as given.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Literal

from tocsin.runtime.durations import Duration
from tocsin.runtime.windows import Restriction

if TYPE_CHECKING:
    from tocsin.scheduling.plan import SchedulePlan

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Day names as users write them; the position is Python's `date.weekday()`."""


def parse_weekdays(names: Iterable[str]) -> frozenset[int]:
    """`["mon", "fri"]` -> `frozenset({0, 4})`; ValueError naming an unknown day."""
    days = set()
    for name in names:
        key = name.strip().lower()
        if key not in WEEKDAYS:
            raise ValueError(f"unknown day {name!r}; use mon, tue, wed, thu, fri, sat or sun")
        days.add(WEEKDAYS.index(key))
    return frozenset(days)


@dataclass(frozen=True)
class Layer:
    """A rotation: hands off at `start` and then every `rotation_length`; shift k
    belongs to `users[k % len(users)]`. With restrictions, it is on call only inside them."""

    name: str
    start: datetime
    rotation_length: Duration
    users: tuple[str, ...]
    restrictions: tuple[Restriction, ...] = ()


@dataclass(frozen=True)
class Override:
    """`user` is on call over [start, end), above every layer. `id` names it to the
    outside world (as a shift's source); it may be empty before one is assigned."""

    user: str
    start: datetime
    end: datetime
    id: str = ""


@dataclass(frozen=True)
class Schedule:
    """Layers are listed lowest first: where several have someone, the later one wins.
    Overrides win over every layer; of overlapping overrides, the later-listed wins."""

    id: str
    name: str
    time_zone: str
    layers: tuple[Layer, ...] = ()
    overrides: tuple[Override, ...] = ()
    version: int = 0
    """The stored version this was compiled from (0: not stored)."""

    @cached_property
    def plan(self) -> SchedulePlan:
        """The precomputed form every query uses, built once per schedule value.

        Raises `InvalidArgument` (with the field violations) if the schedule does not
        validate."""
        from tocsin.scheduling.plan import SchedulePlan  # plan.py imports this module

        return SchedulePlan(self)

    @cached_property
    def month_shifts(self) -> dict[tuple[int, int], list[Shift]]:
        """Final shifts per (year, month), filled by `domain.shift_at_fast` on first use."""
        return {}


@dataclass(frozen=True)
class ShiftSource:
    """Who put a user on call: a layer (its name and position in `Schedule.layers`) or an
    override (its id and position in `Schedule.overrides`)."""

    kind: Literal["layer", "override"]
    name: str
    index: int


@dataclass(frozen=True)
class OnCall:
    user: str
    source: ShiftSource


@dataclass(frozen=True)
class Shift:
    """A final, merged stretch of one user's on-call time, in UTC. `sources` lists what put
    the user on call over the stretch, in time order, each once."""

    user: str
    start: datetime
    end: datetime
    sources: tuple[ShiftSource, ...]


@dataclass(frozen=True)
class ScheduleShift:
    """A shift together with the schedule it comes from (a user's view across schedules)."""

    schedule_id: str
    schedule_name: str
    shift: Shift
