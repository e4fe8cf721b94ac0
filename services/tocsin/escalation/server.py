"""The escalation service process: gRPC API, event consumer, timer worker over leased
shards, the page-out reports' consumer (runtime/report_outbox.py), and the auditor."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tocsin.escalation import policy_cache
from tocsin.escalation.engine import EscalationEngine
from tocsin.escalation.servicer import EscalationServicer
from tocsin.escalation.store import EscalationStore
from tocsin.runtime.audit import AuditLog
from tocsin.runtime.config import Address
from tocsin.runtime.events import INCIDENT_SHARDS, EventConsumer, instance_name
from tocsin.runtime.grpcserver import start_grpc_server
from tocsin.runtime.leases import ShardLeases
from tocsin.runtime.loops import run_loop, wait_or_timeout
from tocsin.runtime.report_outbox import ReportOutboxConsumer
from tocsin.runtime.service import RunningService, ServiceDeps, serve_blocking
from tocsin.runtime.timers import TimerWorker
from tocsin.v1 import escalation_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = "tocsin.v1.EscalationService"


@dataclass
class EscalationProcess(RunningService):
    """The running service plus its moving parts, which tests drive directly."""

    engine: EscalationEngine | None = None
    worker: TimerWorker | None = None
    consumer: EventConsumer | None = None
    leases: ShardLeases | None = None
    reports: ReportOutboxConsumer | None = None
    """Applies the page-out reports notification queues (runtime/report_outbox.py);
    tests call its `drain_once()`."""


LEASE_MS = 10_000
AUDIT_INTERVAL_MS = 60_000
AUDIT_GRACE_MS = 30_000
AUDIT_WINDOW_MS = 3_600_000
INCIDENTS_AT_ONCE = 4
"""Different incidents of one event lane handled at once (each incident's events in order),
so a burst in one lane does not wait for its earlier incidents' calls: at saturation
(200/s through /v2/enqueue) `created -> level 0 fired` fell from p50 1.6-5.0 s to
13-502 ms (BENCHMARKS.md, "Escalation handles a lane's incidents at once"). Four, not
more: at 16 the canary of tests/escalation/test_fairness.py waited behind 100-200+ storm
events. (It was 1 for a while after a stall once seen in CI's chaos tests at 4, whose
cause was never found; three runs of the chaos, fail-over, process-kill and
levels-in-order tests at 4 on today's code, and full CI runs, did not show it.)"""


async def create_server(
    deps: ServiceDeps, addr: Address | None = None, *, background: bool = True
) -> tuple[RunningService, int]:
    """`background=False` starts no background task and lets the worker fire every shard:
    tests drive `consumer.drain_once()`, `worker.run_once()` and `engine.audit()` by hand."""
    store = EscalationStore(
        deps.redis, deps.clock, int(deps.config.retention.total_seconds() * 1000)
    )
    peers = deps.peer_client()
    engine = EscalationEngine(store, peers, deps.clock)
    servicer = EscalationServicer(store, engine, peers)
    servicer.audit = AuditLog(deps.redis, deps.clock, deps.config.retention)
    grpc_server = await start_grpc_server(
        deps.config,
        addr or deps.config.grpc_listen_addr("escalation"),
        lambda server: escalation_pb2_grpc.add_EscalationServiceServicer_to_server(
            servicer, server
        ),
        [SERVICE_NAME],
        authenticator=deps.authenticator(),
    )
    running = EscalationProcess(grpc_server, engine=engine)
    instance = instance_name("escalation")
    leases = ShardLeases(deps.redis, deps.clock, "escalation", instance, INCIDENT_SHARDS, LEASE_MS)
    all_shards = frozenset(range(INCIDENT_SHARDS))
    worker = TimerWorker(
        store.timers,
        deps.clock,
        engine.on_timer,
        (lambda: leases.owned) if background else (lambda: all_shards),
    )
    worker.kind = "escalation"
    consumer = EventConsumer(
        deps.redis, "escalation", engine.on_event, incidents_at_once=INCIDENTS_AT_ONCE
    )
    reports = ReportOutboxConsumer(deps.redis, engine.apply_page_out_report, instance)
    await reports.start()  # the group exists before notification's first report
    running.worker, running.consumer, running.leases = worker, consumer, leases
    running.reports = reports
    if not background:
        await consumer.start()
        return running, grpc_server.port
    stop = running.stopping
    health = running.workers

    start_grace_ms = max(
        AUDIT_GRACE_MS, 2 * int(deps.config.backlog_max_age.total_seconds() * 1000)
    )

    async def audit() -> None:
        await engine.audit(
            leases.owned, AUDIT_GRACE_MS, AUDIT_WINDOW_MS, start_grace_ms=start_grace_ms
        )

    await leases.heartbeat()
    running.start_worker("escalation lease heartbeat", leases.run(stop, health))
    running.start_worker("escalation timer worker", worker.run(stop, health))
    running.start_worker("escalation consumer", consumer.run(stop, health))
    running.start_worker(reports.stream.worker, reports.run(stop, health))
    running.start_worker(
        "escalation policy cache",
        run_loop(
            health.guard("escalation policy cache", stop),
            stop,
            store.policies.refresh,
            lambda: wait_or_timeout(stop, policy_cache.REFRESH_S),  # real time
        ),
    )
    running.start_worker(
        "escalation auditor",
        run_loop(
            health.guard("escalation auditor", stop),
            stop,
            audit,
            lambda: deps.clock.sleep(AUDIT_INTERVAL_MS / 1000, stop),
            pause_first=True,
        ),
    )
    running.start_health(deps.redis)
    return running, grpc_server.port


def serve() -> None:
    serve_blocking("escalation", create_server)
