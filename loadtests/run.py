"""One load-test run: floor, stack, load, drain, read back, report.

1. The floor: four bare gRPC hops at the same rate (loadtests/floor.py).
2. The stack: a private `tocsin up` plus fake Twilio (loadtests/stack.py), or the one the
   --target-* flags name; oncall.yaml applied; `storms` dedup storms opened (their pages
   are also the warm-up).
3. Load: new incidents at `rate`/s and repeats of the storms at `repeat_rate`/s, open loop,
   each from its own process.
4. Drain: wait for every first SMS; with `escalation`, also for every level-1 SMS, due a
   minute after each incident's level 0 fired.
5. Read back the fake's SMS and each incident's escalation; `report.build` turns them into
   figures.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests import collect, report
from loadtests.floor import FloorChain
from loadtests.procs import (
    command_name,
    cpu_by_pid,
    cpu_seconds,
    machine_busy_seconds,
    tree,
    wakeups,
)
from loadtests.scenario import (
    ESCALATING,
    INTEGRATION_KEYS,
    LEVEL_1_DELAY_MS,
    SINGLE,
    apply_config,
    storm_dedup_key,
    storm_summary,
)
from loadtests.senders import SenderHandle, SendPlan, SendResult, Via, start_sender
from loadtests.stack import LocalStack, Target
from loadtests.stats import decode, machine, summary_ms
from tocsin.client.client import TocsinClient
from tocsin.v1 import common_pb2, incidents_pb2

IDLE_SAMPLE_S = 3.0
"""How long the stack's idle CPU (heartbeats, polls) is sampled before the load."""


@dataclass(frozen=True)
class Options:
    out: Path
    rate: float = 200.0
    duration: float = 20.0
    repeat_rate: float = 0.0
    via: Via = "grpc"
    escalation: bool = True
    floor: bool = True
    floor_duration: float = 10.0
    storms: int = 10
    drain_timeout: float = 20.0
    """Stop waiting for SMS once none arrived for this long."""
    status_callbacks: bool = False
    stack_log_level: str = "WARNING"
    processes: str = ""
    """TOCSIN_PROCESSES of the stack it starts ("": one process per service)."""
    target: Target | None = None
    """None: start a private stack."""
    token: str | None = None
    command: str = ""

    @property
    def incidents(self) -> int:
        return round(self.rate * self.duration)

    @property
    def repeats(self) -> int:
        return round(self.repeat_rate * self.duration)


@dataclass
class Snapshot:
    """CPU seconds of the stack's processes at one moment, by pid, with their names."""

    cpu: dict[int, float] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    wakes: dict[int, int] = field(default_factory=dict)
    """Voluntary context switches so far, by pid (procs.wakeups)."""
    taken: float = field(default_factory=time.monotonic)
    machine_busy_s: float = field(default_factory=machine_busy_seconds)
    generator_s: float = field(default_factory=lambda: cpu_seconds(os.getpid()))
    """This (parent) process: progress, polling the fake."""

    @classmethod
    def take(cls, root: int | None) -> Snapshot:
        if root is None:
            return cls()
        pids = tree(root)
        return cls(
            cpu_by_pid(pids),
            {pid: command_name(pid) for pid in pids},
            {pid: wakeups(pid) for pid in pids},
        )

    def since(self, earlier: Snapshot) -> dict[str, float]:
        """CPU seconds spent since `earlier`, per process name (a restarted process's
        CPU before it died is lost)."""
        spent: dict[str, float] = {}
        for pid, seconds in self.cpu.items():
            name = self.names[pid]
            spent[name] = spent.get(name, 0.0) + seconds - earlier.cpu.get(pid, 0.0)
        return {name: round(seconds, 2) for name, seconds in sorted(spent.items())}

    def wakes_since(self, earlier: Snapshot) -> dict[str, int]:
        """Wake-ups (voluntary context switches) since `earlier`, per process name."""
        woken: dict[str, int] = {}
        for pid, count in self.wakes.items():
            name = self.names[pid]
            woken[name] = woken.get(name, 0) + count - earlier.wakes.get(pid, 0)
        return dict(sorted(woken.items()))


