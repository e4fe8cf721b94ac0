"""Load senders, each in its own process with its own event loop (uvloop, as the services
run), so new incidents, repeat alerts and the floor's echoes do not delay one another.

`start_sender(plan)` spawns one; `SenderHandle.result()` waits for its `SendResult`.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import multiprocessing.connection
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import grpc
import uvloop

from loadtests.floor import FLOOR_METHOD, FLOOR_PAYLOAD
from loadtests.openloop import Outcome, Progress, latency_histogram, open_loop
from loadtests.scenario import (
    incident_dedup_key,
    incident_summary,
    storm_dedup_key,
    storm_summary,
)
from tocsin.client.trigger_batcher import TriggerBatcher
from tocsin.v1 import common_pb2, incidents_pb2, incidents_pb2_grpc

Kind = Literal["incidents", "repeats", "floor"]
Via = Literal["grpc", "http", "both"]
RPC_TIMEOUT_S = 30.0
CHANNELS = 2
WARM_UP_ECHOES = 50


@dataclass(frozen=True)
class SendPlan:
    kind: Kind
    rate: float
    count: int
    target: str
    """gRPC address (incidents service, or the floor's first hop)."""
    http: str = ""
    """Gateway address, for /v2/enqueue."""
    via: Via = "grpc"
    run_id: str = ""
    integration_key: str = ""
    storms: int = 1
    """Repeats cycle over this many dedup storms."""
    token: str | None = None
    """TOCSIN_API_TOKEN, when the stack requires one."""


@dataclass
class SendResult:
    kind: Kind
    sent: int
    ok: int
    errors: dict[str, int]
    histogram: bytes
    """HDR histogram (encoded) of request latency from intended send time, microseconds."""
    cpu_s: float
    """This sender process's own CPU time while sending."""
    intended_ns: list[int] = field(default_factory=list)
    """Per request (kept for new incidents only)."""
    ok_flags: list[bool] = field(default_factory=list)
    created: list[bool | None] = field(default_factory=list)
    """From the Trigger reply (gRPC); None where the reply does not say (HTTP, errors)."""


def _trigger_event(key: str, dedup_key: str, summary: str) -> dict[str, Any]:
    return {
        "routing_key": key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {"summary": summary, "source": "loadtest", "severity": "critical"},
    }


class _Edges:
    """Connections to the system under test, shared by every request of a sender."""

    def __init__(self, plan: SendPlan) -> None:
        self.plan = plan
        self.channels: list[grpc.aio.Channel] = []
        self.batchers: list[TriggerBatcher] = []
        self.floor_calls: list[grpc.aio.UnaryUnaryMultiCallable] = []
        self.session: aiohttp.ClientSession | None = None
        self.metadata = (("authorization", f"Bearer {plan.token}"),) if plan.token else None
        self._next = itertools.count()

    async def __aenter__(self) -> _Edges:
        if self.plan.kind == "floor":
            self.channels = [grpc.aio.insecure_channel(self.plan.target) for _ in range(CHANNELS)]
            self.floor_calls = [c.unary_unary(FLOOR_METHOD) for c in self.channels]
        else:
            # A bare channel, like an outside alert source: the client's tracing
            # interceptors would cost this 2-core machine's CPU twice (here and there).
            # Triggers go as tocsin's client sends them: concurrent ones share
            # TriggerBatch calls.
            self.channels = [grpc.aio.insecure_channel(self.plan.target) for _ in range(CHANNELS)]
            self.batchers = [
                TriggerBatcher(incidents_pb2_grpc.IncidentServiceStub(c), metadata=self.metadata)
                for c in self.channels
            ]
        for channel in self.channels:
            await asyncio.wait_for(channel.channel_ready(), 30)
        for _ in range(WARM_UP_ECHOES if self.plan.kind == "floor" else 0):
            await self.echo()  # the hops connect to each other on first use
        if self.plan.via != "grpc" and self.plan.kind != "floor":
            # aiohttp rather than httpx: httpx costs several times the CPU per request.
            connector = aiohttp.TCPConnector(limit=256)
            self.session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=RPC_TIMEOUT_S)
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        for batcher in self.batchers:
            await batcher.close()
        for channel in self.channels:
            await channel.close()

    def pick(self) -> int:
        return next(self._next)

    def use_http(self, i: int) -> bool:
        return self.plan.via == "http" or (self.plan.via == "both" and i % 2 == 1)

    async def trigger(self, i: int, dedup_key: str, summary: str) -> Outcome:
        if self.use_http(i):
            return await self._enqueue(dedup_key, summary)
        request = incidents_pb2.TriggerRequest(
            integration_key=self.plan.integration_key,
            dedup_key=dedup_key,
            summary=summary,
            source="loadtest",
            severity=common_pb2.SEVERITY_CRITICAL,
        )
        batcher = self.batchers[self.pick() % len(self.batchers)]
        try:
            reply = await batcher.trigger(request, RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            return Outcome(False, f"grpc {error.code().name}: {(error.details() or '')[:80]}")
        return Outcome(True, value=reply.created)

    async def _enqueue(self, dedup_key: str, summary: str) -> Outcome:
        assert self.session is not None
        event = _trigger_event(self.plan.integration_key, dedup_key, summary)
        try:
            async with self.session.post(f"http://{self.plan.http}/v2/enqueue", json=event) as r:
                await r.read()
                if r.status != 202:
                    return Outcome(False, f"http {r.status}")
        except (aiohttp.ClientError, TimeoutError) as error:
            return Outcome(False, f"http {type(error).__name__}")
        return Outcome(True, value=None)

    async def echo(self) -> Outcome:
        call = self.floor_calls[self.pick() % len(self.floor_calls)]
        try:
            reply = await call(FLOOR_PAYLOAD, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            return Outcome(False, f"grpc {error.code().name}")
        return Outcome(reply == FLOOR_PAYLOAD, "" if reply == FLOOR_PAYLOAD else "bad echo")


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _request_maker(plan: SendPlan, edges: _Edges) -> Callable[[int], Awaitable[Outcome]]:
    if plan.kind == "floor":
        return lambda i: edges.echo()
    if plan.kind == "repeats":
        storms = [
            (storm_dedup_key(plan.run_id, k), storm_summary(plan.run_id, k))
            for k in range(plan.storms)
        ]

        async def repeat(i: int) -> Outcome:
            dedup_key, summary = storms[i % len(storms)]
            outcome = await edges.trigger(i, dedup_key, summary)
            if outcome.ok and outcome.value is True:
                return Outcome(False, "repeat opened a new incident")
            return outcome

        return repeat
    return lambda i: edges.trigger(
        i, incident_dedup_key(plan.run_id, i), incident_summary(plan.run_id, i)
    )


async def send(plan: SendPlan, progress: Progress, go: Callable[[], int]) -> SendResult:
    """Connect, then ask `go()` for the CLOCK_MONOTONIC start time, then send."""
    histogram = latency_histogram()
    keep = plan.kind == "incidents"
    async with _Edges(plan) as edges:
        start_ns = go()
        cpu_before = _own_cpu_s()
        shots = await open_loop(
            plan.rate,
            plan.count,
            start_ns,
            _request_maker(plan, edges),
            progress,
            histogram,
            keep,
        )
    cpu_s = _own_cpu_s() - cpu_before
    result = SendResult(
        kind=plan.kind,
        sent=plan.count,
        ok=plan.count - sum(shots.errors.values()),
        errors=dict(shots.errors),
        histogram=histogram.encode(),
        cpu_s=cpu_s,
    )
    if keep:
        result.intended_ns = shots.intended_ns
        for outcome in shots.outcomes:
            assert outcome is not None
            result.ok_flags.append(outcome.ok)
            result.created.append(outcome.value if outcome.ok else None)
    return result


def _child(plan: SendPlan, cells: Any, conn: multiprocessing.connection.Connection) -> None:
    def go() -> int:
        conn.send("ready")
        start_ns: int = conn.recv()
        return start_ns

    result = uvloop.run(send(plan, Progress(cells), go))
    conn.send(result)
    conn.close()


@dataclass
class SenderHandle:
    plan: SendPlan
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    progress: Progress

    def wait_ready(self, timeout_s: float) -> None:
        try:
            ready = self.conn.poll(timeout_s) and self.conn.recv() == "ready"
        except EOFError:
            ready = False
        if not ready:
            self.stop()
            raise RuntimeError(f"{self.plan.kind} sender did not connect within {timeout_s:.0f}s")

    def go(self, start_ns: int) -> None:
        """Start sending at `start_ns` (CLOCK_MONOTONIC)."""
        self.conn.send(start_ns)

    def result(self, timeout_s: float) -> SendResult:
        if not self.conn.poll(timeout_s):
            self.process.terminate()
            raise TimeoutError(f"{self.plan.kind} sender gave no result in {timeout_s:.0f}s")
        result: SendResult = self.conn.recv()
        self.process.join(10)
        return result

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)


def start_sender(plan: SendPlan) -> SenderHandle:
    """Spawn a sender process for `plan`: it connects, says it is ready (`wait_ready`) and
    sends from the moment `go()` gives it."""
    context = multiprocessing.get_context("spawn")
    cells = context.Array("q", 4, lock=False)
    ours, theirs = context.Pipe()
    process = context.Process(
        target=_child, args=(plan, cells, theirs), name=f"loadtest-{plan.kind}", daemon=True
    )
    process.start()
    theirs.close()
    return SenderHandle(plan, process, ours, Progress(cells))
