"""gRPC asyncio server bootstrap shared by every tocsin service.

`start_grpc_server` adds health checking, reflection, OpenTelemetry, request metrics
(runtime/metrics.py: every call timed by method and status code), the authorization
interceptor (runtime/authz.py: every call authenticated and checked against one table)
and the domain-error mapping, binds (port 0 picks a free port, as tests do) and starts.
Without TOCSIN_API_TOKEN it refuses to bind anything but loopback (naming the variable the
address came from).

A call carries at most one `authorization: Bearer <credential>` value (two are refused);
a refusal is UNAUTHENTICATED or PERMISSION_DENIED for every kind of call, streaming ones
and reflection included. Health checks need no credential.

With TOCSIN_TLS_CERT/KEY every server speaks TLS only (a plaintext client fails its
handshake); with TOCSIN_TLS_CA as well it requires a client certificate signed by that CA
(mutual TLS): a client without one is refused before any call reaches a handler.

Every connection is closed (HTTP/2 GOAWAY, calls in flight finish within the grace) once it
is `TOCSIN_GRPC_MAX_CONNECTION_AGE` old, give or take 10%: clients then connect again and
resolve the service's name anew, so calls spread over replicas started since.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

from tocsin.client.tls import TlsSettings
from tocsin.runtime.auth import Authenticator
from tocsin.runtime.authz import AuthorizationInterceptor, OwnCheck
from tocsin.runtime.config import Address, Config
from tocsin.runtime.errors import domain_error, status_trailer
from tocsin.runtime.metrics import GRPC_DURATION

log = logging.getLogger(__name__)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Turns `TocsinError`s raised by servicers into their gRPC status with details, and
    the storage errors `errors.domain_error` gives a meaning (Redis out of memory:
    UNAVAILABLE) too; any other exception ends the call as before (UNKNOWN)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner(request, context)
                except Exception as raised:
                    error = domain_error(raised)
                    if error is None:
                        raise
                    await context.abort(error.code, str(error), status_trailer(error))

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        # A streaming handler written as a coroutine (grpc_health's Watch writes through
        # the context) is no async iterator: wrapping it would break it.
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except Exception as raised:
                    error = domain_error(raised)
                    if error is None:
                        raise
                    await context.abort(error.code, str(error), status_trailer(error))

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Times every call of a registered method by its final status code
    (`tocsin.grpc.server.duration`; its count is the request rate). A method no handler is
    registered for is not counted: its name is whatever the caller sent."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        labels = {"method": handler_call_details.method or ""}
        return _rebuild(handler, lambda inner, stream: _timed(inner, stream, labels))


def _rebuild(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Any, bool], Any]
) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour passed through `wrap(behaviour, response_streams)`."""
    args = (handler.request_deserializer, handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True), *args)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, False), *args)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, True), *args)
    return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False), *args)


def _status_name(context: grpc.aio.ServicerContext, raised: BaseException | None) -> str:
    if isinstance(raised, asyncio.CancelledError):
        return "CANCELLED"
    if raised is not None and not isinstance(raised, grpc.aio.AbortError):
        return "UNKNOWN"
    code = context.code()
    if code is None:
        return "OK" if raised is None else "UNKNOWN"
    if isinstance(code, grpc.StatusCode):
        return code.name
    for status in grpc.StatusCode:  # the aio context may give the number
        if status.value[0] == code:
            return status.name
    return "UNKNOWN"


def _timed(inner: Any, response_streams: bool, labels: dict[str, str]) -> Any:
    """`inner` (a coroutine function or an async generator function) timed into
    tocsin.grpc.server.duration."""

    def record(started: float, context: grpc.aio.ServicerContext, raised: BaseException | None):
        code = _status_name(context, raised)
        GRPC_DURATION.record(time.perf_counter() - started, {**labels, "code": code})

    if response_streams and inspect.isasyncgenfunction(inner):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                async for item in inner(request, context):
                    yield item
            except BaseException as raised:
                record(started, context, raised)
                raise
            record(started, context, None)

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            result = await inner(request, context)
        except BaseException as raised:
            record(started, context, raised)
            raise
        record(started, context, None)
        return result

    return call


Registrar = Callable[[grpc.aio.Server], None]


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)


MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Largest request message a server takes (RESOURCE_EXHAUSTED beyond); the client's
TriggerBatch stays under 1 MiB per batch, the gateway's Alertmanager payloads under this."""


def server_options(config: Config) -> list[tuple[str, int]]:
    """gRPC core options of every tocsin server: message size, streams per connection,
    connection age."""
    options = [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_concurrent_streams", config.grpc_max_concurrent_streams),
    ]
    age_ms = int(config.grpc_max_connection_age.total_seconds() * 1000)
    if age_ms > 0:
        grace_ms = int(config.grpc_max_connection_age_grace.total_seconds() * 1000)
        options += [
            ("grpc.max_connection_age_ms", age_ms),
            ("grpc.max_connection_age_grace_ms", grace_ms),
        ]
    return options


async def start_grpc_server(
    config: Config,
    addr: Address,
    register: Registrar,
    service_names: Sequence[str],
    *,
    variable: str | None = None,
    authenticator: Authenticator | None = None,
    ownership: Mapping[str, OwnCheck] | None = None,
) -> GrpcServer:
    """Bind, start and mark SERVING a server with tocsin's standard interceptors.

    `variable` names the setting `addr` came from in a refusal; by default the one it
    matches: TOCSIN_LISTEN_ADDR, else the service's TOCSIN_<SERVICE>_ADDR.
    `authenticator` checks personal tokens and API keys too when it has Redis (else only
    the service credential and the admin tokens); `ownership` names the service's own
    ownership checks of the authorization table.
    """
    config.check_bind(addr, variable or _listen_variable(config, addr))
    # Health checks (probes, clients watching each replica) are not traced: they are many,
    # and tracing would wrap Watch, a coroutine, as if it were an async iterator.
    interceptors: list[grpc.aio.ServerInterceptor] = [
        MetricsInterceptor(),
        aio_server_interceptor(filter_=filters.negate(filters.health_check())),
    ]
    interceptors.append(
        AuthorizationInterceptor(authenticator or Authenticator(config, None), ownership)
    )
    interceptors.append(ErrorMappingInterceptor())
    server = grpc.aio.server(interceptors=interceptors, options=server_options(config))
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    if config.tls is not None:
        port = server.add_secure_port(str(addr), server_credentials(config.tls))
    else:
        port = server.add_insecure_port(str(addr))
    if port == 0:
        raise OSError(f"could not bind gRPC server to {addr}")
    await server.start()
    grpc_server = GrpcServer(server, port, health_servicer, tuple(service_names))
    await grpc_server.set_serving(True)
    return grpc_server


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """This server's certificate; with a CA, client certificates are required and verified."""
    assert tls.cert_chain is not None and tls.private_key is not None  # load_config checks
    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.cert_chain)],
        root_certificates=tls.ca,
        require_client_auth=tls.mutual,
    )


def _listen_variable(config: Config, addr: Address) -> str:
    if config.listen_addr is None or config.listen_addr != addr:
        for name, configured in config.grpc_addrs.items():
            if configured == addr:
                return f"TOCSIN_{name.upper()}_ADDR"
    return "TOCSIN_LISTEN_ADDR"


def install_stop_signals(stop: asyncio.Event) -> None:
    """Set `stop` on SIGTERM or SIGINT, for graceful shutdown."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
