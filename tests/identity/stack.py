"""Every gRPC service on loopback with a bootstrap admin token, and people to sign in:
adam (admin), alice and bob (responders), olga (observer), each with a password and a
personal token from a real Login call."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.services import LOOPBACK_ANY_PORT, client_for
from tocsin.client.client import TocsinClient
from tocsin.escalation import server as escalation_server
from tocsin.history import server as history_server
from tocsin.incidents import server as incidents_server
from tocsin.notification import server as notification_server
from tocsin.runtime.auth import process_service_token
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.config import load_config
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.service import RunningService, ServiceDeps
from tocsin.scheduling import server as scheduling_server
from tocsin.v1 import common_pb2, identity_pb2, incidents_pb2, scheduling_pb2

ADMIN_TOKEN = "bootstrap-admin-token-for-tests"
PASSWORDS = {
    "adam": "adam's long password",
    "alice": "alice's long password",
    "bob": "bob's long password",
    "olga": "olga's long password",
}
ROLES = {
    "adam": common_pb2.ROLE_ADMIN,
    "alice": common_pb2.ROLE_RESPONDER,
    "bob": common_pb2.ROLE_RESPONDER,
    "olga": common_pb2.ROLE_OBSERVER,
}


@dataclass
class IdentityStack:
    addrs: dict[str, str]
    service: TocsinClient
    """Holds the service credential (what tocsin's own services call with)."""
    tokens: dict[str, str] = field(default_factory=dict)
    """A personal token per user, from Login."""
    clients: list[TocsinClient] = field(default_factory=list)

    def client(self, token: str, via: str | None = None) -> TocsinClient:
        client = client_for(token=token, **self.addrs)
        if via:
            client = TocsinClient(client.endpoints, token=token, via=via)
        self.clients.append(client)
        return client

    def as_user(self, user: str) -> TocsinClient:
        return self.client(self.tokens[user])


async def _stop(running: RunningService) -> None:
    await running.stop(0)


async def _close(deps: ServiceDeps) -> None:
    if deps.peers is not None:
        await deps.peers.close()


@contextlib.asynccontextmanager
async def identity_stack(
    redis: RedisClient, clock: ManualClock, database: Path
) -> AsyncIterator[IdentityStack]:
    """`database`: the history archive's SQLite file."""
    base = {"TOCSIN_API_TOKEN": ADMIN_TOKEN, "TOCSIN_DATABASE_URL": f"sqlite:///{database}"}
    async with contextlib.AsyncExitStack() as stack:
        addrs: dict[str, str] = {}

        def deps() -> ServiceDeps:
            env = base | {f"TOCSIN_{n.upper()}_ADDR": a for n, a in addrs.items()}
            made = ServiceDeps(load_config(env), redis, clock)
            stack.push_async_callback(_close, made)
            return made

        scheduling, port = await scheduling_server.create_server(deps(), LOOPBACK_ANY_PORT)
        stack.push_async_callback(_stop, scheduling)
        addrs["scheduling"] = f"127.0.0.1:{port}"
        escalation, port = await escalation_server.create_server(
            deps(), LOOPBACK_ANY_PORT, background=False
        )
        stack.push_async_callback(_stop, escalation)
        addrs["escalation"] = f"127.0.0.1:{port}"
        incidents, port = await incidents_server.create_server(
            deps(), LOOPBACK_ANY_PORT, background=False
        )
        stack.push_async_callback(_stop, incidents)
        addrs["incidents"] = f"127.0.0.1:{port}"
        notification, port = await notification_server.create_server(
            deps(), LOOPBACK_ANY_PORT, background=False
        )
        stack.push_async_callback(_stop, notification)
        addrs["notification"] = f"127.0.0.1:{port}"
        history, port = await history_server.create_server(
            deps(), LOOPBACK_ANY_PORT, background=False
        )
        stack.push_async_callback(_stop, history)
        addrs["history"] = f"127.0.0.1:{port}"

        service = client_for(token=process_service_token(), **addrs)
        built = IdentityStack(addrs, service)
        stack.push_async_callback(service.close)

        async def close_clients() -> None:
            for client in built.clients:
                await client.close()

        stack.push_async_callback(close_clients)
        for user, role in ROLES.items():
            await service.scheduling.CreateUser(
                scheduling_pb2.CreateUserRequest(
                    user=scheduling_pb2.User(id=user, name=user.title(), role=role)
                )
            )
            await service.identity.SetPassword(
                identity_pb2.SetPasswordRequest(user_id=user, password=PASSWORDS[user])
            )
            login = await service.identity.Login(
                identity_pb2.LoginRequest(user_id=user, password=PASSWORDS[user])
            )
            built.tokens[user] = login.token
        await service.incidents.CreateService(
            incidents_pb2.CreateServiceRequest(
                service=incidents_pb2.Service(id="payments-api", name="Payments API")
            )
        )
        yield built
