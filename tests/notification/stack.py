"""A paging stack for notification tests, all real but Twilio and time.

Real scheduling, incidents and notification gRPC servers on loopback, the real gateway
(Starlette + uvicorn) for Twilio's webhooks, a fake Twilio over real HTTP, real Redis, and
a ManualClock. No background tasks: a test advances the clock and calls
`stack.tick()` (the timer worker's run_once) or `stack.drain_events()` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from google.protobuf.duration_pb2 import Duration

from tests.harness import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FROM_NUMBER,
    Pager,
    bound_socket,
    serve_on,
    socket_url,
)
from tests.services import LOOPBACK_ANY_PORT, client_for
from tocsin.client.client import TocsinClient
from tocsin.faketwilio import FakeTwilio, create_fake_twilio
from tocsin.gateway.app import create_app
from tocsin.incidents import server as incidents_server
from tocsin.incidents.server import IncidentsService
from tocsin.notification import server as notification_server
from tocsin.notification.providers import Provider
from tocsin.notification.server import NotificationService, Parts
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.config import Config, load_config
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.service import RunningService, ServiceDeps, peer_client
from tocsin.scheduling import server as scheduling_server
from tocsin.v1 import incidents_pb2, notification_pb2, scheduling_pb2

SMS = notification_pb2.CONTACT_METHOD_TYPE_SMS
VOICE = notification_pb2.CONTACT_METHOD_TYPE_VOICE
ALICE = "+15005550010"
BOB = "+15005550011"


@dataclass
class PagingStack:
    clock: ManualClock
    redis: RedisClient
    fake: FakeTwilio
    pager: Pager
    service: NotificationService
    client: TocsinClient
    config: Config
    incidents: IncidentsService | None = None
    """The incidents service (its heartbeat and snooze workers run only when told)."""

    @property
    def parts(self) -> Parts:
        return self.service.parts

    async def settle(self) -> None:
        """Wait for every background send and every status callback the fake owes, then
        append the timeline notes queued meanwhile (the timeline outbox)."""
        await self.parts.sender.idle()
        await self.fake.drain()
        await self.parts.sender.idle()
        await self.append_notes()

    async def append_notes(self) -> int:
        """What incidents' timeline outbox worker would do: append the queued notes."""
        if self.incidents is None:
            return 0
        return await self.incidents.timeline_outbox.drain_once()

    async def tick(self, **advance: float) -> int:
        """Advance the clock, fire what is due, let the sends finish; returns fired count."""
        self.clock.advance(**advance)
        fired = await self.parts.worker.run_once()
        await self.settle()
        return fired

    @contextlib.asynccontextmanager
    async def pages_running(self) -> AsyncIterator[None]:
        """Notification's page consumers in their real loops, as in production: for a
        test whose escalation runs its own loops (the pages it queues start by themselves
        meanwhile)."""
        stop = asyncio.Event()
        loops = [asyncio.create_task(pages.run(stop)) for pages in self.service.pages]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*loops)

    async def drain_events(self) -> int:
        """Handle the incident events, then start the pages escalation queued (its page
        streams, runtime/page_outbox.py)."""
        handled = await self.parts.consumer.drain_once()
        return handled + await self.start_pages()

    async def start_pages(self) -> int:
        """Start the pages escalation queued (every shard's page stream); how many."""
        started = 0
        for pages in self.service.pages:
            started += await pages.drain_once()
        return started

    async def add_user(
        self,
        user_id: str,
        number: str,
        rules: list[tuple[int, int]],
        *,
        name: str | None = None,
    ) -> None:
        """A user with an SMS and a voice contact method at `number` and `rules` as
        (channel, delay seconds) pairs."""
        await self.client.scheduling.CreateUser(
            scheduling_pb2.CreateUserRequest(
                user=scheduling_pb2.User(
                    id=user_id, name=name or user_id.title(), time_zone="Europe/London"
                )
            )
        )
        for channel, suffix in ((SMS, "sms"), (VOICE, "voice")):
            await self.client.notification.CreateContactMethod(
                notification_pb2.CreateContactMethodRequest(
                    contact_method=notification_pb2.ContactMethod(
                        id=f"{user_id}-{suffix}", user_id=user_id, type=channel, address=number
                    )
                )
            )
        await self.set_rules(user_id, rules)
        self.pager.person(user_id, number)

    async def set_rules(self, user_id: str, rules: list[tuple[int, int]]) -> None:
        suffix: dict[int, str] = {SMS: "sms", VOICE: "voice"}
        await self.client.notification.SetNotificationRules(
            notification_pb2.SetNotificationRulesRequest(
                user_id=user_id,
                rules=[
                    notification_pb2.NotificationRule(
                        contact_method_id=f"{user_id}-{suffix[channel]}",
                        delay=Duration(seconds=delay),
                    )
                    for channel, delay in rules
                ],
            )
        )

    async def trigger(self, summary: str = "disk full on db1", *, mirror: bool = True) -> str:
        """Open an incident on `payments-api`; `mirror` lets notification see its event."""
        reply = await self.client.incidents.Trigger(
            incidents_pb2.TriggerRequest(
                service_id="payments-api", summary=summary, dedup_key=summary
            )
        )
        if mirror:
            await self.drain_events()
        return reply.incident.id

    async def notify(
        self,
        incident_id: str,
        user_id: str,
        key: str | None = None,
        service_id: str = "",
        carry: incidents_pb2.Incident | None = None,
    ) -> notification_pb2.NotifyResponse:
        """`service_id`: the incident's service, as escalation names it (the page then
        takes its words from the script that records it); `carry`: the incident whose
        summary, number and creation the request carries, as escalation's for a level
        its TRIGGERED event fired."""
        request = notification_pb2.NotifyRequest(
            incident_id=incident_id,
            user_id=user_id,
            idempotency_key=key or f"{incident_id}/0/0/0/{user_id}",
            service_id=service_id,
        )
        if carry is not None:
            request.incident_summary = carry.summary
            request.incident_number = carry.number
            request.incident_created_at.CopyFrom(carry.created_at)
        return await self.client.notification.Notify(request)

    async def attempts(self, incident_id: str) -> list[notification_pb2.Attempt]:
        reply = await self.client.notification.ListAttempts(
            notification_pb2.ListAttemptsRequest(incident_id=incident_id)
        )
        return list(reply.attempts)

    async def incident(self, incident_id: str) -> incidents_pb2.Incident:
        await self.append_notes()
        reply = await self.client.incidents.GetIncident(
            incidents_pb2.GetIncidentRequest(incident_id=incident_id, include_timeline=True)
        )
        return reply.incident


