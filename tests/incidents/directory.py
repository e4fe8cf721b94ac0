"""The incidents service with the peers Reassign asks: real scheduling and escalation
servers on loopback, with users bob and carol and the policies `payments` and `other`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from google.protobuf.duration_pb2 import Duration

from tests.incidents.harness import LOOPBACK, Served, create_payments
from tests.services import client_for
from tocsin.client.channel import create_channel
from tocsin.escalation import server as escalation_server
from tocsin.incidents.server import create_server
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.config import load_config
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.service import RunningService, ServiceDeps
from tocsin.scheduling import server as scheduling_server
from tocsin.v1 import escalation_pb2, incidents_pb2_grpc, scheduling_pb2

USERS = ("bob", "carol")
POLICIES = ("payments", "other")


async def _close(deps: ServiceDeps) -> None:
    if deps.peers is not None:
        await deps.peers.close()


async def _stop(running: RunningService) -> None:
    await running.stop(0)


@contextlib.asynccontextmanager
async def served_with_directory(redis: RedisClient, clock: ManualClock) -> AsyncIterator[Served]:
    async with contextlib.AsyncExitStack() as stack:
        scheduling, scheduling_port = await scheduling_server.create_server(
            ServiceDeps(load_config({}), redis, clock), LOOPBACK
        )
        stack.push_async_callback(_stop, scheduling)
        scheduling_addr = f"127.0.0.1:{scheduling_port}"
        escalation_deps = ServiceDeps(
            load_config({"TOCSIN_SCHEDULING_ADDR": scheduling_addr}), redis, clock
        )
        stack.push_async_callback(_close, escalation_deps)
        escalation, escalation_port = await escalation_server.create_server(
            escalation_deps, LOOPBACK, background=False
        )
        stack.push_async_callback(_stop, escalation)
        escalation_addr = f"127.0.0.1:{escalation_port}"
        incidents_deps = ServiceDeps(
            load_config(
                {
                    "TOCSIN_SCHEDULING_ADDR": scheduling_addr,
                    "TOCSIN_ESCALATION_ADDR": escalation_addr,
                }
            ),
            redis,
            clock,
        )
        stack.push_async_callback(_close, incidents_deps)
        running, port = await create_server(incidents_deps, LOOPBACK, background=False)
        stack.push_async_callback(_stop, running)
        client = client_for(scheduling=scheduling_addr, escalation=escalation_addr)
        stack.push_async_callback(client.close)
        for user in USERS:
            await client.scheduling.CreateUser(
                scheduling_pb2.CreateUserRequest(
                    user=scheduling_pb2.User(id=user, name=user.title(), time_zone="UTC")
                )
            )
        for policy in POLICIES:
            await client.escalation.CreatePolicy(
                escalation_pb2.CreatePolicyRequest(
                    policy=escalation_pb2.EscalationPolicy(
                        id=policy,
                        name=policy.title(),
                        levels=[
                            escalation_pb2.EscalationLevel(
                                targets=[escalation_pb2.EscalationTarget(user_id="bob")],
                                delay=Duration(seconds=300),
                            )
                        ],
                    )
                )
            )
        target = f"127.0.0.1:{port}"
        channel = create_channel(target)
        stack.push_async_callback(channel.close)
        stub = incidents_pb2_grpc.IncidentServiceStub(channel)
        await create_payments(stub)
        yield Served(running, stub, redis, clock, target)
