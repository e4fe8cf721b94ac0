"""Open-loop sending: request i is due at `start + i / rate`, whatever happened before.

A closed loop (send, wait, send) slows down when the system does and so never sees the
queue it would have built: coordinated omission. Here every request has an intended send
time fixed in advance; the sender fires everything whose time has come without waiting
for replies, and latency is measured from the intended time, so a stall of the system,
or of this generator, counts against every request it delayed.

Times are CLOCK_MONOTONIC nanoseconds (`time.monotonic_ns()`), one clock for every
process on the machine, so another process's arrival time (the fake Twilio's
`received_monotonic_ns`) compares directly with an intended send time here.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

LATENCY_MAX_US = 300_000_000


def latency_histogram() -> HdrHistogram:
    """Microseconds from 1 us to 5 min, 3 significant digits."""
    return HdrHistogram(1, LATENCY_MAX_US, 3)


def record_us(histogram: HdrHistogram, nanoseconds: int) -> None:
    histogram.record_value(min(LATENCY_MAX_US, max(1, nanoseconds // 1000)))


class Progress:
    """Counters another process may read (a multiprocessing Array of 4 int64s, or a list)."""

    SENT, DONE, ERRORS, LAG_US = range(4)

    def __init__(self, cells: Any) -> None:
        self.cells = cells

    def add(self, index: int, amount: int = 1) -> None:
        self.cells[index] += amount

    def lag(self, lag_us: int) -> None:
        if lag_us > self.cells[self.LAG_US]:
            self.cells[self.LAG_US] = lag_us


@dataclass
class Outcome:
    """What one request returned: `ok`, plus anything the caller wants to keep."""

    ok: bool
    error: str = ""
    value: Any = None


@dataclass
class Shots:
    """Every request of a run: intended send times and outcomes."""

    intended_ns: list[int] = field(default_factory=list)
    outcomes: list[Outcome | None] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    """Failed requests by error."""


async def open_loop(
    rate: float,
    count: int,
    start_ns: int,
    send: Callable[[int], Awaitable[Outcome]],
    progress: Progress,
    histogram: HdrHistogram,
    keep: bool,
) -> Shots:
    """Send `count` requests at `rate`/s from `start_ns`; record each one's latency from
    its intended time into `histogram` (errors are counted, not recorded). `keep` keeps
    every request's intended time and outcome (for correlation); otherwise only the
    histogram."""
    shots = Shots()
    if keep:
        shots.intended_ns = [start_ns + round(i * 1e9 / rate) for i in range(count)]
        shots.outcomes = [None] * count
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, intended: int) -> None:
        try:
            outcome = await send(i)
        except Exception as error:  # a failed request is a result, not a crash
            outcome = Outcome(False, f"{type(error).__name__}: {error}"[:200])
        done = time.monotonic_ns()
        if outcome.ok:
            record_us(histogram, done - intended)
        else:
            progress.add(Progress.ERRORS)
            shots.errors[outcome.error] += 1
        progress.add(Progress.DONE)
        if keep:
            shots.outcomes[i] = outcome

    i = 0
    while i < count:
        now = time.monotonic_ns()
        intended = start_ns + round(i * 1e9 / rate)
        if intended > now:
            await asyncio.sleep((intended - now) / 1e9)
            continue
        progress.lag((now - intended) // 1000)
        while i < count and start_ns + round(i * 1e9 / rate) <= now:
            task = loop.create_task(one(i, start_ns + round(i * 1e9 / rate)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            progress.add(Progress.SENT)
            i += 1
        await asyncio.sleep(0)  # let the requests just created go out before the next batch
    while tasks:
        await asyncio.gather(*list(tasks))
    return shots
