"""The shared gRPC bootstrap: auth, loopback-only binding, health, error details."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tocsin.client.channel import create_channel
from tocsin.runtime.config import Address, ConfigError, load_config
from tocsin.runtime.errors import FieldViolation, InvalidArgument, NotFound
from tocsin.runtime.grpcserver import GrpcServer, start_grpc_server
from tocsin.v1 import scheduling_pb2, scheduling_pb2_grpc

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
        # tocsin's channels watch each replica's health and send it no more calls.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
