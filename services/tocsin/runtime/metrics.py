"""Metrics of the pager itself, in Prometheus text on every process.

Guarantee: every tocsin process (each gRPC service and the gateway) serves its metrics as
Prometheus text at `GET /metrics` on its own address (`TOCSIN_METRICS_ADDR`, loopback by
default, a per-process default port), and label values are bounded: words chosen here
(channel, outcome, stream, group, timer kind), registered gRPC method names, route
templates, status codes and provider error codes. Never a phone number, a token, a user or
incident id, or text from an alert.

The instruments are OpenTelemetry instruments created at import through the global meter,
so they cost next to nothing until `setup_metrics` installs this process's MeterProvider.
That provider has a Prometheus reader (exposed through prometheus-client's registry) and,
when an OTLP endpoint is configured, an OTLP exporter as well. Names are OpenTelemetry's
(`tocsin.pages`); the Prometheus exporter turns them into `tocsin_pages_total`, adding the
unit (`_seconds`) and `_total` for counters. The README's Metrics section lists them all.

The endpoint is a small aiohttp server in the process's own event loop, over HTTPS with the
process's certificate when TOCSIN_TLS_CERT/KEY are set. Beyond loopback it needs
`TOCSIN_METRICS_TOKEN` (checked at start by the config; and TLS, or the operator's consent
TOCSIN_ALLOW_INSECURE_TOKENS=1): a scrape then needs `Authorization: Bearer <token>`,
which Prometheus sends from `authorization.credentials_file`.
The gateway's metrics are not on its public HTTP port: that port faces Twilio and alert
senders, the metrics port faces Prometheus only.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from tocsin.runtime.config import Address, Config

log = logging.getLogger(__name__)

_OTLP_METRICS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")

LATENCY_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
"""Alert -> first page and timer lateness: milliseconds when healthy, minutes when not."""
REQUEST_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""gRPC and HTTP request durations."""

_meter = metrics.get_meter("tocsin")

FIRST_PAGE_LATENCY = _meter.create_histogram(
    "tocsin.alert_to_first_page",
    unit="s",
    description="From the alert that opened an incident being accepted to the provider "
    "accepting the incident's first page (SMS or call)",
    explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
)
PAGES = _meter.create_counter(
    "tocsin.pages",
    description="Pages (messages and calls) by channel and outcome: sent (accepted by the "
    "provider), failed, unknown (no answer; not resent), retry_later, unreachable, skipped",
)
TWILIO_ERRORS = _meter.create_counter(
    "tocsin.twilio.errors",
    description="Errors from Twilio (or the configured provider) by Twilio error code "
    "('http_<status>' without one, 'no_response' when the outcome is unknown), on requests "
    "and in delivery status callbacks",
)
TIMER_LATENESS = _meter.create_histogram(
    "tocsin.timer.lateness",
    unit="s",
    description="How long after its due time a durable timer's handler started, by timer "
    "kind (escalation levels, notification rules, snoozes)",
    explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
)
EVENTS_HANDLED = _meter.create_counter(
    "tocsin.consumer.events",
    description="Stream events handled by a consumer group",
)
DEAD_LETTERED = _meter.create_counter(
    "tocsin.consumer.dead_lettered",
    description="Stream events a consumer group gave up on (moved to the dead-letter stream)",
)
WEBHOOK_DELIVERIES = _meter.create_counter(
    "tocsin.webhook.deliveries",
    description="Delivery attempts to webhook and stakeholder subscriptions, by outcome",
)
GRPC_DURATION = _meter.create_histogram(
    "tocsin.grpc.server.duration",
    unit="s",
    description="gRPC calls served, by method and status code (a stream: its whole life)",
    explicit_bucket_boundaries_advisory=REQUEST_BUCKETS_S,
)
HTTP_DURATION = _meter.create_histogram(
    "tocsin.http.server.duration",
    unit="s",
    description="HTTP requests served by the gateway, by route template, method and status",
    explicit_bucket_boundaries_advisory=REQUEST_BUCKETS_S,
)


def timer_fired(kind: str, now_ms: int, due_ms: int) -> None:
    """A durable timer of `kind` starts firing at `now_ms` (clock time): its lateness."""
    TIMER_LATENESS.record(max(0, now_ms - due_ms) / 1000, {"kind": kind})


class ConsumerLag:
    """The lag of each (stream, group) this process consumes: per shard, the age of the
    oldest event in its latest read (0 once a read finds nothing new); the gauge reports
    the largest over shards."""

    def __init__(self) -> None:
        self._ages: dict[tuple[str, str], dict[int, float]] = {}
        self._lock = threading.Lock()  # scrapes may run on another thread

    def record(self, stream: str, group: str, shard: int, age_s: float) -> None:
        with self._lock:
            self._ages.setdefault((stream, group), {})[shard] = max(0.0, age_s)

    def observe(self, _options: metrics.CallbackOptions) -> list[metrics.Observation]:
        with self._lock:
            return [
                metrics.Observation(max(shards.values(), default=0.0), {"stream": s, "group": g})
                for (s, g), shards in self._ages.items()
            ]


