"""The scheduling service process."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from redis.exceptions import RedisError

from tocsin.identity.servicer import SERVICE_NAME as IDENTITY_SERVICE_NAME
from tocsin.identity.servicer import IdentityServicer
from tocsin.identity.store import IdentityStore
from tocsin.runtime.audit import AuditLog
from tocsin.runtime.auth import Principal
from tocsin.runtime.authz import OwnCheck
from tocsin.runtime.config import Address
from tocsin.runtime.errors import NotFound
from tocsin.runtime.grpcserver import start_grpc_server
from tocsin.runtime.service import RunningService, ServiceDeps, serve_blocking
from tocsin.scheduling.handoff_timers import HandoffTimers
from tocsin.scheduling.servicer import SchedulingServicer
from tocsin.scheduling.store import SchedulingStore
from tocsin.v1 import identity_pb2_grpc, scheduling_pb2_grpc

SERVICE_NAME = "tocsin.v1.SchedulingService"
log = logging.getLogger(__name__)


def own_schedule(store: SchedulingStore) -> OwnCheck:
    """The authorization table's "schedule_member" check: the caller is on one of the
    schedule's layers (so may add or remove its overrides)."""

    async def check(request: Any, principal: Principal) -> bool:
        if not principal.user_id or not request.schedule_id:
            return False
        try:
            schedule = await store.get_schedule(request.schedule_id)
        except NotFound:
            return False
        return any(principal.user_id in layer.user_ids for layer in schedule.layers)

    return check


def own_api_key(identity: IdentityStore) -> OwnCheck:
    """The authorization table's "api_key" check: the key (by id) acts as the caller, so
    they may revoke it (a person's own keys; an API key's own role caps what it does)."""

    async def check(request: Any, principal: Principal) -> bool:
        if not principal.user_id or not request.id:
            return False
        fields = await identity.credential(request.id)
        return fields.get("kind") == "api_key" and fields.get("user") == (principal.user_id)

    return check


async def create_server(
    deps: ServiceDeps, addr: Address | None = None, *, background: bool = True
) -> tuple[RunningService, int]:
    """`background=False` starts no hand-off timer worker (tests fire it by hand)."""
    audit = AuditLog(deps.redis, deps.clock, deps.config.retention)
    servicer = SchedulingServicer(SchedulingStore(deps.redis), deps.clock, audit)
    servicer.handoffs = HandoffTimers(
        servicer.store, deps.redis, deps.clock, lambda: deps.peer_client().notification
    )
    try:
        await servicer.store.stamp_revisions()
    except RedisError as error:  # those schedules are only not cached until written
        log.warning("could not stamp schedule revisions: %s", error)
    identity_store = IdentityStore(deps.redis)
    identity = IdentityServicer(identity_store, servicer.store, audit, deps.clock)

    def register(server: grpc.aio.Server) -> None:
        scheduling_pb2_grpc.add_SchedulingServiceServicer_to_server(servicer, server)
        identity_pb2_grpc.add_IdentityServiceServicer_to_server(identity, server)

    grpc_server = await start_grpc_server(
        deps.config,
        addr or deps.config.grpc_listen_addr("scheduling"),
        register,
        [SERVICE_NAME, IDENTITY_SERVICE_NAME],
        authenticator=deps.authenticator(),
        ownership={
            "schedule_member": own_schedule(servicer.store),
            "api_key": own_api_key(identity_store),
        },
    )
    running = RunningService(grpc_server)
    if background:
        running.start_worker(
            "handoff timer worker", servicer.handoffs.run(running.stopping, running.workers)
        )
        running.start_health(deps.redis)
    return running, grpc_server.port


def serve() -> None:
    serve_blocking("scheduling", create_server)
