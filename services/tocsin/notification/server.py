"""The notification service process: gRPC server plus its background work.

Background tasks (in RunningService.tasks, all stopped by `stopping`):

- the incident-events consumer (group "notification"): status mirror and cancellations;
- shard leases (group "notification") and a TimerWorker over the owned incident shards:
  fires later rules and anything the Notify fast path missed;
- the SENDING sweep over the owned shards (and test pages with shard 0);
- outgoing webhooks and stakeholder status updates (tocsin.webhooks): their own consumer
  group ("webhooks") and their own delivery loop, apart from paging.

Tests pass `background=False` and drive the same parts by hand (`worker.run_once()`,
`consumer.drain_once()`, `pager.sweep(...)`) while advancing a ManualClock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tocsin.notification.channels import Channel, ChannelRegistry
from tocsin.notification.channels.email import ConsoleEmailChannel, EmailChannel
from tocsin.notification.channels.phone import SmsChannel, VoiceChannel
from tocsin.notification.channels.slack import SlackChannel
from tocsin.notification.channels.teams import TeamsChannel
from tocsin.notification.channels.webhook import WebhookChannel
from tocsin.notification.contacts import ContactStore
from tocsin.notification.inbound import Inbound
from tocsin.notification.pager import Pager
from tocsin.notification.peers import IncidentsPeer, UsersPeer
from tocsin.notification.providers import (
    CircuitBreaker,
    ConsoleProvider,
    Provider,
    Route,
    TwilioProvider,
)
from tocsin.notification.ratelimit import RateLimiter
from tocsin.notification.sender import Sender, SenderOptions
from tocsin.notification.servicer import SERVICE_NAME, NotificationServicer
from tocsin.notification.store import PagingStore
from tocsin.runtime.audit import AuditLog
from tocsin.runtime.auth import Principal, service_token
from tocsin.runtime.authz import OwnCheck
from tocsin.runtime.clock import Clock
from tocsin.runtime.config import Address, Config
from tocsin.runtime.events import INCIDENT_SHARDS, EventConsumer, instance_name
from tocsin.runtime.grpcserver import start_grpc_server
from tocsin.runtime.leases import ShardLeases
from tocsin.runtime.loops import WorkerHealth, run_loop
from tocsin.runtime.page_outbox import PageConsumer, page_consumers
from tocsin.runtime.service import RunningService, ServiceDeps, serve_blocking
from tocsin.runtime.timeline_outbox import TimelineOutbox
from tocsin.runtime.timers import TimerWorker
from tocsin.v1 import notification_pb2_grpc, webhooks_pb2_grpc
from tocsin.webhooks import delivery as webhook_delivery
from tocsin.webhooks.delivery import Deliverer, DeliveryOptions, Router
from tocsin.webhooks.servicer import SERVICE_NAME as WEBHOOK_SERVICE_NAME
from tocsin.webhooks.servicer import WebhookServicer
from tocsin.webhooks.store import WebhookStore

log = logging.getLogger(__name__)

GROUP = "notification"
SHARD_LEASE_MS = 15_000
SWEEP_INTERVAL_S = 30.0
CONSUMER_BLOCK_MS = 5_000
"""An event still arrives at once; a longer block only means fewer idle wake-ups (one per
shard each time), which otherwise land on pages being sent in the same moment."""
WEBHOOK_LINGER_MS = 250
"""How long the outgoing webhooks' consumer waits, once woken, before routing what it
read (EventConsumer's `linger_ms`): it shares this process's loop with the status
mirror and the first page of the incident whose event woke it, and the events that came
meanwhile come with its next read (at 50 ms it still read about one event at a time at
100 new incidents/s). A subscriber's POST a quarter of a second later costs nobody
anything; pages never go through this consumer."""
CONSOLE_FROM = "console"


@dataclass
class Parts:
    """The pieces of a running notification service, for tests and tools."""

    contacts: ContactStore
    store: PagingStore
    sender: Sender
    pager: Pager
    inbound: Inbound
    worker: TimerWorker
    consumer: EventConsumer
    leases: ShardLeases
    provider: Provider
    channels: ChannelRegistry
    routes: list[Route]
    """The phone providers in order of preference (one unless a fallback is set)."""
    webhooks: WebhookParts


@dataclass
class WebhookParts:
    """Outgoing webhooks and status updates: apart from paging (own group, own loop)."""

    store: WebhookStore
    router: Router
    deliverer: Deliverer
    consumer: EventConsumer


@dataclass
class NotificationService(RunningService):
    parts: Parts = field(kw_only=True)
    pages: list[PageConsumer] = field(kw_only=True, default_factory=list)
    """The page streams' consumers (runtime/page_outbox.py: one on one Redis server, one
    per shard on a Cluster): they start the pages escalation queued with the levels it
    fired; tests call `drain_once()`."""


def provider_from_config(config: Config) -> Provider:
    """Twilio when configured, else the console (one readable line per page)."""
    if config.twilio is None:
        return ConsoleProvider()
    twilio = config.twilio
    return TwilioProvider(
        twilio.account_sid, twilio.auth_token, twilio.from_number, base_url=twilio.base_url
    )


def fallback_from_config(config: Config) -> Provider | None:
    """The TOCSIN_SMS_FALLBACK_* provider (a Twilio-compatible API elsewhere), if set."""
    fallback = config.sms_fallback
    if fallback is None:
        return None
    return TwilioProvider(
        fallback.account_sid,
        fallback.auth_token,
        fallback.from_number,
        base_url=fallback.base_url,
    )


def routes_from_config(
    config: Config, provider: Provider, fallback: Provider | None, clock: Clock
) -> list[Route]:
    """The phone providers in order: the first (`twilio`, or `console` without
    credentials), then the fallback; with a fallback each has a circuit breaker."""
    first = "twilio" if config.twilio is not None else "console"
    if fallback is None or config.sms_fallback is None:
        return [Route(first, provider)]

    def breaker() -> CircuitBreaker:
        return CircuitBreaker(
            config.failover.failures,
            int(config.failover.open_for.total_seconds() * 1000),
            clock.now_ms,
        )

    return [
        Route(first, provider, breaker()),
        Route(config.sms_fallback.name, fallback, breaker()),
    ]


def channels_from_config(
    config: Config, provider: Provider, routes: list[Route] | None = None
) -> ChannelRegistry:
    """Every channel this process sends, configured: SMS and voice through `provider`,
    email through TOCSIN_SMTP_URL (printed without it), Teams cards, signed webhooks with
    TOCSIN_WEBHOOK_SECRET (none without it). A channel's own settings come from its part
    of the configuration."""
    callbacks = config.twilio_status_callbacks
    sms_number = config.twilio.from_number if config.twilio else None
    channels: list[Channel] = [
        SmsChannel(provider, config.public_url, status_callbacks=callbacks, routes=routes),
        VoiceChannel(provider, config.public_url, status_callbacks=callbacks, routes=routes),
        EmailChannel(config.smtp, sms_number=sms_number) if config.smtp else ConsoleEmailChannel(),
    ]
    channels.append(TeamsChannel(config.public_url))
    if config.webhook_secret:
        channels.append(WebhookChannel(config.webhook_secret))
    if config.slack:
        channels.append(SlackChannel(config.slack))
    return ChannelRegistry(channels)


def delivery_options(config: Config) -> DeliveryOptions:
    """Delivery settings of webhook subscriptions (TOCSIN_WEBHOOK_TIMEOUT, _LEASE)."""
    return DeliveryOptions(
        lease_ms=int(config.webhook_lease.total_seconds() * 1000),
        http_timeout_s=config.webhook_timeout.total_seconds(),
    )


def _slack_of(channels: ChannelRegistry) -> SlackChannel | None:
    slack = channels.find(SlackChannel.type)
    return slack if isinstance(slack, SlackChannel) else None


def build_parts(
    deps: ServiceDeps,
    provider: Provider,
    shard_source: Callable[[], Iterable[int]] | None,
    webhook_options: DeliveryOptions | None = None,
    fallback: Provider | None = None,
) -> Parts:
    """`fallback`: the second phone provider (the caller owns and closes it)."""
    config, redis, clock = deps.config, deps.redis, deps.clock
    contacts = ContactStore(redis, clock)
    store = PagingStore(redis, clock, int(config.retention.total_seconds() * 1000))
    incidents = IncidentsPeer(lambda: deps.peer_client(), clock, TimelineOutbox(redis))
    limiter = RateLimiter(
        redis,
        clock,
        config.twilio.from_number if config.twilio else CONSOLE_FROM,
        sends_per_second=config.twilio_sends_per_second,
        number_interval_ms=int(config.number_send_interval.total_seconds() * 1000),
    )
    routes = routes_from_config(config, provider, fallback, clock)
    channels = channels_from_config(config, provider, routes)
    options = SenderOptions(
        config.public_url, link_secret=service_token(config) if config.public_url_set else ""
    )
    sender = Sender(store, contacts, limiter, channels, incidents, clock, options)
    pager = Pager(store, contacts, sender, incidents, clock)
    instance = instance_name(GROUP)
    leases = ShardLeases(redis, clock, GROUP, instance, INCIDENT_SHARDS, SHARD_LEASE_MS)
    worker = TimerWorker(
        store.timers,
        clock,
        sender.fire,
        shard_source or (lambda: leases.owned),
        lease_ms=sender.options.lease_ms,
    )
    sender.on_rearm = worker.wake
    consumer = EventConsumer(
        redis, GROUP, pager.handle_event, consumer=instance, block_ms=CONSUMER_BLOCK_MS
    )
    webhook_store = WebhookStore(redis, int(config.retention.total_seconds() * 1000))
    deliverer = Deliverer(
        webhook_store,
        clock,
        channels,
        contacts,
        config.public_url,
        webhook_options or delivery_options(config),
    )
    router = Router(webhook_store, clock, config.public_url, on_queued=deliverer.wake.set)
    webhook_consumer = EventConsumer(
        redis,
        webhook_delivery.GROUP,
        router.handle,
        consumer=instance_name(webhook_delivery.GROUP),
        block_ms=CONSUMER_BLOCK_MS,
        linger_ms=WEBHOOK_LINGER_MS,
    )
    return Parts(
        contacts=contacts,
        store=store,
        sender=sender,
        pager=pager,
        inbound=Inbound(
            store,
            contacts,
            incidents,
            sender,
            config.public_url,
            slack=_slack_of(channels),
        ),
        worker=worker,
        consumer=consumer,
        leases=leases,
        provider=provider,
        channels=channels,
        routes=routes,
        webhooks=WebhookParts(webhook_store, router, deliverer, webhook_consumer),
    )


async def _sweep_forever(
    pager: Pager, leases: ShardLeases, clock: Clock, stop: asyncio.Event, health: WorkerHealth
) -> None:
    async def sweep() -> None:
        owned = leases.owned
        await pager.sweep(owned, tests=0 in owned)

    guard = health.guard("notification SENDING sweep", stop)
    await run_loop(guard, stop, sweep, lambda: clock.sleep(SWEEP_INTERVAL_S, stop))


def own_contact_method(contacts: ContactStore) -> OwnCheck:
    """The authorization table's "contact_method" check: the method (by id) is the
    caller's, and so is the owner a changed method names."""

    async def check(request: Any, principal: Principal) -> bool:
        method_id = request.contact_method.id if hasattr(request, "contact_method") else request.id
        owner = await contacts.owner_of(method_id)
        if owner not in (None, principal.user_id):
            return False
        named = request.contact_method.user_id if hasattr(request, "contact_method") else owner
        return bool(principal.user_id) and named == principal.user_id

    return check


