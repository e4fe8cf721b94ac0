"""The one source of time for tocsin.

Everything that reads the time or waits for a moment takes a `Clock`. Production uses
`SystemClock`; tests use `ManualClock` and fast-forward minutes in milliseconds with
`advance()`, which wakes every task sleeping on the clock whose deadline has come.
Times are integer milliseconds since the Unix epoch (what Redis sorted-set scores hold)
or timezone-aware UTC datetimes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def datetime_to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    return int(moment.timestamp() * 1000)


class Clock(ABC):
    @abstractmethod
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""

    def now(self) -> datetime:
        return ms_to_datetime(self.now_ms())

    @abstractmethod
    async def sleep_until(self, deadline_ms: int, wake: asyncio.Event | None = None) -> None:
        """Return at `deadline_ms`, or earlier once `wake` is set."""

    async def sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        await self.sleep_until(self.now_ms() + int(seconds * 1000), wake)


class SystemClock(Clock):
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep_until(self, deadline_ms: int, wake: asyncio.Event | None = None) -> None:
        delay = max(0.0, (deadline_ms - self.now_ms()) / 1000)
        if wake is None:
            await asyncio.sleep(delay)
            return
        try:
            await asyncio.wait_for(wake.wait(), timeout=delay)
        except TimeoutError:
            pass


class ManualClock(Clock):
    """A clock that only moves when told to. `advance()` wakes due sleepers in order."""

    def __init__(self, start: datetime | int | None = None) -> None:
        if start is None:
            start = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
        self._now_ms = start if isinstance(start, int) else datetime_to_ms(start)
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now_ms(self) -> int:
        return self._now_ms

    def set(self, moment: datetime) -> None:
        target = datetime_to_ms(moment)
        if target < self._now_ms:
            raise ValueError("ManualClock cannot go backwards")
        self._now_ms = target
        self._wake_due()

    def advance(
        self, *, seconds: float = 0, minutes: float = 0, hours: float = 0, days: float = 0
    ) -> None:
        step = timedelta(seconds=seconds, minutes=minutes, hours=hours, days=days)
        self._now_ms += int(step.total_seconds() * 1000)
        self._wake_due()

    def _wake_due(self) -> None:
        while self._sleepers and self._sleepers[0][0] <= self._now_ms:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    async def sleep_until(self, deadline_ms: int, wake: asyncio.Event | None = None) -> None:
        if deadline_ms <= self._now_ms:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline_ms, next(self._seq), fut))
        if wake is None:
            await fut
            return
        waiter: asyncio.Future[bool] = asyncio.ensure_future(wake.wait())
        pending: set[asyncio.Future[Any]] = {fut, waiter}
        try:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not fut.done():
                fut.cancel()


class ScaledClock(Clock):
    """Wall time sped up `speed` times from a shared anchor: for acceptance tests across
    processes, where every process must agree on a fast-forwarded "now".

    `now = virtual_anchor + (real_now - real_anchor) * speed`. Only `clock_from_env`
    builds one, and only when TOCSIN_TEST_CLOCK is set explicitly.
    """

    def __init__(self, real_anchor_ms: int, virtual_anchor_ms: int, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.real_anchor_ms = real_anchor_ms
        self.virtual_anchor_ms = virtual_anchor_ms
        self.speed = speed

    def now_ms(self) -> int:
        elapsed = time.time_ns() // 1_000_000 - self.real_anchor_ms
        return self.virtual_anchor_ms + int(elapsed * self.speed)

    async def sleep_until(self, deadline_ms: int, wake: asyncio.Event | None = None) -> None:
        real_delay = max(0.0, (deadline_ms - self.now_ms()) / self.speed / 1000)
        if wake is None:
            await asyncio.sleep(real_delay)
            return
        try:
            await asyncio.wait_for(wake.wait(), timeout=real_delay)
        except TimeoutError:
            pass


TEST_CLOCK_VARIABLE = "TOCSIN_TEST_CLOCK"


def clock_from_env(env: Mapping[str, str]) -> Clock:
    """SystemClock, unless TOCSIN_TEST_CLOCK="REAL_MS,VIRTUAL_MS,SPEED" asks for a
    ScaledClock (acceptance tests only; every process of a stack gets the same value)."""
    value = env.get(TEST_CLOCK_VARIABLE)
    if not value:
        return SystemClock()
    try:
        real, virtual, speed = value.split(",")
        return ScaledClock(int(real), int(virtual), float(speed))
    except ValueError as error:
        raise ValueError(
            f"{TEST_CLOCK_VARIABLE}={value!r}: expected REAL_MS,VIRTUAL_MS,SPEED"
        ) from error
