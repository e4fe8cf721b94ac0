"""The shared gRPC bootstrap: auth, loopback-only binding, health, error details."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tocsin.client.channel import create_channel
from tocsin.runtime.config import Address, ConfigError, load_config
from tocsin.runtime.errors import FieldViolation, InvalidArgument, NotFound
from tocsin.runtime.grpcserver import GrpcServer, start_grpc_server
from tocsin.v1 import incidents_pb2, incidents_pb2_grpc, scheduling_pb2, scheduling_pb2_grpc

LOOPBACK = Address("127.0.0.1", 0)


class _Servicer(scheduling_pb2_grpc.SchedulingServiceServicer):
    async def GetUser(self, request, context):
        if request.id == "missing":
            raise NotFound("user 'missing' does not exist")
        if not request.id:
            raise InvalidArgument([FieldViolation("id", "must not be empty")])
        return scheduling_pb2.GetUserResponse(user=scheduling_pb2.User(id=request.id))


async def _start(env: dict[str, str]) -> GrpcServer:
    return await start_grpc_server(
        load_config(env),
        LOOPBACK,
        lambda s: scheduling_pb2_grpc.add_SchedulingServiceServicer_to_server(
            _Servicer(),  # type: ignore[abstract]
            s,
        ),
        ["tocsin.v1.SchedulingService"],
    )


@pytest.fixture
async def open_server() -> AsyncIterator[GrpcServer]:
    server = await _start({})
    yield server
    await server.stop(0)


@pytest.fixture
async def token_server() -> AsyncIterator[GrpcServer]:
    server = await _start({"TOCSIN_API_TOKEN": "s3cret"})
    yield server
    await server.stop(0)


async def test_domain_errors_become_status_codes_with_field_violations(
    open_server: GrpcServer,
) -> None:
    async with create_channel(f"127.0.0.1:{open_server.port}") as channel:
        stub = scheduling_pb2_grpc.SchedulingServiceStub(channel)
        assert (await stub.GetUser(scheduling_pb2.GetUserRequest(id="alice"))).user.id == "alice"
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetUser(scheduling_pb2.GetUserRequest(id="missing"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.GetUser(scheduling_pb2.GetUserRequest(id=""))
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailer = dict(invalid.value.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(trailer)
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("id", "must not be empty")
    ]


async def test_token_is_required_when_configured(token_server: GrpcServer) -> None:
    target = f"127.0.0.1:{token_server.port}"
    request = scheduling_pb2.GetUserRequest(id="alice")
    async with create_channel(target) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await scheduling_pb2_grpc.SchedulingServiceStub(anonymous).GetUser(request)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        health = await health_pb2_grpc.HealthStub(anonymous).Check(
            health_pb2.HealthCheckRequest(service="tocsin.v1.SchedulingService")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    async with create_channel(target, token="wrong") as wrong:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await scheduling_pb2_grpc.SchedulingServiceStub(wrong).GetUser(request)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with create_channel(target, token="s3cret") as authorised:
        reply = await scheduling_pb2_grpc.SchedulingServiceStub(authorised).GetUser(request)
        assert reply.user.id == "alice"


async def test_refuses_non_loopback_bind_without_token() -> None:
    with pytest.raises(ConfigError, match="TOCSIN_API_TOKEN"):
        await start_grpc_server(load_config({}), Address("0.0.0.0", 0), lambda s: None, [])


async def test_stop_marks_not_serving_then_closes(open_server: GrpcServer) -> None:
    async with create_channel(f"127.0.0.1:{open_server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        await open_server.set_serving(False)
        # As a probe sees it (a plain channel): NOT_SERVING.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{open_server.port}") as plain:
            probe = health_pb2_grpc.HealthStub(plain)
            assert (await probe.Check(health_pb2.HealthCheckRequest())).status == (
                health_pb2.HealthCheckResponse.NOT_SERVING
            )
        # tocsin's channels watch each replica's health and send it no more calls, once
        # the watch stream brought the change (on a loaded machine a call or two may go
        # before it lands; CI saw one): within seconds, a call is refused by the channel.
        refused: grpc.aio.AioRpcError | None = None
        deadline = asyncio.get_running_loop().time() + 10
        while refused is None and asyncio.get_running_loop().time() < deadline:
            try:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=3)
            except grpc.aio.AioRpcError as error:
                refused = error
            else:
                await asyncio.sleep(0.05)
        assert refused is not None, "the channel kept sending calls to a NOT_SERVING replica"
        assert refused.code() == grpc.StatusCode.UNAVAILABLE


class _Watcher(incidents_pb2_grpc.IncidentServiceServicer):
    async def WatchIncidents(self, request, context):
        yield incidents_pb2.WatchIncidentsResponse()


async def _start_with_stream(env: dict[str, str], addr: Address = LOOPBACK) -> GrpcServer:
    def register(server: grpc.aio.Server) -> None:
        scheduling_pb2_grpc.add_SchedulingServiceServicer_to_server(
            _Servicer(),  # type: ignore[abstract]
            server,
        )
        incidents_pb2_grpc.add_IncidentServiceServicer_to_server(
            _Watcher(),  # type: ignore[abstract]
            server,
        )

    return await start_grpc_server(
        load_config(env),
        addr,
        register,
        ["tocsin.v1.SchedulingService", "tocsin.v1.IncidentService"],
    )


async def test_streams_and_reflection_without_the_token_are_unauthenticated() -> None:
    """Not UNKNOWN: the refusal of a streaming call has the streaming call's shape."""
    server = await _start_with_stream({"TOCSIN_API_TOKEN": "s3cret"})
    target = f"127.0.0.1:{server.port}"
    try:
        async with grpc.aio.insecure_channel(target) as anonymous:
            watch = incidents_pb2_grpc.IncidentServiceStub(anonymous).WatchIncidents(
                incidents_pb2.WatchIncidentsRequest()
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in watch:
                    pass
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reflect = reflection_pb2_grpc.ServerReflectionStub(anonymous).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in reflect:
                    pass
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with create_channel(target, token="s3cret") as authorised:
            watch = incidents_pb2_grpc.IncidentServiceStub(authorised).WatchIncidents(
                incidents_pb2.WatchIncidentsRequest()
            )
            assert [reply async for reply in watch] == [incidents_pb2.WatchIncidentsResponse()]
            reflect = reflection_pb2_grpc.ServerReflectionStub(authorised).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            names = [s.name async for r in reflect for s in r.list_services_response.service]
            assert "tocsin.v1.IncidentService" in names
    finally:
        await server.stop(0)


async def test_two_authorization_values_are_refused(token_server: GrpcServer) -> None:
    """Not "the last one wins": a proxy that adds its own header cannot smuggle a token."""
    request = scheduling_pb2.GetUserRequest(id="alice")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:
        stub = scheduling_pb2_grpc.SchedulingServiceStub(channel)
        for values in (("Bearer wrong", "Bearer s3cret"), ("Bearer s3cret", "Bearer s3cret")):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetUser(request, metadata=[("authorization", v) for v in values])
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = await stub.GetUser(request, metadata=[("authorization", "Bearer s3cret")])
        assert reply.user.id == "alice"


async def test_the_bind_refusal_names_the_variable_that_set_the_address() -> None:
    env = {"TOCSIN_SCHEDULING_ADDR": "0.0.0.0:0"}
    config = load_config(env)
    with pytest.raises(
        ConfigError, match=r"^TOCSIN_SCHEDULING_ADDR=0\.0\.0\.0:0: .*TOCSIN_API_TOKEN"
    ):
        await _start_with_stream(env, config.grpc_listen_addr("scheduling"))
    env = {"TOCSIN_SCHEDULING_ADDR": "0.0.0.0:0", "TOCSIN_LISTEN_ADDR": "0.0.0.0:0"}
    config = load_config(env)
    with pytest.raises(ConfigError, match=r"^TOCSIN_LISTEN_ADDR=0\.0\.0\.0:0: "):
        await _start_with_stream(env, config.grpc_listen_addr("scheduling"))
