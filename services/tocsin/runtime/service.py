"""What every tocsin service process shares: its dependencies and its lifecycle.

Each service's `server.py` offers `create_server(deps, addr=None) -> (RunningService, port)`
(port 0 in tests) and `serve()`; `run_service` is the common `serve()` body (and
`run_services` that of `tocsin serve A B`, several services in one process): configure
logging, tracing and the metrics endpoint (runtime/metrics.py), connect Redis, start,
take what startup allocated out of the garbage collector's reach (`tune_gc`), wait for
SIGTERM/SIGINT, stop gracefully.

Background loops are started with `RunningService.start_worker` and guarded by
`runtime.loops`; `start_health` adds the Redis probe and the watcher that turns the gRPC
health NOT_SERVING while a loop keeps failing, hangs or has ended (and SERVING again
once it recovers). `run_service` calls it for every served process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from tocsin.client.client import TocsinClient
from tocsin.client.endpoints import Endpoints
from tocsin.runtime.auth import Authenticator, service_token, with_service_token
from tocsin.runtime.clock import TEST_CLOCK_VARIABLE, Clock, SystemClock, clock_from_env
from tocsin.runtime.config import Address, Config, ConfigError
from tocsin.runtime.grpcserver import GrpcServer, install_stop_signals
from tocsin.runtime.loops import WorkerHealth, probe_redis, watch_health
from tocsin.runtime.metrics import serve_process_metrics
from tocsin.runtime.redis import RedisClient, connect_redis
from tocsin.runtime.telemetry import setup_tracing

log = logging.getLogger(__name__)


@dataclass
class ServiceDeps:
    """Everything a service needs from outside; tests build one with a ManualClock."""

    config: Config
    redis: RedisClient
    clock: Clock
    peers: TocsinClient | None = None

    def authenticator(self) -> Authenticator:
        """What this service's gRPC server checks credentials with (runtime/auth.py)."""
        return Authenticator(self.config, self.redis, self.clock)

    def peer_client(self) -> TocsinClient:
        """Client for the other services (created on first use)."""
        if self.peers is None:
            self.peers = peer_client(self.config)
        return self.peers


def peer_client(config: Config) -> TocsinClient:
    """A client for the services at the configured addresses (round robin over every
    replica a peer's target names), with the service credential."""
    addrs = {name: config.grpc_targets.get(name) or str(a) for name, a in config.grpc_addrs.items()}
    return TocsinClient(
        Endpoints(http=str(config.http_addr), **addrs),
        service_token(config),
        tls=config.tls,
        allow_insecure_tokens=config.allow_insecure_tokens,
    )


@dataclass
class RunningService:
    """A started service: its gRPC server and its background tasks."""

    grpc: GrpcServer
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    workers: WorkerHealth = field(default_factory=WorkerHealth)
    """The health of the background loops (runtime.loops), mirrored by `start_health`."""
    _health_started: bool = field(default=False, init=False)

    @property
    def port(self) -> int:
        return self.grpc.port

    def start_worker(self, name: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a background loop until `stopping`; if it ever ends before that, the
        process turns NOT_SERVING (once `start_health` runs)."""
        task = asyncio.create_task(work, name=name)
        self.tasks.append(task)
        self.workers.track(name, task, self.stopping)
        return task

    def start_health(self, redis: RedisClient) -> None:
        """Probe Redis and keep the gRPC health equal to the loops' health (idempotent)."""
        if self._health_started:
            return
        self._health_started = True
        self.start_worker("redis probe", probe_redis(redis, self.workers, self.stopping))
        self.start_worker("health watcher", watch_health(self.workers, self.grpc, self.stopping))

    async def stop(self, grace: float = 5.0) -> None:
        """Stop background tasks (they see `stopping` first and may finish cleanly, e.g.
        release their leases), then the gRPC server with `grace` for in-flight calls."""
        self.stopping.set()
        await self.grpc.set_serving(False)
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=min(grace, 2.0))
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for callback in self.on_stop:
            await callback()
        await self.grpc.server.stop(grace)


GC_THRESHOLDS = (10_000, 10, 10)
"""The cyclic garbage collector's thresholds in a served process (Python's default: 700,
10, 10). A young collection ran whenever 700 more container objects were alive than at the
last one, which one burst of event handling reaches and reference counting frees again a
moment later: in a 30 s run at 150 new incidents/s escalation ran 717 young collections
(0.7 ms of CPU each) and notification 1,045 (0.9 ms). At 10,000, 9 and 14 ran, up to 15
ms each (BENCHMARKS.md, "The garbage collector"); the most they hold back is a few
megabytes of cyclic garbage."""


