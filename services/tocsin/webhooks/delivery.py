"""Delivering incident events to webhook subscriptions and status updates to stakeholders.

Two loops, apart from paging (own consumer group, own tasks, own HTTP client):

- `Router.handle` is the handler of the "webhooks" consumer group of the incident-events
  streams: for each event it queues one delivery per subscription that selects it, in
  the incident's queue of that subscription (store.enqueue: a re-read entry is queued
  once), and returns; the stream entry is acknowledged after that. It talks to Redis
  only, so a slow receiver never holds the stream back.
- `Deliverer` claims due incident queues per subscription (store.claim: a lease, so one
  delivery per incident at a time, which keeps each incident's order) and sends each
  claimed queue's head. 2xx: the head is removed and the queue's next event is due at
  once. Anything else (no connection, a timeout, any HTTP status): logged, and tried
  again after `domain.retry_delay_ms` (10 s, 30 s, ... every 30 min) until a day after
  the first failure, then given up (logged GAVE_UP) and the next event goes. At most
  `concurrency` deliveries per subscription run at once, so a slow or dead receiver ties
  up only its own subscription's slots, and other incidents of it are not behind one
  failing incident's backoff.

At least once: a head is removed only after a 2xx; a process killed mid-delivery leaves
its claim to expire (`lease_ms`, longer than the HTTP timeout) and the event is sent
again, with the same `event_id` and body. Receivers de-duplicate by event id.
"""

from __future__ import annotations

import asyncio
import functools
import html
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from tocsin.notification.channels import ChannelRegistry, Message
from tocsin.notification.channels.webhook import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    post_once,
    safe_url,
    sign,
)
from tocsin.notification.contacts import ContactStore
from tocsin.notification.providers import ProviderError
from tocsin.runtime.clock import Clock
from tocsin.runtime.loops import WorkerHealth, run_loop, wait_or_timeout
from tocsin.runtime.metrics import WEBHOOK_DELIVERIES
from tocsin.v1 import incidents_pb2, notification_pb2, webhooks_pb2
from tocsin.webhooks import domain
from tocsin.webhooks.domain import Queued
from tocsin.webhooks.store import Head, WebhookStore, subscription_dest, webhook_dest

log = logging.getLogger(__name__)

GROUP = "webhooks"
_OUTCOMES = {
    webhooks_pb2.DELIVERY_OUTCOME_DELIVERED: "delivered",
    webhooks_pb2.DELIVERY_OUTCOME_RETRYING: "retrying",
    webhooks_pb2.DELIVERY_OUTCOME_GAVE_UP: "gave_up",
}
WEBHOOK_ID_HEADER = "X-Tocsin-Webhook-Id"
_OUT = webhooks_pb2


@dataclass(frozen=True)
class DeliveryOptions:
    lease_ms: int = 60_000
    """How long a claimed queue is held: longer than `http_timeout_s`, so a live
    deliverer's request ends before another may send the same head."""
    http_timeout_s: float = 10.0
    concurrency: int = 8
    """Deliveries in flight per subscription."""
    poll_s: float = 1.0
    """How often due retries are looked for (new events wake the loop at once)."""
    max_retry_age_ms: int = domain.MAX_RETRY_AGE_MS


