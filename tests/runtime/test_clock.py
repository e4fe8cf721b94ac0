"""The injectable clocks: manual fast-forward wakes sleepers; the scaled test clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from tocsin.runtime.clock import ManualClock, ScaledClock, SystemClock, clock_from_env


async def test_advance_wakes_due_sleepers_in_order() -> None:
    clock = ManualClock(datetime(2026, 11, 27, tzinfo=UTC))
    woke: list[str] = []

    async def sleeper(name: str, minutes: int) -> None:
        await clock.sleep(minutes * 60)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper(n, m)) for n, m in (("late", 30), ("early", 5))]
    await asyncio.sleep(0)
    clock.advance(minutes=10)
    await asyncio.sleep(0)
    assert woke == ["early"]
    clock.advance(minutes=20)
    await asyncio.gather(*tasks)
    assert woke == ["early", "late"]


async def test_wake_event_ends_a_manual_sleep_early() -> None:
    clock = ManualClock()
    wake = asyncio.Event()
    task = asyncio.create_task(clock.sleep(3600, wake))
    await asyncio.sleep(0)
    wake.set()
    await asyncio.wait_for(task, 1)


def test_manual_clock_does_not_go_backwards() -> None:
    clock = ManualClock(datetime(2026, 11, 27, tzinfo=UTC))
    with pytest.raises(ValueError):
        clock.set(datetime(2026, 11, 26, tzinfo=UTC))


def test_scaled_clock_from_env() -> None:
    assert isinstance(clock_from_env({}), SystemClock)
    clock = clock_from_env({"TOCSIN_TEST_CLOCK": f"{SystemClock().now_ms()},1000,60"})
    assert isinstance(clock, ScaledClock) and clock.speed == 60
    assert 1000 <= clock.now_ms() < 1000 + 60_000
    with pytest.raises(ValueError, match="TOCSIN_TEST_CLOCK"):
        clock_from_env({"TOCSIN_TEST_CLOCK": "soon"})
