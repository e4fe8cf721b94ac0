"""Shift hand-offs: the moments a schedule's final shifts start and end (pure, no I/O).

A hand-off notice is about one shift of one user, named by (user, schedule, the shift's
start, kind) -- its end for `end`, as a long shift's start may lie before any window
looked at -- which is also its idempotency key: a notice goes out at most once per key
whoever computes it and however often. Kinds: `start` (at the shift's start), `end` (at
its end) and `day_before` (24 hours before its start). Shifts are the final, merged ones
(scheduling/plan.py), so a user followed by themself (an override by the same person, a
one-person rotation) has no hand-off in between.

`next_handoffs(schedule, after)` answers the earliest moment strictly after `after` at
which something hands off, with every notice due then: the durable timer of a schedule is
armed for that moment, and its firing recomputes the notices from the schedule as it then
is (a change meanwhile moves or drops them) and arms the next one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from tocsin.scheduling.model import Schedule

START = "start"
END = "end"
DAY_BEFORE = "day_before"
KINDS = (START, END, DAY_BEFORE)
DAY = timedelta(days=1)
HORIZON = timedelta(days=35)
"""How far ahead a hand-off is looked for; with none in sight the timer is armed for
the horizon's end and looks again then."""


@dataclass(frozen=True, slots=True)
class Notice:
    user: str
    kind: str
    at: datetime
    """When it is due (UTC)."""
    anchor: datetime
    """The shift's start (its end for `end`): what names the shift in the key."""

    def key(self, schedule_id: str) -> str:
        """The idempotency key: one notice per (user, schedule, shift start, kind)."""
        anchor_ms = int(self.anchor.timestamp() * 1000)
        return f"handoff/{schedule_id}/{self.user}/{anchor_ms}/{self.kind}"


def notices_between(schedule: Schedule, start: datetime, end: datetime) -> list[Notice]:
    """Every notice due in (start, end], sorted by time. Shifts are read over a window a
    day wider on each side, and a shift edge at that window's edge (a clipped shift, not
    a hand-off) is no hand-off."""
    lo, hi = start - DAY - timedelta(seconds=1), end + DAY + timedelta(seconds=1)
    notices: list[Notice] = []
    for shift in schedule.plan.shifts_between(lo, hi):
        if shift.start > lo:
            notices.append(Notice(shift.user, START, shift.start, shift.start))
            notices.append(Notice(shift.user, DAY_BEFORE, shift.start - DAY, shift.start))
        if shift.end < hi:
            notices.append(Notice(shift.user, END, shift.end, shift.end))
    return sorted((n for n in notices if start < n.at <= end), key=lambda n: (n.at, n.kind, n.user))


def next_handoffs(
    schedule: Schedule, after: datetime, horizon: timedelta = HORIZON
) -> tuple[datetime, list[Notice]]:
    """The first moment after `after` with notices due, and those notices; with none
    within `horizon`, (after + horizon, [])."""
    for notice in notices_between(schedule, after, after + horizon):
        due = [n for n in notices_between(schedule, after, notice.at) if n.at == notice.at]
        return notice.at, due
    return after + horizon, []