def _env(public_url: str, fake: FakeTwilio, extra: Mapping[str, str]) -> dict[str, str]:
    assert fake.base_url is not None
    return {
        "TOCSIN_PUBLIC_URL": public_url,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_FROM_NUMBER": FROM_NUMBER,
        "TOCSIN_TWILIO_BASE_URL": fake.base_url,
        "TOCSIN_TWILIO_SENDS_PER_SECOND": "0",
        "TOCSIN_NUMBER_SEND_INTERVAL": "0",
        **extra,
    }


@contextlib.asynccontextmanager
async def _started(running: RunningService) -> AsyncIterator[str]:
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        await running.stop(0)


@contextlib.asynccontextmanager
async def paging_stack(
    redis: RedisClient,
    env: Mapping[str, str] | None = None,
    *,
    provider: Callable[[FakeTwilio], Provider] | None = None,
) -> AsyncIterator[PagingStack]:
    """`provider` builds the provider from the fake (default: Twilio from the config)."""
    clock = ManualClock()
    async with contextlib.AsyncExitStack() as stack:
        fake = await stack.enter_async_context(create_fake_twilio(ACCOUNT_SID, AUTH_TOKEN))
        gateway_socket = bound_socket()
        public_url = socket_url(gateway_socket)
        base_env = _env(public_url, fake, env or {})

        def deps(extra: Mapping[str, str]) -> ServiceDeps:
            return ServiceDeps(load_config({**base_env, **extra}), redis, clock)

        scheduling, _ = await scheduling_server.create_server(
            deps({}), LOOPBACK_ANY_PORT, background=False
        )
        scheduling_addr = await stack.enter_async_context(_started(scheduling))
        # Reassign asks scheduling whether a user exists (reassigning to a policy would
        # ask escalation, which this stack does not start).
        incidents_deps = deps({"TOCSIN_SCHEDULING_ADDR": scheduling_addr})
        stack.push_async_callback(_close_peers, incidents_deps)
        incidents, _ = await incidents_server.create_server(
            incidents_deps, LOOPBACK_ANY_PORT, background=False
        )
        incidents_addr = await stack.enter_async_context(_started(incidents))
        peers = {"TOCSIN_SCHEDULING_ADDR": scheduling_addr, "TOCSIN_INCIDENTS_ADDR": incidents_addr}
        notification_deps = deps(peers)
        stack.push_async_callback(_close_peers, notification_deps)
        service, _ = await notification_server.create_server(
            notification_deps,
            LOOPBACK_ANY_PORT,
            provider=provider(fake) if provider else None,
            background=False,
        )
        notification_addr = await stack.enter_async_context(_started(service))
        gateway_config = load_config(
            {**base_env, **peers, "TOCSIN_NOTIFICATION_ADDR": notification_addr}
        )
        gateway_client = peer_client(gateway_config)
        stack.push_async_callback(gateway_client.close)
        app = create_app(gateway_config, gateway_client, clock)
        await stack.enter_async_context(serve_on(gateway_socket, app))
        client = client_for(
            scheduling=scheduling_addr, incidents=incidents_addr, notification=notification_addr
        )
        stack.push_async_callback(client.close)
        await client.incidents.CreateService(
            incidents_pb2.CreateServiceRequest(
                service=incidents_pb2.Service(
                    id="payments-api", name="Payments API", escalation_policy_id="payments"
                )
            )
        )
        assert isinstance(service, NotificationService)
        paging = PagingStack(
            clock=clock,
            redis=redis,
            fake=fake,
            pager=Pager(fake, sms_webhook_url=f"{public_url}/twilio/sms"),
            service=service,
            client=client,
            config=notification_deps.config,
            incidents=incidents if isinstance(incidents, IncidentsService) else None,
        )
        paging.pager.settle = paging.settle
        yield paging
        await paging.settle()


async def _close_peers(deps: ServiceDeps) -> None:
    if deps.peers is not None:
        await deps.peers.close()