def _wall_minus_monotonic_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC, to place the stack's epoch-ms times on the
    monotonic axis of arrival times."""
    samples = []
    for _ in range(5):
        before = time.monotonic_ns()
        wall = time.time_ns()
        after = time.monotonic_ns()
        samples.append(wall - (before + after) // 2)
    return int(statistics.median(samples))


class Display:
    """A single status line, rewritten in place on a terminal (every 5 s otherwise)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def line(self, text: str, final: bool = False) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + text + ("\n" if final else ""))
            sys.stderr.flush()
        elif final or time.monotonic() - self._last >= 5:
            self._last = time.monotonic()
            print(text, file=sys.stderr, flush=True)

    def echo(self, text: str) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[2K")
        print(text, file=sys.stderr, flush=True)


async def _result(handle: SenderHandle, timeout_s: float) -> SendResult:
    return await asyncio.to_thread(handle.result, timeout_s)


async def _go(handles: list[SenderHandle]) -> None:
    """Once every sender is connected, start them all at the same moment."""
    for handle in handles:
        await asyncio.to_thread(handle.wait_ready, 60)
    start_ns = time.monotonic_ns() + 200_000_000
    for handle in handles:
        handle.go(start_ns)


async def measure_floor(options: Options, display: Display) -> dict[str, Any]:
    chain = FloorChain(options.out / "floor.log")
    entry = chain.start()
    try:
        count = round(options.rate * options.floor_duration)
        handle = start_sender(SendPlan("floor", options.rate, count, entry))
        try:
            await asyncio.to_thread(handle.wait_ready, 60)
            cpu_start = sum(cpu_seconds(pid) for pid in chain.pids())
            handle.go(time.monotonic_ns() + 200_000_000)
            pending = asyncio.ensure_future(_result(handle, options.floor_duration + 120))
            while not pending.done():
                cells = handle.progress.cells
                display.line(
                    f"floor: {cells[0]}/{count} sent, {cells[1]} answered, {cells[2]} errors"
                )
                await asyncio.wait([pending], timeout=0.5)
            result = pending.result()
        finally:
            handle.stop()
        cpu = sum(cpu_seconds(pid) for pid in chain.pids()) - cpu_start
    finally:
        chain.stop()
    figures = summary_ms(decode(result.histogram))
    display.line(f"floor: {count} echoes through 4 hops, p99 {figures['p99']} ms", final=True)
    return {
        "hops": 4,
        "rate": options.rate,
        "requests": count,
        "errors": count - result.ok,
        "latency_ms": figures,
        "hops_cpu_s": round(cpu, 2),
        "cpu_per_request_per_hop_ms": round(cpu * 1000 / count / 4, 3),
        "sender_cpu_s": round(result.cpu_s, 2),
    }


async def _open_storms(client: TocsinClient, run_id: str, storms: int) -> list[str]:
    ids = []
    for k in range(storms):
        reply = await client.incidents.Trigger(
            incidents_pb2.TriggerRequest(
                integration_key=INTEGRATION_KEYS[SINGLE],
                dedup_key=storm_dedup_key(run_id, k),
                summary=storm_summary(run_id, k),
                source="loadtest",
                severity=common_pb2.SEVERITY_CRITICAL,
            ),
            timeout=30,
        )
        ids.append(reply.incident.id)
    return ids


async def _wait_for_sms(
    fake: str,
    expected: int,
    not_before_ns: int,
    timeout_s: float,
    display: Display,
    label: str,
) -> int:
    """Wait until the fake has accepted `expected` SMS and `not_before_ns` has passed, or
    until no SMS arrived for `timeout_s`; returns the count."""
    count = await collect.accepted_sms_count(fake)
    last_change = time.monotonic()
    while True:
        now = time.monotonic_ns()
        if count >= expected and now >= not_before_ns:
            break
        if time.monotonic() - last_change > timeout_s and now >= not_before_ns:
            break
        wait = max(0, (not_before_ns - now) // 1_000_000_000)
        display.line(f"{label}: {count}/{expected} SMS" + (f", {wait}s to go" if wait else ""))
        await asyncio.sleep(0.5)
        fresh = await collect.accepted_sms_count(fake)
        if fresh != count:
            count, last_change = fresh, time.monotonic()
    display.line(f"{label}: {count}/{expected} SMS", final=True)
    return count


async def _redis_commands(url: str | None) -> dict[str, int]:
    """Calls per command so far on the stack's Redis (INFO commandstats; {} unknown),
    and under READS_KEY the reads Redis processed (INFO stats `total_reads_processed`:
    one per batch of commands a client sent, so its round trips)."""
    if url is None:
        return {}
    import redis.asyncio as aioredis

    redis = aioredis.Redis.from_url(url)
    try:
        stats = await redis.info("commandstats")
        reads = (await redis.info("stats")).get("total_reads_processed")
    finally:
        await redis.aclose()
    counts = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    if reads is not None:
        counts[READS_KEY] = int(reads)
    return counts


READS_KEY = "(reads processed)"


def _commands_per_incident(
    before: dict[str, int], after: dict[str, int], incidents: int
) -> dict[str, Any] | None:
    """Redis commands per new incident in the load window, every client's (background
    polls too, and the commands these counts cost: one INFO each)."""
    if not after or not incidents:
        return None
    spent = {name: calls - before.get(name, 0) for name, calls in after.items()}
    spent = {name: calls for name, calls in spent.items() if calls > 0}
    reads = spent.pop(READS_KEY, None)
    return {
        "commands_per_incident": round(sum(spent.values()) / incidents, 2),
        # Redis's reads of client sockets: a lone command, a pipeline or a script is one
        # (a pipeline too large for one read is more), so about the round trips
        "round_trips_per_incident": round(reads / incidents, 2) if reads is not None else None,
        "by_command": {
            name: round(calls / incidents, 2)
            for name, calls in sorted(spent.items(), key=lambda item: -item[1])
        },
    }


async def _load(
    options: Options, target: Target, client: TocsinClient, run_id: str, display: Display
) -> dict[str, Any]:
    service = ESCALATING if options.escalation else SINGLE
    plans = [
        SendPlan(
            "incidents",
            options.rate,
            options.incidents,
            target.endpoints.incidents,
            http=target.endpoints.http,
            via=options.via,
            run_id=run_id,
            integration_key=INTEGRATION_KEYS[service],
            token=options.token,
        )
    ]
    if options.repeats:
        plans.append(
            SendPlan(
                "repeats",
                options.repeat_rate,
                options.repeats,
                target.endpoints.incidents,
                http=target.endpoints.http,
                via=options.via,
                run_id=run_id,
                integration_key=INTEGRATION_KEYS[SINGLE],
                storms=options.storms,
                token=options.token,
            )
        )
    display.echo(f"opening {options.storms} dedup storms (also the warm-up)")
    since_ms = time.time_ns() // 1_000_000 - 1000
    base = await collect.accepted_sms_count(target.fake_twilio)
    storm_ids = await _open_storms(client, run_id, options.storms)
    await _wait_for_sms(
        target.fake_twilio, base + options.storms, 0, options.drain_timeout, display, "warm-up"
    )
    handles = [start_sender(plan) for plan in plans]
    try:
        idle_start = Snapshot.take(target.stack_root)
        await asyncio.sleep(IDLE_SAMPLE_S)
        commands_start = await _redis_commands(target.redis_url)
        cpu_start = Snapshot.take(target.stack_root)
        idle_cpu_per_s = sum(cpu_start.since(idle_start).values()) / IDLE_SAMPLE_S
        base = await collect.accepted_sms_count(target.fake_twilio)
        fake_cpu_start = cpu_seconds(target.fake_pid) if target.fake_pid else 0.0
        await _go(handles)
        pending = [asyncio.ensure_future(_result(h, options.duration + 300)) for h in handles]
        started = time.monotonic()
        while not all(p.done() for p in pending):
            arrived = await collect.accepted_sms_count(target.fake_twilio) - base
            parts = [
                f"{h.plan.kind} {h.progress.cells[1]}/{h.plan.count}"
                + (f" ({h.progress.cells[2]} err)" if h.progress.cells[2] else "")
                for h in handles
            ]
            lag = max(h.progress.cells[3] for h in handles) / 1000
            display.line(
                f"t={time.monotonic() - started:5.1f}s  "
                + "  ".join(parts)
                + f"  SMS {arrived}  send lag max {lag:.1f} ms"
            )
            await asyncio.wait(pending, timeout=0.5)
        results = {h.plan.kind: p.result() for h, p in zip(handles, pending, strict=True)}
    finally:
        for handle in handles:
            handle.stop()
    incidents = results["incidents"]
    display.line(
        f"sent {incidents.sent} incidents ({incidents.sent - incidents.ok} failed)"
        + (f", {results['repeats'].sent} repeats" if "repeats" in results else ""),
        final=True,
    )
    await _wait_for_sms(
        target.fake_twilio, base + incidents.ok, 0, options.drain_timeout, display, "first SMS"
    )
    cpu_first = Snapshot.take(target.stack_root)
    commands_first = await _redis_commands(target.redis_url)
    fake_cpu = (cpu_seconds(target.fake_pid) - fake_cpu_start) if target.fake_pid else None
    cpu_escalation = cpu_first
    if options.escalation:
        last_due_ns = incidents.intended_ns[-1] + LEVEL_1_DELAY_MS * 1_000_000
        await _wait_for_sms(
            target.fake_twilio,
            base + 2 * incidents.ok,
            last_due_ns + 1_000_000_000,
            options.drain_timeout,
            display,
            "level-1 SMS",
        )
        cpu_escalation = Snapshot.take(target.stack_root)

    display.echo("reading back SMS and escalations")
    sms = await collect.read_sms(target.fake_twilio, run_id)
    listed = await collect.run_incidents(client, service, run_id, since_ms)
    fired = await collect.fire_times(client, [incident_id for incident_id, _ in listed.values()])
    counts = await collect.alert_counts(client, storm_ids)
    built = report.build(
        report.Inputs(
            options_rate=options.rate,
            duration=options.duration,
            repeat_rate=options.repeat_rate,
            escalation=options.escalation,
            run_id=run_id,
            incidents=incidents,
            repeats=results.get("repeats"),
            sms=sms,
            listed=listed,
            fired=fired,
            storm_alert_counts=counts,
            wall_minus_monotonic_ns=_wall_minus_monotonic_ns(),
            cpu_first_sms=cpu_first.since(cpu_start) if target.stack_root else None,
            wakes_first_sms=cpu_first.wakes_since(cpu_start) if target.stack_root else None,
            cpu_first_sms_window_s=cpu_first.taken - cpu_start.taken,
            machine_busy_s=cpu_first.machine_busy_s - cpu_start.machine_busy_s,
            generator_s=cpu_first.generator_s - cpu_start.generator_s,
            idle_cpu_per_s=idle_cpu_per_s,
            cpu_escalation=cpu_escalation.since(cpu_first) if target.stack_root else None,
            fake_cpu_s=fake_cpu,
        )
    )
    commands = _commands_per_incident(commands_start, commands_first, incidents.ok)
    if commands is not None:
        built["redis"] = commands
    return built


async def run(options: Options, run_id: str) -> dict[str, Any]:
    """The whole run; returns the report (also written by the caller)."""
    display = Display()
    options.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "run_id": run_id,
        "command": options.command,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "options": {
            "rate": options.rate,
            "duration_s": options.duration,
            "repeat_rate": options.repeat_rate,
            "via": options.via,
            "escalation": options.escalation,
            "storms": options.storms,
            "status_callbacks": options.status_callbacks,
            "stack_log_level": options.stack_log_level,
            "processes": options.processes or "each",
            "own_stack": options.target is None,
        },
        "machine": machine(),
    }
    if options.floor:
        result["floor"] = await measure_floor(options, display)
    stack: LocalStack | None = None
    target = options.target
    if target is None:
        display.echo(f"starting tocsin up and the fake Twilio (logs in {options.out / 'logs'})")
        data_dir = Path(tempfile.mkdtemp(prefix="tocsin-loadtest-"))
        stack = LocalStack(
            data_dir,
            options.out / "logs",
            log_level=options.stack_log_level,
            status_callbacks=options.status_callbacks,
            env={"TOCSIN_PROCESSES": options.processes} if options.processes else {},
        )
        target = await asyncio.to_thread(stack.start)
    try:
        async with TocsinClient(target.endpoints, options.token) as client:
            changed = await apply_config(client)
            display.echo(f"applied loadtests/oncall.yaml ({changed} changes)")
            result |= await _load(options, target, client, run_id, display)
    finally:
        if stack is not None:
            display.echo("stopping the stack")
            await asyncio.to_thread(stack.stop)
            shutil.rmtree(stack.data_dir, ignore_errors=True)
    report.add_ratios_and_targets(result)
    return result