def tune_gc() -> None:
    """For a served process, once it has started: freeze what startup allocated (modules,
    protobuf descriptors, clients, OpenTelemetry) out of the collector's reach, since it
    lives as long as the process and rescanning it made every full collection a pause of
    70-100 ms of CPU (escalation 71, notification 92, incidents 89, history 98), felt by
    any page waiting in that process (2-14 ms once frozen); then raise the young
    generation's threshold (GC_THRESHOLDS). Garbage is still collected: what is allocated
    after the freeze, cycles included."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


CreateServer = Callable[[ServiceDeps, Address | None], Awaitable[tuple[RunningService, int]]]


def configure_logging(level: str = "INFO") -> None:
    """Log to stderr at `level` (validated: Config.log_level, from TOCSIN_LOG_LEVEL)."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The twilio client logs every request at INFO (11 lines, ~0.7 ms per SMS); tocsin
    # records each send itself.
    logging.getLogger("twilio").setLevel(logging.WARNING)


async def run_service(name: str, config: Config, create_server: CreateServer) -> None:
    """Run one service until SIGTERM or SIGINT, then stop gracefully."""
    await run_services(config, [(name, create_server)])


async def run_services(config: Config, services: Sequence[tuple[str, CreateServer]]) -> None:
    """Run `services` in this process, on one event loop, until SIGTERM or SIGINT, then
    stop them gracefully (the last started first). Each keeps what it has in a process of
    its own: its gRPC server and port, its Redis connections, its workers and health, its
    clients to the others (through the contracts, even to a service in this process).
    What a process has once is shared: tracing (service name `tocsin-a+b`), the metrics
    endpoint (the first service's address) and the garbage collector's tuning."""
    names = [name for name, _ in services]
    label = "+".join(names)
    if len(names) > 1 and config.listen_addr is not None:
        raise ConfigError(
            f"TOCSIN_LISTEN_ADDR={config.listen_addr} is one address, and {label} are "
            "several services: each listens on its own TOCSIN_<SERVICE>_ADDR"
        )
    if config.redis_url is None:
        raise ConfigError(
            f"TOCSIN_REDIS_URL must be set to run {label} on its own (`tocsin up` embeds Redis)"
        )
    setup_tracing(label)
    metrics_server = await serve_process_metrics(config, names[0])
    clock = clock_from_env(os.environ)
    if not isinstance(clock, SystemClock):
        log.warning("%s runs on a test clock (%s)", label, TEST_CLOCK_VARIABLE)
    started: list[tuple[RunningService, ServiceDeps]] = []
    try:
        for name, create_server in services:
            redis = await connect_redis(config.redis_url)
            deps = ServiceDeps(config=config, redis=redis, clock=clock)
            running, port = await create_server(deps, None)
            running.start_health(redis)
            started.append((running, deps))
            log.info("%s listening on %s", name, config.grpc_listen_addr(name).host + f":{port}")
        tune_gc()
        stop = asyncio.Event()
        install_stop_signals(stop)
        await stop.wait()
        log.info("%s stopping", label)
    finally:
        # together, as separate processes stop on the supervisor's SIGTERM (one grace
        # period, not one per service); also the ones started when a later one failed
        stopped = await asyncio.gather(
            *(_stop_service(running, deps) for running, deps in started), return_exceptions=True
        )
        for error in stopped:
            if isinstance(error, BaseException):
                log.error("%s: a service did not stop cleanly: %r", label, error)
        if metrics_server is not None:
            await metrics_server.stop()


async def _stop_service(running: RunningService, deps: ServiceDeps) -> None:
    await running.stop()
    if deps.peers is not None:
        await deps.peers.close()
    await deps.redis.aclose()


def serve_blocking(name: str, create_server: CreateServer) -> None:
    """Blocking entry point behind `tocsin serve NAME`, on uvloop."""
    serve_many([(name, create_server)])


def serve_many(services: Sequence[tuple[str, CreateServer]]) -> None:
    """Blocking entry point behind `tocsin serve NAME...`: the services in one process
    (`run_services`), on uvloop."""
    import uvloop

    from tocsin.runtime.config import load_config

    config = with_service_token(load_config())
    configure_logging(config.log_level)
    uvloop.run(run_services(config, services))
