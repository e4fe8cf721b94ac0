"""A real incidents gRPC server on loopback for tests, and helpers to inspect Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
from google.rpc import error_details_pb2, status_pb2

from tocsin.client.channel import create_channel
from tocsin.client.client import TocsinClient
from tocsin.client.endpoints import Endpoints
from tocsin.gateway.app import EventsFastPath, create_app
from tocsin.incidents.server import IncidentsService, create_server
from tocsin.runtime.auth import process_service_token
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.config import Address, load_config
from tocsin.runtime.events import EVENT_FIELD, INCIDENT_SHARDS, incident_shard, shard_streams
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.service import ServiceDeps
from tocsin.v1 import common_pb2, incidents_pb2, incidents_pb2_grpc

LOOPBACK = Address("127.0.0.1", 0)
PAYMENTS_KEY = "0f8e9a6b2c4d4e1f9a0b1c2d3e4f5a6b"


@dataclass
class Served:
    running: IncidentsService
    stub: incidents_pb2_grpc.IncidentServiceStub
    redis: RedisClient
    clock: ManualClock
    target: str


@asynccontextmanager
async def serve_incidents(
    redis: RedisClient, clock: ManualClock, env: Mapping[str, str] | None = None
) -> AsyncIterator[Served]:
    """The incidents service without background tasks (tests fire timers themselves)."""
    deps = ServiceDeps(config=load_config(dict(env or {})), redis=redis, clock=clock)
    running, port = await create_server(deps, LOOPBACK, background=False)
    target = f"127.0.0.1:{port}"
    # The stub stands in for tocsin's other services (the gateway, notification), so it
    # holds the service credential: the actors it sends stand.
    channel = create_channel(target, process_service_token())
    try:
        yield Served(running, incidents_pb2_grpc.IncidentServiceStub(channel), redis, clock, target)
    finally:
        await channel.close()
        await running.stop(0)
        if deps.peers is not None:
            await deps.peers.close()


async def create_payments(
    stub: incidents_pb2_grpc.IncidentServiceStub, policy: str = "payments"
) -> incidents_pb2.Service:
    reply = await stub.CreateService(
        incidents_pb2.CreateServiceRequest(
            service=incidents_pb2.Service(
                id="payments-api",
                name="Payments API",
                integration_key=PAYMENTS_KEY,
                escalation_policy_id=policy,
            )
        )
    )
    return reply.service


def trigger_request(
    summary: str = "CPU high on db-1", dedup_key: str = "cpu-db-1", **fields: Any
) -> incidents_pb2.TriggerRequest:
    fields.setdefault("service_id", "payments-api")
    return incidents_pb2.TriggerRequest(summary=summary, dedup_key=dedup_key, **fields)


def nested(levels: int) -> dict[str, Any]:
    """A JSON object nesting `levels` objects (itself included), for details depth limits."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"x": value}
    return value


def cli_actor(name: str = "alice") -> common_pb2.Actor:
    return common_pb2.Actor(channel=common_pb2.CHANNEL_CLI, display=name)


async def events_of(redis: RedisClient, incident_id: str) -> list[incidents_pb2.IncidentEvent]:
    """The outbox events of one incident, oldest first, read from its shard's streams
    (every lane: the incident's events are all in one)."""
    entries: list[Any] = []
    for key in shard_streams(incident_shard(incident_id)):
        entries += await redis.xrange(key) or []
    entries.sort(key=lambda entry: tuple(int(part) for part in entry[0].split(b"-")))
    events = []
    for entry_id, fields in entries:
        event = incidents_pb2.IncidentEvent.FromString(fields[EVENT_FIELD])
        event.event_id = entry_id.decode()
        if event.incident.id == incident_id:
            events.append(event)
    return events


def event_kinds(events: list[incidents_pb2.IncidentEvent]) -> list[str]:
    return [
        incidents_pb2.IncidentEventKind.Name(e.kind).removeprefix("INCIDENT_EVENT_KIND_")
        for e in events
    ]


async def all_events(redis: RedisClient) -> int:
    total = 0
    for shard in range(INCIDENT_SHARDS):
        for key in shard_streams(shard):
            total += await redis.xlen(key)
    return total


async def snapshot(redis: RedisClient) -> dict[bytes, Any]:
    """Every key and its value, to show that a refused request wrote nothing (tests only)."""
    result: dict[bytes, Any] = {}
    async for key in redis.scan_iter(count=1000):
        result[key] = await redis.dump(key)
    return result


def violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The BadRequest field violations of an INVALID_ARGUMENT error."""
    trailer = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(trailer)
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return [(v.field, v.description) for v in bad.field_violations]


def violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    return [name for name, _ in violations(error)]


@asynccontextmanager
async def gateway_for(served: Served) -> AsyncIterator[tuple[httpx.AsyncClient, EventsFastPath]]:
    """The gateway app (in process, over ASGI) in front of the real incidents server."""
    unused = "127.0.0.1:9"
    endpoints = Endpoints(
        scheduling=unused,
        incidents=served.target,
        escalation=unused,
        notification=unused,
        http=unused,
    )
    client = TocsinClient(endpoints, token=process_service_token())
    app = create_app(load_config({}), client, served.clock)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield http, app
    finally:
        await client.close()
