"""The history service process: the archive's gRPC server and the work that fills it.

Background tasks (in RunningService.tasks, all supervised by `runtime.loops`, so health
turns NOT_SERVING while one keeps failing and none stops silently):

- the incident-events consumer (group "history"): each event acknowledged after the
  transaction holding it committed; different incidents' events share transactions (a
  lane's entries together, see INCIDENTS_AT_ONCE), each incident's in order;
- the timeline copier: pages and other timeline entries from the incidents service;
- the trim watch: events trimmed from a stream before the archive read them are
  restored from Redis's state (a reconciliation);
- the retention sweep, when TOCSIN_ARCHIVE_RETENTION is set.

The schema is migrated (Alembic) before the server answers. Tests pass
`background=False` and drive `parts.consumer.drain_once()` and
`parts.archiver.sync_once()` by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tocsin.history.archiver import GROUP, Archiver
from tocsin.history.servicer import SERVICE_NAME, HistoryServicer
from tocsin.history.store import ArchiveStore
from tocsin.runtime.config import Address
from tocsin.runtime.events import EventConsumer, Handler, instance_name
from tocsin.runtime.grpcserver import start_grpc_server
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.service import RunningService, ServiceDeps, serve_blocking
from tocsin.v1 import history_pb2_grpc

CONSUMER_BLOCK_MS = 5_000
INCIDENTS_AT_ONCE = 32
"""Different incidents of one event lane handed to the archive at once (each incident's
events in order, runtime/events.py): the entries of a lane read together reach the group
commit together and share one transaction. One at a time, a lane's entries waited for each
other's commits, and under load most transactions held a single event (58% of them at 80
incidents/s), each costing about what a batch does."""


LINGER_MS = 250
"""How long the archive's consumer waits, once woken, before it writes (EventConsumer's
`linger_ms`): the XADD that wakes it also wakes escalation and notification, and on two
cores a new incident's first page waited for the archive's transaction (about 3 ms of
CPU) to get a core. The events that came meanwhile come with its next read, so a shard's
loop reads at most about four times a second under load: at 50 ms the archive still read
(and acknowledged) about one event at a time at 100 new incidents/s, and at 250 ms its CPU
per incident fell by a fifth (BENCHMARKS.md). An archive row up to half a second behind
Redis (this, then the group commit's COMMIT_WINDOW_S) costs nobody anything."""


COMMIT_WINDOW_S = 0.2
"""How long the archive's first event of a quiet moment waits for others before its
transaction begins (`GroupCommit`'s window). Each transaction costs about 3 ms of CPU
whatever it holds; at 80 new incidents/s a window of 200 ms gathers about 16 incidents'
events into one, where the shard loops waking at different moments gave one or two."""


def history_consumer(redis: RedisClient, handler: Handler, instance: str) -> EventConsumer:
    """The archive's incident-events consumer (group "history", from everything retained)."""
    return EventConsumer(
        redis,
        GROUP,
        handler,
        consumer=instance,
        block_ms=CONSUMER_BLOCK_MS,
        start_id="0",
        incidents_at_once=INCIDENTS_AT_ONCE,
        linger_ms=LINGER_MS,
    )


@dataclass
class Parts:
    store: ArchiveStore
    archiver: Archiver
    consumer: EventConsumer


@dataclass
class HistoryService(RunningService):
    parts: Parts = field(kw_only=True)


async def create_server(
    deps: ServiceDeps,
    addr: Address | None = None,
    *,
    background: bool = True,
) -> tuple[HistoryService, int]:
    """Start the history service on `deps.config.database_url` (migrated first)."""
    store = ArchiveStore(deps.config.history_database_url)
    try:
        await store.migrate()
        archiver = Archiver(
            store,
            deps.redis,
            deps.peer_client,
            deps.clock,
            deps.config.archive_retention,
            commit_window_s=COMMIT_WINDOW_S if background else 0.0,
        )
        instance = instance_name(GROUP)
        consumer = history_consumer(deps.redis, archiver.handle, instance)
        await consumer.start()
        servicer = HistoryServicer(
            store, archiver, deps.peer_client, deps.clock, deps.config.report_time_zone
        )
        grpc_server = await start_grpc_server(
            deps.config,
            addr or deps.config.grpc_listen_addr("history"),
            lambda server: history_pb2_grpc.add_HistoryServiceServicer_to_server(servicer, server),
            [SERVICE_NAME],
            authenticator=deps.authenticator(),
        )
    except BaseException:
        await store.close()
        raise
    running = HistoryService(grpc_server, parts=Parts(store, archiver, consumer))
    if background:
        stop, health = running.stopping, running.workers
        running.start_worker("history consumer", consumer.run(stop, health))
        running.start_worker("history timeline copier", archiver.run_sync(stop, health))
        running.start_worker("history trim watch", archiver.run_trim_watch(stop, health))
        if archiver.retention is not None:
            running.start_worker("history retention sweep", archiver.run_sweep(stop, health))
        running.start_health(deps.redis)
    running.on_stop.append(store.close)
    return running, grpc_server.port


def serve() -> None:
    serve_blocking("history", create_server)
