"""Run the incidents service: gRPC server, snooze timer worker, retention trimming, the
timeline outbox (other services' notes; runtime/timeline_outbox.py).

`tocsin serve incidents` calls `serve()`; tests call `create_server(deps, Address(...,
0), background=False)` and drive `running.snooze_worker.run_once()` and
`running.store.trim_indexes()` themselves, with a ManualClock.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc

from tocsin.incidents.assignees import Assignees
from tocsin.incidents.backlog import Backlog
from tocsin.incidents.decoding import decode_trigger, decode_trigger_batch
from tocsin.incidents.heartbeat import heartbeat_worker
from tocsin.incidents.maintenance import CACHE_TTL_MS as WINDOWS_TTL_MS
from tocsin.incidents.maintenance import Maintenance, held_worker
from tocsin.incidents.service_store import CACHE_TTL_MS as SERVICE_TTL_MS
from tocsin.incidents.service_store import ServiceStore
from tocsin.incidents.servicer import SERVICE_NAME, IncidentServicer
from tocsin.incidents.snooze import SnoozeTimerStore, snooze_worker
from tocsin.incidents.store import IncidentStore
from tocsin.runtime.audit import AuditLog
from tocsin.runtime.clock import Clock
from tocsin.runtime.config import Address
from tocsin.runtime.events import CONSUMER_GROUPS, OUTBOUND_GROUPS, ensure_groups, instance_name
from tocsin.runtime.grpcserver import start_grpc_server
from tocsin.runtime.loops import WorkerHealth, run_loop, wait_or_timeout
from tocsin.runtime.service import RunningService, ServiceDeps, serve_blocking
from tocsin.runtime.timeline_outbox import TimelineOutboxConsumer
from tocsin.runtime.timers import TimerWorker
from tocsin.v1 import incidents_pb2_grpc

log = logging.getLogger(__name__)

TRIM_INTERVAL_S = 3600


@dataclass(kw_only=True)
class IncidentsService(RunningService):
    """The running incidents service and its parts (tests drive them directly)."""

    store: IncidentStore
    services: ServiceStore
    snooze_worker: TimerWorker
    heartbeat_worker: TimerWorker
    maintenance_worker: TimerWorker
    """Fires missed heartbeats (heartbeat.py)."""
    servicer: IncidentServicer
    timeline_outbox: TimelineOutboxConsumer
    """Appends the notes other services queue (runtime/timeline_outbox.py); tests call
    its `drain_once()`."""


async def create_server(
    deps: ServiceDeps, addr: Address | None = None, *, background: bool = True
) -> tuple[IncidentsService, int]:
    """Start serving on `addr` (default: the configured incidents address)."""
    # The consumer groups exist before the first event, so no consumer misses one.
    await ensure_groups(deps.redis, (*CONSUMER_GROUPS, *OUTBOUND_GROUPS), "0")
    store = IncidentStore(deps.redis, deps.clock, deps.config.retention)
    numbered = await store.number_existing()  # once: incidents opened before numbers
    if numbered:
        log.info("numbered %d incidents opened before incident numbers", numbered)
    services = ServiceStore(deps.redis, deps.clock)
    worker = snooze_worker(SnoozeTimerStore(deps.redis, deps.clock), deps.clock, store)
    backlog = Backlog(
        deps.redis, deps.config.backlog_max_age, max_entries=deps.config.backlog_max_events
    )
    servicer = IncidentServicer(
        store,
        services,
        deps.clock,
        Assignees(lambda: deps.peer_client()),
        max_watchers=deps.config.max_watch_streams,
        backlog=backlog,
    )
    servicer.audit = AuditLog(deps.redis, deps.clock, deps.config.retention)
    held = held_worker(servicer.maintenance, lambda request: servicer._trigger(request, ""))
    heartbeats = heartbeat_worker(servicer.heartbeats, deps.clock, servicer.open_heartbeat_incident)
    timeline_outbox = TimelineOutboxConsumer(
        deps.redis, servicer.append_timeline, instance_name("incidents")
    )
    await timeline_outbox.start()  # the group exists before any writer's first entry

    def register(server: grpc.aio.Server) -> None:
        _add_servicer(servicer, server)

    grpc_server = await start_grpc_server(
        deps.config,
        addr or deps.config.grpc_listen_addr("incidents"),
        register,
        [SERVICE_NAME],
        authenticator=deps.authenticator(),
    )
    running = IncidentsService(
        grpc=grpc_server,
        store=store,
        services=services,
        snooze_worker=worker,
        heartbeat_worker=heartbeats,
        maintenance_worker=held,
        servicer=servicer,
        timeline_outbox=timeline_outbox,
    )
    if background:
        stop, health = running.stopping, running.workers
        running.start_worker("incidents snooze worker", worker.run(stop, health))
        running.start_worker("incidents heartbeat worker", heartbeats.run(stop, health))
        running.start_worker("incidents maintenance worker", held.run(stop, health))
        running.start_worker(timeline_outbox.stream.worker, timeline_outbox.run(stop, health))
        running.start_worker(
            "incidents retention trim", _trim_periodically(store, deps.clock, stop, health)
        )
        if backlog.enabled:
            running.start_worker("incidents backlog sampler", backlog.run(stop, health))
        running.start_worker(
            "incidents event rules refresh", servicer.router.cache.run(stop, health)
        )
        running.start_worker(
            "incidents cache refresh",
            _refresh_caches(services, servicer.maintenance, stop, health),
        )
        running.start_health(deps.redis)
    return running, grpc_server.port


class _Handlers:
    """Records the method handlers the generated code registers."""

    handlers: dict[str, grpc.RpcMethodHandler]

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers = dict(handlers)


def _add_servicer(servicer: IncidentServicer, server: grpc.aio.Server) -> None:
    """The generated registration, with Trigger and TriggerBatch decoded so that an
    undecodable alert fails alone (decoding.py)."""
    recorded = _Handlers()
    incidents_pb2_grpc.add_IncidentServiceServicer_to_server(servicer, recorded)
    handlers = recorded.handlers
    for method, decode in (("Trigger", decode_trigger), ("TriggerBatch", decode_trigger_batch)):
        handlers[method] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method),
            request_deserializer=decode,
            response_serializer=handlers[method].response_serializer,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


async def _trim_periodically(
    store: IncidentStore, clock: Clock, stop: asyncio.Event, health: WorkerHealth
) -> None:
    """Drop expired resolved incidents from the indexes at start, then hourly."""

    async def trim() -> None:
        removed = await store.trim_indexes()
        if removed:
            log.info("retention: dropped %d resolved incidents from the indexes", removed)

    guard = health.guard("incidents retention trim", stop)
    await run_loop(guard, stop, trim, lambda: clock.sleep(TRIM_INTERVAL_S, stop))


async def _refresh_caches(
    services: ServiceStore, maintenance: Maintenance, stop: asyncio.Event, health: WorkerHealth
) -> None:
    """Twice per cache lifetime (real time, as the caches' own checks), read again the
    services alerts came for lately and the maintenance windows, so no alert waits for
    either (service_store.py, maintenance.py)."""

    async def refresh() -> None:
        await asyncio.gather(services.refresh(), maintenance.refresh())

    async def pause() -> None:
        await wait_or_timeout(stop, min(SERVICE_TTL_MS, WINDOWS_TTL_MS) / 2000)

    guard = health.guard("incidents cache refresh", stop)
    await run_loop(guard, stop, refresh, pause)


def serve() -> None:
    serve_blocking("incidents", create_server)