CONSUMER_LAG = ConsumerLag()
_meter.create_observable_gauge(
    "tocsin.consumer.lag",
    callbacks=[CONSUMER_LAG.observe],
    unit="s",
    description="Age of the oldest event in a consumer group's latest read (largest over "
    "shards; 0 when caught up)",
)

_lock = threading.Lock()
_provider: MeterProvider | None = None


def setup_metrics(process: str, env: Mapping[str, str] | None = None) -> MeterProvider:
    """Install this process's MeterProvider (once; later calls return the same one): a
    Prometheus reader, plus OTLP export when `OTEL_EXPORTER_OTLP_(METRICS_)ENDPOINT` is set."""
    global _provider
    env = os.environ if env is None else env
    with _lock:
        if _provider is not None:
            return _provider
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        readers: list[MetricReader] = [PrometheusMetricReader(scope_info_enabled=False)]
        enabled = env.get("OTEL_SDK_DISABLED", "").lower() != "true"
        if enabled and any(env.get(v) for v in _OTLP_METRICS):
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter,
            )

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        name = env.get("OTEL_SERVICE_NAME", f"tocsin-{process}")
        resource = Resource.create({"service.name": name, "tocsin.process": process})
        _provider = MeterProvider(resource=resource, metric_readers=readers)
        metrics.set_meter_provider(_provider)
        return _provider


def render() -> bytes:
    """This process's metrics in the Prometheus text format (0.0.4, which every
    Prometheus reads; tocsin's names need nothing newer)."""
    return generate_latest(REGISTRY)


@dataclass
class MetricsServer:
    """A running metrics endpoint; `port` is the bound port (0 asked: a free one)."""

    runner: web.AppRunner
    address: Address
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_metrics_server(
    address: Address, token: str | None = None, ssl_context: ssl.SSLContext | None = None
) -> MetricsServer:
    """Serve `GET /metrics` (Prometheus text) on `address` in this event loop (HTTPS with
    `ssl_context`); with a token, only to `Authorization: Bearer <token>` (401 otherwise)."""
    expected = f"Bearer {token}".encode() if token else None

    async def handle(request: web.Request) -> web.Response:
        if expected is not None:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return web.Response(status=401, text="metrics need the bearer token\n")
        return web.Response(body=render(), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    # The socket is bound here, not by the event loop: under uvloop a port another
    # process took a moment earlier (two replicas starting at once on one host) can
    # surface as a server whose socket is None instead of EADDRINUSE; bound here, it is
    # always the OSError the caller handles.
    try:
        sock = _listening_socket(address)
    except OSError:
        await runner.cleanup()
        raise
    site = web.SockSite(runner, sock, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError:
        sock.close()
        await runner.cleanup()
        raise
    return MetricsServer(runner, address, int(sock.getsockname()[1]))


def _listening_socket(address: Address) -> socket.socket:
    """A listening TCP socket on `address` (SO_REUSEADDR, as TCPSite would set)."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve_process_metrics(config: Config, process: str) -> MetricsServer | None:
    """Install the MeterProvider and start `process`'s endpoint at its configured address
    (None when TOCSIN_METRICS_ADDR=off). An address that was set must be served (else
    OSError); the default one, when taken (another stack on this host), is skipped with a
    warning."""
    setup_metrics(process)
    address = config.metrics_listen_addr(process)
    if address is None:
        return None
    try:
        server = await start_metrics_server(address, config.metrics_token, _server_ssl(config))
    except OSError as error:
        if config.metrics_addr is not None:
            raise  # an address asked for must be served
        log.warning(
            "%s: default metrics address %s unavailable (%s); metrics not served, "
            "set TOCSIN_METRICS_ADDR",
            process,
            address,
            error.strerror or error,
        )
        return None
    scheme = "https" if config.tls is not None else "http"
    log.info("%s metrics on %s://%s:%d/metrics", process, scheme, address.host, server.port)
    return server


def _server_ssl(config: Config) -> ssl.SSLContext | None:
    """HTTPS with the process's own certificate when TOCSIN_TLS_CERT/KEY are set (no
    client certificate asked: the scrape authenticates with TOCSIN_METRICS_TOKEN)."""
    tls = config.tls
    if tls is None or tls.cert_path is None or tls.key_path is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_path, tls.key_path)
    return context