class Router:
    """The consumer group's handler: queue each event for every subscription taking it."""

    def __init__(
        self,
        store: WebhookStore,
        clock: Clock,
        public_url: str,
        on_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.public_url = public_url
        self.on_queued = on_queued

    async def handle(self, event: incidents_pb2.IncidentEvent) -> None:
        if not event.incident.id or event.kind not in domain.EVENT_TYPES:
            return
        hooks = [
            w for w in (await self.store.routing_webhooks()).values() if domain.selects(w, event)
        ]
        subs: list[webhooks_pb2.Subscription] = []
        if event.kind == incidents_pb2.INCIDENT_EVENT_KIND_STATUS_UPDATE:
            candidates = await self.store.updates_for(event.incident.service_id, event.incident.id)
            subs = [s for s in candidates if domain.subscription_selects(s, event)]
        elif event.kind == incidents_pb2.INCIDENT_EVENT_KIND_RESOLVED:
            # Its stakeholder subscriptions expire with it (store.py).
            await self.store.incident_resolved(event.incident.id, self.clock.now_ms())
        if not hooks and not subs:
            return
        item = Queued(
            event_id=domain.event_id(event.incident.id, event.event_id),
            event_type=domain.event_type(event.kind),
            incident_id=event.incident.id,
            body=domain.render_event(event, self.public_url),
            text=event.note,
            summary=event.incident.summary,
            label=domain.incident_label(event.incident),
        )
        now = self.clock.now_ms()
        queued = False
        for hook in hooks:
            queued |= await self.store.enqueue(webhook_dest(hook.id), event.event_id, item, now)
        for sub in subs:
            queued |= await self.store.enqueue(subscription_dest(sub.id), event.event_id, item, now)
        if queued:
            self.on_queued()


Target = webhooks_pb2.Webhook | webhooks_pb2.Subscription


class Deliverer:
    def __init__(
        self,
        store: WebhookStore,
        clock: Clock,
        channels: ChannelRegistry,
        contacts: ContactStore,
        public_url: str,
        options: DeliveryOptions | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.channels = channels
        self.contacts = contacts
        self.public_url = public_url
        self.options = options or DeliveryOptions()
        self.wake = asyncio.Event()
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(self.options.http_timeout_s),
            follow_redirects=False,
            trust_env=False,
        )
        self._inflight: dict[str, set[asyncio.Task[None]]] = {}

    # -- the loop ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, health: WorkerHealth) -> None:
        guard = health.guard("webhook deliverer", stop)

        async def pause() -> None:
            await wait_or_timeout(self.wake, self.options.poll_s)

        try:
            await run_loop(guard, stop, self.start_due, pause)
        finally:
            await self.cancel()

    async def start_due(self) -> int:
        """Claim every subscription's due queues (up to its free slots) and start their
        deliveries; how many started."""
        self.wake.clear()
        started = 0
        for dest, target in await self._targets():
            free = self.options.concurrency - len(self._inflight.get(dest, ()))
            claimed = await self.store.claim(dest, self.clock.now_ms(), self.options.lease_ms, free)
            for incident_id in claimed:
                running = self._inflight.setdefault(dest, set())
                task = asyncio.create_task(self._deliver_logged(dest, target, incident_id))
                running.add(task)
                task.add_done_callback(functools.partial(self._finished, dest))
                started += 1
        return started

    async def deliver_due(self) -> int:
        """Deliver until nothing is due now (for tests driving a ManualClock)."""
        total = 0
        while True:
            started = await self.start_due()
            await self.idle()
            total += started
            if not started:
                return total

    async def idle(self) -> None:
        while tasks := [t for running in self._inflight.values() for t in running]:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def cancel(self) -> None:
        tasks = [t for running in self._inflight.values() for t in running]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        await self.cancel()
        await self._http.aclose()

    def _finished(self, dest: str, task: asyncio.Task[None]) -> None:
        running = self._inflight.get(dest)
        if running is not None:
            running.discard(task)
            if not running:
                del self._inflight[dest]
        self.wake.set()  # a slot is free, and the queue's next event may be due

    async def _targets(self) -> list[tuple[str, Target]]:
        """The busy destinations with their subscription; a destination whose
        subscription is gone, or with nothing due or held, is unmarked."""
        found: list[tuple[str, Target]] = []
        for dest in await self.store.busy():
            kind, _, target_id = dest.partition(":")
            target: Target | None = (
                await self.store.webhook(target_id)
                if kind == "wh"
                else await self.store.subscription(target_id, self.clock.now_ms())
            )
            if target is None:
                await self.store.drop_destination(dest)
            elif self._inflight.get(dest) or not await self.store.settle_idle(dest):
                found.append((dest, target))
        return found

    # -- one delivery --------------------------------------------------------------------

    async def _deliver_logged(self, dest: str, target: Target, incident_id: str) -> None:
        try:
            await self.deliver(dest, target, incident_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Redis unreachable, say: the claim runs out and the head is sent again.
            log.exception("%s: delivering incident %s's next event failed", dest, incident_id)

    async def deliver(self, dest: str, target: Target, incident_id: str) -> None:
        """Send the head of one claimed incident queue and record the outcome."""
        head = await self.store.head(dest, incident_id)
        now = self.clock.now_ms()
        if head is None:
            await self.store.complete(
                dest, incident_id, "", done=True, now_ms=now, next_ms=now, record=None
            )
            return
        item = head.item
        attempt = head.failures + 1
        status, error, retry_after = 0, "", None
        try:
            status = await self._send(target, item)
        except ProviderError as failure:
            status = failure.http_status or 0
            error = str(failure)
            retry_after = failure.retry_after_s
        except Exception as failure:  # a bug or an unexpected library error: retry later
            error = f"{type(failure).__name__}"
            log.exception("%s: event %s could not be sent", dest, item.event_id)
        now = self.clock.now_ms()
        record = _OUT.Delivery(
            event_id=item.event_id,
            incident_id=incident_id,
            event_type=item.event_type,
            http_status=status,
            error=error,
            attempt=attempt,
        )
        record.at.FromMilliseconds(now)
        if not error:
            record.outcome = _OUT.DELIVERY_OUTCOME_DELIVERED
            await self._complete(dest, incident_id, head, True, now, now, record)
            return
        first = head.first_failure_ms if head.first_failure_ms is not None else now
        if now - first >= self.options.max_retry_age_ms:
            record.outcome = _OUT.DELIVERY_OUTCOME_GAVE_UP
            log.error(
                "%s: gave up on event %s after %d attempts: %s", dest, item.event_id, attempt, error
            )
            await self._complete(dest, incident_id, head, True, now, now, record)
            return
        next_ms = now + domain.retry_delay_ms(attempt, retry_after)
        record.outcome = _OUT.DELIVERY_OUTCOME_RETRYING
        record.next_attempt_at.FromMilliseconds(next_ms)
        log.warning(
            "%s: event %s attempt %d failed (%s); next in %ds",
            dest,
            item.event_id,
            attempt,
            error,
            (next_ms - now) // 1000,
        )
        await self._complete(dest, incident_id, head, False, now, next_ms, record)

    async def _complete(
        self,
        dest: str,
        incident_id: str,
        head: Head,
        done: bool,
        now: int,
        next_ms: int,
        record: webhooks_pb2.Delivery,
    ) -> None:
        await self.store.complete(
            dest, incident_id, head.raw, done=done, now_ms=now, next_ms=next_ms, record=record
        )
        outcome = _OUTCOMES.get(record.outcome, "unknown")
        WEBHOOK_DELIVERIES.add(1, {"kind": dest.partition(":")[0], "outcome": outcome})

    async def _send(self, target: Target, item: Queued) -> int:
        """One attempt; the HTTP status (200 for channels without one) or ProviderError."""
        if isinstance(target, webhooks_pb2.Webhook):
            return await self.post_signed(target, item.event_id, item.body)
        return await self._send_update(target, item)

    async def post_signed(self, webhook: webhooks_pb2.Webhook, event_id: str, body: bytes) -> int:
        """One signed POST of `body` to a webhook subscription (channels/webhook.py's
        signature: the same header, the same HMAC, with this subscription's secret)."""
        timestamp = int(time.time())  # the receiver's clock judges it: wall time
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "tocsin-webhook/1",
            EVENT_ID_HEADER: event_id,
            WEBHOOK_ID_HEADER: webhook.id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(webhook.secret, timestamp, body),
        }
        await post_once(self._http, webhook.url, body, headers, event_id)
        return 200

    async def _send_update(self, sub: webhooks_pb2.Subscription, item: Queued) -> int:
        """A status update to a stakeholder through the channel its type names."""
        kind = sub.subscriber_type
        address = sub.address
        channel_type: int
        if kind == _OUT.SUBSCRIBER_TYPE_USER:
            channel_type, address = await self._user_address(sub.address)
        elif kind == _OUT.SUBSCRIBER_TYPE_EMAIL:
            channel_type = notification_pb2.CONTACT_METHOD_TYPE_EMAIL
        elif kind == _OUT.SUBSCRIBER_TYPE_SLACK_CHANNEL:
            channel_type = notification_pb2.CONTACT_METHOD_TYPE_SLACK
        else:
            channel_type = notification_pb2.CONTACT_METHOD_TYPE_WEBHOOK
        channel = self.channels.find(channel_type)
        if channel is None:
            raise ProviderError(
                f"no {domain.SUBSCRIBER_NAMES.get(kind, 'such')} channel is configured",
                permanent=False,
                retryable=True,
            )
        if channel_type == notification_pb2.CONTACT_METHOD_TYPE_WEBHOOK:
            message = Message(item.body.decode())
        else:
            message = render_update(item, self.public_url)
        await channel.send(address, message, f"status-{item.event_id}")
        return 200

    async def _user_address(self, user_id: str) -> tuple[int, str]:
        """A user's first email contact method, else their first Slack one."""
        settings = await self.contacts.settings(user_id)
        methods = list(settings.contact_methods) if settings is not None else []
        for wanted in (
            notification_pb2.CONTACT_METHOD_TYPE_EMAIL,
            notification_pb2.CONTACT_METHOD_TYPE_SLACK,
        ):
            for method in methods:
                if method.type == wanted:
                    return wanted, method.address
        raise ProviderError(
            f"user {user_id} has no email or Slack contact method",
            permanent=False,
            retryable=True,
        )


def render_update(item: Queued, public_url: str) -> Message:
    """A status update as an email / Slack message."""
    url = f"{public_url}/incidents/{item.incident_id}"
    title = f"{item.label or 'id ' + item.incident_id} {item.summary}".strip()
    text = f"Status update on incident {title}:\n\n{item.text}\n\n{url}\n"
    body_html = (
        "<!DOCTYPE html><html><body>"
        f"<p>Status update on incident <b>{html.escape(title)}</b>:</p>"
        f"<p>{html.escape(item.text).replace(chr(10), '<br>')}</p>"
        f'<p><a href="{html.escape(url)}">{html.escape(url)}</a></p>'
        "</body></html>"
    )
    return Message(text, subject=f"[tocsin] status update: {title}", html=body_html)


def describe_url(url: str) -> str:
    """A webhook URL as it may appear in output: scheme and host."""
    return safe_url(url)
