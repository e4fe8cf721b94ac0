"""Flattening overlapping claims on on-call time into one line of who is on call.

A claim is a `Segment`: [start, end) for `user` with a `priority`; where claims overlap
the highest priority wins. One sweep over the sorted boundaries with a heap of open
claims does it in O(n log n).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from datetime import datetime
from itertools import pairwise
from typing import NamedTuple

from tocsin.scheduling.model import Shift, ShiftSource


class Segment(NamedTuple):
    start: datetime
    end: datetime
    priority: int
    user: str
    source: ShiftSource


def top_segments(segments: Iterable[Segment]) -> list[Segment]:
    """The winning claim over time: sorted, non-overlapping; touching pieces of the same
    claim (same user and source) joined. Claims of equal priority must not overlap."""
    claims = sorted((s for s in segments if s.start < s.end), key=lambda s: s.start)
    bounds = sorted({s.start for s in claims} | {s.end for s in claims})
    open_claims: list[tuple[int, datetime, int]] = []
    winners: list[Segment] = []
    next_claim = 0
    for here, there in pairwise(bounds):
        while next_claim < len(claims) and claims[next_claim].start <= here:
            claim = claims[next_claim]
            heapq.heappush(open_claims, (-claim.priority, claim.end, next_claim))
            next_claim += 1
        while open_claims and open_claims[0][1] <= here:
            heapq.heappop(open_claims)
        if not open_claims:
            continue
        top = claims[open_claims[0][2]]
        last = winners[-1] if winners else None
        if last and last.end == here and last.user == top.user and last.source == top.source:
            winners[-1] = last._replace(end=there)
        else:
            winners.append(top._replace(start=here, end=there))
    return winners


def merge_by_user(segments: Iterable[Segment]) -> list[Shift]:
    """Sorted non-overlapping segments as shifts, touching ones of the same user joined."""
    shifts: list[Shift] = []
    for segment in segments:
        last = shifts[-1] if shifts else None
        if last and last.end == segment.start and last.user == segment.user:
            sources = last.sources
            if segment.source not in sources:
                sources += (segment.source,)
            shifts[-1] = Shift(last.user, last.start, segment.end, sources)
        else:
            shifts.append(Shift(segment.user, segment.start, segment.end, (segment.source,)))
    return shifts