async def create_server(
    deps: ServiceDeps,
    addr: Address | None = None,
    *,
    provider: Provider | None = None,
    background: bool = True,
    webhook_options: DeliveryOptions | None = None,
) -> tuple[NotificationService, int]:
    """Start the notification service (port 0 in `addr` picks a free port).

    `provider` None means the one the configuration names (Twilio or the console).
    `background=False` starts no background task and lets the worker fire every shard,
    so a test drives it by hand.
    """
    provider = provider or provider_from_config(deps.config)
    fallback = fallback_from_config(deps.config)
    parts = build_parts(
        deps,
        provider,
        None if background else lambda: range(INCIDENT_SHARDS),
        webhook_options,
        fallback=fallback,
    )
    await parts.consumer.start()
    # Stakeholder subscriptions an earlier version kept in one hash (webhooks/store.py).
    await parts.webhooks.store.migrate_subscriptions(deps.clock.now_ms())
    await parts.webhooks.consumer.start()
    webhook_servicer = WebhookServicer(
        parts.webhooks.store, parts.webhooks.deliverer, parts.channels
    )
    servicer = NotificationServicer(
        parts.contacts,
        parts.store,
        parts.pager,
        parts.sender,
        parts.inbound,
        parts.channels,
        UsersPeer(lambda: deps.peer_client()),
    )
    servicer.audit = AuditLog(deps.redis, deps.clock, deps.config.retention)
    webhook_servicer.audit = servicer.audit
    pages = page_consumers(deps.redis, servicer.apply_page, instance_name(GROUP))
    for page_consumer in pages:  # the groups exist before escalation's first page
        await page_consumer.start()

    def register(server: Any) -> None:
        notification_pb2_grpc.add_NotificationServiceServicer_to_server(servicer, server)
        webhooks_pb2_grpc.add_WebhookServiceServicer_to_server(webhook_servicer, server)

    grpc_server = await start_grpc_server(
        deps.config,
        addr or deps.config.grpc_listen_addr("notification"),
        register,
        [SERVICE_NAME, WEBHOOK_SERVICE_NAME],
        authenticator=deps.authenticator(),
        ownership={"contact_method": own_contact_method(parts.contacts)},
    )
    running = NotificationService(grpc_server, parts=parts, pages=pages)
    if background:
        # The consumer name is stable, so a restarted process finds what it had received
        # and not yet handled when it died. Handle that before any rule timer fires: an
        # acknowledgement among it must cancel the pages it stops.
        await parts.consumer.drain_once()
        stop, health = running.stopping, running.workers
        running.start_worker("notification consumer", parts.consumer.run(stop, health))
        for page_consumer in pages:
            running.start_worker(page_consumer.worker, page_consumer.run(stop, health))
        running.start_worker("notification lease heartbeat", parts.leases.run(stop, health))
        running.start_worker("notification timer worker", parts.worker.run(stop, health))
        running.start_worker(
            "notification SENDING sweep",
            _sweep_forever(parts.pager, parts.leases, deps.clock, stop, health),
        )
        webhooks = parts.webhooks
        running.start_worker("webhooks consumer", webhooks.consumer.run(stop, health))
        running.start_worker("webhook deliverer", webhooks.deliverer.run(stop, health))
        running.start_health(deps.redis)

    async def close() -> None:
        await parts.webhooks.deliverer.aclose()
        await parts.sender.close()
        await parts.channels.aclose()
        await provider.aclose()
        if fallback is not None:
            await fallback.aclose()

    running.on_stop.append(close)
    return running, grpc_server.port


def serve() -> None:
    serve_blocking("notification", create_server)
