"""gRPC channels to tocsin services: bearer token, TLS, OpenTelemetry, sane retries.

With `tls` the channel is TLS (verifying the server against the CA, presenting this
process's certificate for mutual TLS); a bearer token never goes in plaintext to a
non-loopback address unless `allow_insecure_tokens` (see tocsin.client.tls).

Calls go round robin over every address of the target that reports SERVING (see
tocsin.client.targets). A DNS name is resolved again when a connection ends (servers end
them every TOCSIN_GRPC_MAX_CONNECTION_AGE), at most once per `DNS_REFRESH_MS`, so a
replica added later gets calls within about that age plus these 5 s.
"""

from __future__ import annotations

import json

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from tocsin.client.targets import grpc_target
from tocsin.client.tls import TlsSettings, check_token_transport

DNS_REFRESH_MS = 5000
"""Least time between two DNS resolutions of one channel's target (gRPC's default: 30 s)."""
RECONNECT_BACKOFF_MS = (100, 1000)
"""First and longest wait between two attempts to connect to a peer that is down (gRPC's
defaults, 1 s growing to 120 s, left a restarted peer unused for many seconds): a call
waiting for a starting peer (`wait_for_ready=True`) goes out within about a second of it
listening."""

_SERVICE_CONFIG = json.dumps(
    {
        # Spread calls over every address a name resolves to (e.g. a headless Kubernetes
        # Service); with a single address this is the same as pick_first.
        "loadBalancingConfig": [{"round_robin": {}}],
        # Each replica's gRPC health ("" = the whole server) is watched, and calls go only
        # to those SERVING: a replica that is stopping or whose workers are stuck gets none.
        "healthCheckConfig": {"serviceName": ""},
        "methodConfig": [
            {
                # Transient UNAVAILABLE (a restarting peer) is retried by gRPC itself; every
                # tocsin write is idempotent or version-checked, so a retry cannot double a page.
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)


CHANNEL_METADATA = "tocsin-channel"
"""Metadata naming what a call comes through ("cli", "console"; default "api"), recorded in
the audit log beside the authenticated principal."""


class _TokenDetails:
    """Adds the bearer token (and the channel's name) to every call."""

    def __init__(self, token: str | None, via: str | None = None) -> None:
        self._pairs = [("authorization", f"Bearer {token}")] if token else []
        if via:
            self._pairs.append((CHANNEL_METADATA, via))

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        for pair in self._pairs:
            metadata.add(*pair)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# One class per kind of call: grpc.aio files an interceptor under the first kind it
# implements only, so one class for both left streaming calls (WatchIncidents) without
# the token.
class _UnaryTokenInterceptor(_TokenDetails, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _StreamTokenInterceptor(_TokenDetails, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _ClientStreamTokenInterceptor(_TokenDetails, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


class _BidiTokenInterceptor(_TokenDetails, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials:
    """TLS credentials: verify the server against the CA (else the system's roots) and
    present this process's certificate when it has one (mutual TLS)."""
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.private_key, certificate_chain=tls.cert_chain
    )


def create_channel(
    target: str,
    token: str | None = None,
    via: str | None = None,
    *,
    tls: TlsSettings | None = None,
    allow_insecure_tokens: bool = False,
) -> grpc.aio.Channel:
    """An asyncio channel to `target` (HOST:PORT, IP:PORT,IP:PORT,... or dns:///HOST:PORT;
    see tocsin.client.targets) with tracing, the bearer token, the channel's name (`via`:
    "cli", "console") and, with `tls`, TLS.

    Raises `InsecureTokenError` for a token over plaintext beyond loopback unless
    `allow_insecure_tokens`."""
    interceptors: list[grpc.aio.ClientInterceptor] = list(aio_client_interceptors())
    if token:
        check_token_transport(target, tls=tls is not None, allow_insecure=allow_insecure_tokens)
    if token or via:
        interceptors += [
            kind(token, via)
            for kind in (
                _UnaryTokenInterceptor,
                _StreamTokenInterceptor,
                _ClientStreamTokenInterceptor,
                _BidiTokenInterceptor,
            )
        ]
    options: list[tuple[str, str | int]] = [
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        ("grpc.dns_min_time_between_resolutions_ms", DNS_REFRESH_MS),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1]),
    ]
    if tls is not None:
        return grpc.aio.secure_channel(
            grpc_target(target), channel_credentials(tls), options, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(grpc_target(target), options, interceptors=interceptors)
