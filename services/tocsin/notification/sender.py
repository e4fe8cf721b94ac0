"""Sending pages: fire a rule's timer, call the provider once, record what happened.

The order is what keeps "never twice for the same rule": the attempt is recorded SENDING
and the timer completed in one script (store.fire) BEFORE the provider is called, then
SENT / FAILED / UNKNOWN after. A process that dies in between leaves a SENDING attempt
and no timer, so nothing resends it; the sweep marks it UNKNOWN. Retries are only for
errors where Twilio said it did not process the request (429, 5xx, no connection); an
unknown outcome (timeout after the request left) is recorded, not retried.

A throttle must not lose the page: a few quick retries happen in process (seconds,
honouring Retry-After), then the rule's own timer is re-armed for the next try
(lua/retry_later.lua: the unsent attempt is removed and the timer armed in one step), with
backoff and Retry-After, for as long as the page matters: until the user's next rule or
the escalation's next level is due (Notify's next_level_at), whichever comes first, and at
least `retry_window_ms` (a minute). No process holds a send slot meanwhile, and one that
dies loses nothing.

A rule whose contact method cannot be used (deleted, STOPped) or whose send failed (refused
for good: invalid number, unreachable, opted out; or still refused after every retry)
moves on to the user's next rule at once: the person must be reached some other way, not
5 minutes later. An unknown outcome does not: the page may well have arrived, and the
later rules still run at their time. Twilio's 21610 (the person replied STOP) also marks
their SMS contact methods disabled, as a STOP that reached us would. When no rule is left
(none waiting, every attempt failed) escalation is told the user cannot be reached
(ReportUnreachable), so a level nobody can answer moves on at once.

Once the first rule's page of a cycle has an outcome (sent, failed, unknown, or skipped
for a contact method that cannot be used), escalation is told that page went out
(ReportPageOut), if its Notify came from an escalation level (it named the next level's
time): the next level waits for it, so it never pages before this one
(escalation/domain.py). A throttled page retried later has not gone out yet.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tocsin.client.links import incident_link
from tocsin.notification import domain, pagemetrics
from tocsin.notification.channels import (
    Channel,
    ChannelRegistry,
    Message,
    PageContent,
    channel_name,
)
from tocsin.notification.contacts import ContactStore
from tocsin.notification.domain import AttemptLocation, TimerPayload
from tocsin.notification.fairslots import FairSlots
from tocsin.notification.peers import EscalationPeer, IncidentsPeer
from tocsin.notification.providers import (
    ProviderError,
    Route,
    SendResult,
    counts_against_provider,
    fails_over,
    route_order,
    send_with_retry,
)
from tocsin.notification.ratelimit import RateLimiter
from tocsin.notification.records import CycleRule
from tocsin.notification.store import Fired, PagingStore, SendNow
from tocsin.runtime.clock import Clock
from tocsin.runtime.events import incident_shard
from tocsin.runtime.report_outbox import ReportOutbox
from tocsin.runtime.telemetry import context_from_traceparent
from tocsin.runtime.timers import ClaimedTimer
from tocsin.v1 import escalation_pb2, notification_pb2, scheduling_pb2

log = logging.getLogger(__name__)

UNREACHABLE_DELETED = "contact method deleted"
UNREACHABLE_DISABLED = "contact method disabled (STOP)"
UNKNOWN_OUTCOME = "no answer from the provider; not resent"


MAX_DETAILS_CHARS = 4000
SERVICE_QUEUE = "service:"
"""The send-slot queue of a Notify's pages is this + its incident's service id."""
TIMER_QUEUE = "timers"
"""The send-slot queue of pages fired by the timer worker."""


def details_text(details: struct_pb2.Struct) -> str:
    """An alert's details as indented JSON for a page ("" when none), cut to fit."""
    if not details.fields:
        return ""
    text = json.dumps(MessageToDict(details), indent=2, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= MAX_DETAILS_CHARS else text[: MAX_DETAILS_CHARS - 3] + "..."


def channel_routes(channel: Channel) -> tuple[Route, ...]:
    """The phone providers of a channel that has them, in the order to try now (each
    circuit breaker consulted); () for a channel with a single way out."""
    routes = getattr(channel, "routes", None)
    return tuple(route_order(list(routes))) if routes else ()


def unhandled_type_reason(channel_type: int) -> str:
    return f"no channel sends contact type {channel_name(channel_type)} ({channel_type})"


@dataclass(frozen=True)
class SenderOptions:
    public_url: str
    link_secret: str = ""
    """Signs the incident links pages carry (the service credential); "" = no links
    (TOCSIN_PUBLIC_URL not set, so no address a phone could open)."""
    lease_ms: int = 30_000
    """How long a claimed rule timer is ours before another worker may fire it."""
    retry_attempts: int = 5
    retry_base_delay_s: float = 0.2
    retry_max_delay_s: float = 5.0
    max_pages_in_flight: int = 64
    """Rule pages handled at once; more wait their turn (queued, never dropped), in a
    queue per service taken round robin (fairslots.py), so one service's storm of pages
    does not hold back another service's first pages. Bounds what a burst asks of
    Redis's connection pool (512 per process) and Twilio's HTTP pool (100). A slot is
    held from before the cycle's script through the provider request and the two writes
    after it, four steps one after another: at 16, on two saturated cores, the slots
    were the stack's first queue (level 0 fired at p50 13 ms, its SMS at 750 ms;
    BENCHMARKS.md, "Send slots")."""
    retry_window_ms: int = 60_000
    """How long after its first refusal a throttled (or 5xx, not connected) rule page is
    at least retried from its timer before it counts as failed (longer until the next rule
    or level is due: see domain.retry_deadline)."""
    later_base_delay_s: float = 2.0
    later_max_delay_s: float = 15.0
    """Backoff between the timer's retries (doubling, jittered; Retry-After if longer)."""


@dataclass(frozen=True)
class Page:
    """One message or call to send, with everything needed to record and trace it."""

    location: AttemptLocation
    method: notification_pb2.ContactMethod
    channel: Channel
    user_id: str
    rule_index: int
    traceparent: str
    message: Message
    incident_id: str = ""
    routes: tuple[Route, ...] = ()
    """The phone providers to try in order (the first is named in the SENDING record);
    empty for a channel with no choice of provider."""
    created_ms: int = 0
    """When the page's incident was created (ms; 0: not known, looked up for the metric)."""
    report_key: str = ""
    """The Notify key the page's level awaits the page-out report with (rule 0 of a
    level's cycle; '' = none, or not known here): on one Redis server the report is
    queued with SENT (`_record_sent`)."""

    @property
    def attempt_id(self) -> str:
        return self.location.attempt_id


@dataclass
class ReadyNow:
    """What `Sender.ready_now` prepared for the rules due now of a Notify."""

    rules: dict[int, SendNow] = field(default_factory=dict)
    """Rule index -> how the cycle's script records it SENDING; each holds a send slot."""
    routes: dict[int, tuple[Route, ...]] = field(default_factory=dict)
    """Rule index -> the providers to try, in order (the first named in the record)."""
    reserved: dict[int, int] = field(default_factory=dict)
    """Rule index -> the rate-limit slot (clock ms) reserved for its page."""
    service_name: str = ""
    carried: domain.IncidentWords | None = None
    """Notify's words, if fresh: what the page says when the mirror does not hold them."""
    slots: FairSlots | None = None
    """Where the send slots of `rules` were taken (None: none were)."""
    _held: int = 0

    def hold(self, slots: FairSlots, index: int, send: SendNow, routes: tuple[Route, ...]) -> None:
        """Rule `index` goes at once, in a send slot just taken from `slots`."""
        self.slots = slots
        self.rules[index] = send
        self.routes[index] = routes
        self._held += 1

    def use(self, index: int) -> bool:
        """Whether rule `index` holds a slot, which the caller now owns (and releases)."""
        if index not in self.rules or self._held == 0:
            return False
        self._held -= 1
        return True

    def release(self) -> None:
        """Give back the slots no rule used (no cycle started, or after `fire_now`)."""
        while self._held and self.slots is not None:
            self._held -= 1
            self.slots.release()


class Sender:
    def __init__(
        self,
        store: PagingStore,
        contacts: ContactStore,
        limiter: RateLimiter,
        channels: ChannelRegistry,
        incidents: IncidentsPeer,
        clock: Clock,
        options: SenderOptions,
        *,
        tracer: trace.Tracer | None = None,
        escalation: EscalationPeer | None = None,
    ) -> None:
        self.store = store
        self.contacts = contacts
        self.limiter = limiter
        self.channels = channels
        self.incidents = incidents
        self.escalation = escalation or EscalationPeer(incidents.client, ReportOutbox(store.redis))
        self.clock = clock
        self.options = options
        self.tracer = tracer or trace.get_tracer("tocsin.notification")
        self.on_rearm: Callable[[], None] = lambda: None
        """Called after a timer was put back for a rate-limit slot (wakes the worker)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = FairSlots(options.max_pages_in_flight)

    # -- background work --------------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, object], what: str) -> None:
        """Run `work` in the background; `idle()` waits for it, errors are logged."""

        async def guarded() -> None:
            try:
                await work
            except Exception:
                log.exception("%s failed", what)

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def idle(self) -> None:
        """Wait until every background send (and what it started) has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Let in-flight sends finish (their outcome gets recorded), then cancel the rest."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- rules --------------------------------------------------------------------------

    async def ready_now(
        self,
        rules: Sequence[CycleRule],
        methods: dict[str, notification_pb2.ContactMethod],
        service_id: str,
        words: domain.IncidentWords | None,
        rate_slots: dict[tuple[int, str], list[int]] | None = None,
    ) -> ReadyNow:
        """Before a Notify's cycle is started: the rules due now whose page can be
        recorded SENDING by the script that starts the cycle (store.SendNow), so it goes
        with no round trip of its own. Such a rule has everything it needs at hand, as
        `_fire_mirrored` would before SENDING: a usable contact method of a channel that
        shows no details, its rate-limit slot (reserved here, as `_fire` would: a slot
        later than now leaves the rule to be fired the usual way, re-armed for that slot
        with no second reservation), the service's name (cached, or looked up now) and
        a send slot, taken here without waiting (none free: the rule is fired the usual
        way, queued for a slot). The caller passes the result to `fire_now`, or
        `release`s it if no cycle started (a repeated Notify: a slot reserved for it
        stays taken, which at worst spaces that number's next page one interval later).
        `rate_slots`, (channel, address) -> slots, holds the rate-limit slots this
        Notify already reserved: a second try of the same Notify (its copy of the
        settings was stale) uses them, each once, instead of reserving again, which
        would put its page one interval later; it is left holding this try's."""
        ready = ReadyNow()
        if not service_id:
            return ready
        earlier = {k: list(v) for k, v in (rate_slots or {}).items()}
        used: dict[tuple[int, str], list[int]] = {}
        candidates: list[tuple[int, notification_pb2.ContactMethod, Channel]] = []
        for index, rule in enumerate(rules):
            method = methods.get(rule.contact_method_id)
            if rule.delay_ms != 0 or method is None or method.disabled:
                continue
            channel = self.channels.find(method.type)
            if channel is None or channel.wants_details:
                continue
            if self.limiter.enabled and channel.rate_limited:
                key = (method.type, method.address)
                mine = earlier.get(key)
                slot = mine.pop(0) if mine else None
                if slot is None:
                    slot = await self.limiter.reserve(method.type, method.address)
                used.setdefault(key, []).append(slot)
                ready.reserved[index] = slot
                if slot > self.clock.now_ms():
                    continue
            candidates.append((index, method, channel))
        if rate_slots is not None:
            rate_slots.clear()
            rate_slots.update(used)
        if not candidates:
            return ready
        ready.service_name = await self.incidents.service_name(service_id)
        now = self.clock.now_ms()
        ready.carried = words if words is not None and words.fresh(now) else None
        mode = "mirror" if ready.carried is not None else "mirrored"
        for index, method, channel in candidates:
            if not self._in_flight.try_acquire():
                break
            routes = channel_routes(channel)
            send = SendNow(method.id, method.type, mode, provider=routes[0].name if routes else "")
            ready.hold(self._in_flight, index, send, routes)
        return ready

    def fire_now(
        self,
        claimed: Sequence[ClaimedTimer],
        methods: dict[str, notification_pb2.ContactMethod],
        service_id: str = "",
        words: domain.IncidentWords | None = None,
        fired: Sequence[Fired | None] = (),
        ready: ReadyNow | None = None,
    ) -> None:
        """The fast path after Notify: fire the timers its script claimed for us, in the
        background, without waiting for a worker's poll; queued for a send slot with the
        other pages of the incident's service (`service_id`, "" when not known); `words`
        the incident's, as Notify carried them (None: not carried). `fired` (one per
        claim, None for a rule not asked) is what the script decided for the rules
        `ready` asked it to send at once: those recorded SENDING are sent now in the
        slots `ready` holds; those it left claimed are fired in them."""
        ready = ready or ReadyNow()
        try:
            for i, timer in enumerate(claimed):
                payload = TimerPayload.decode(timer.payload)
                method = methods.get(payload.contact_method_id)
                decided = fired[i] if i < len(fired) else None
                if decided is not None and method is not None and ready.use(payload.rule_index):
                    work = self._send_decided(
                        timer, payload, method, service_id, words, decided, ready
                    )
                    self.spawn(self._in_slot(work), f"page {timer.timer_id}")
                    continue
                reserved = ready.reserved.get(payload.rule_index)
                self.spawn(
                    self._fire_held(timer, method, service_id, words, reserved),
                    f"page {timer.timer_id}",
                )
        finally:
            ready.release()  # the slots of rules the script did not fire

    async def _fire_held(
        self,
        timer: ClaimedTimer,
        method: notification_pb2.ContactMethod | None,
        service_id: str,
        words: domain.IncidentWords | None,
        reserved: int | None = None,
    ) -> None:
        async with self._in_flight.slot(SERVICE_QUEUE + service_id):
            await self._fire(timer, method, service_id, words, reserved=reserved)

    async def _in_slot(self, work: Awaitable[None]) -> None:
        """Run `work` in a send slot taken already (ready_now), then give it back."""
        try:
            await work
        finally:
            self._in_flight.release()

    async def _send_decided(
        self,
        timer: ClaimedTimer,
        payload: TimerPayload,
        method: notification_pb2.ContactMethod,
        service_id: str,
        words: domain.IncidentWords | None,
        fired: Fired,
        ready: ReadyNow,
    ) -> None:
        """A rule the cycle's script fired (ready_now): send it if it was recorded
        SENDING, else go on the usual way from where the script left it."""
        channel = self.channels.find(method.type)
        assert channel is not None  # ready_now found it
        routes = ready.routes[payload.rule_index]
        if fired.outcome in ("unmirrored", "check"):
            await self._fire(
                timer,
                method,
                service_id,
                words,
                routes=routes,
                tried=fired.outcome,
                reserved=ready.reserved.get(payload.rule_index),
            )
            return
        if fired.outcome != "send":
            log.debug("rule %s not sent: %s", payload.attempt_id, fired.outcome)
            return
        await self._send_mirrored(
            payload, method, channel, fired, service_id, ready.service_name, ready.carried, routes
        )

    async def fire(self, timer: ClaimedTimer) -> None:
        """Handle one claimed rule timer (the TimerWorker's handler: later rules, retries,
        and fast-path pages whose process died). They queue for a send slot in a queue of
        their own, taken in turn with each service's first pages."""
        async with self._in_flight.slot(TIMER_QUEUE):
            await self._fire(timer)

    async def _fire(
        self,
        timer: ClaimedTimer,
        method: notification_pb2.ContactMethod | None = None,
        service_id: str = "",
        words: domain.IncidentWords | None = None,
        *,
        routes: tuple[Route, ...] | None = None,
        tried: str = "",
        reserved: int | None = None,
    ) -> None:
        """`method` is the contact method if the caller has just read it; `service_id` the
        incident's service if the caller knows it (Notify's), which lets the page take its
        words from the script that records it (`_fire_mirrored`), or from `words` (Notify's
        too) when the mirror does not hold the incident yet. `tried`: what the cycle's
        script answered when it tried this fast way already ('unmirrored' or 'check',
        nothing written), with the `routes` it was given; `reserved`: the rate-limit slot
        `ready_now` reserved for this rule (none is reserved again)."""
        payload = TimerPayload.decode(timer.payload)
        if method is None:
            method = await self.contacts.contact_method(payload.user_id, payload.contact_method_id)
        channel = self.channels.find(method.type) if method is not None else None
        if method is None or method.disabled or channel is None:
            if method is None:
                reason = UNREACHABLE_DELETED
            elif method.disabled:
                reason = UNREACHABLE_DISABLED
            else:
                reason = unhandled_type_reason(method.type)
            fired = await self.store.fire(timer, payload, payload.channel, "unreachable", reason)
            if fired.outcome == "unreachable":
                pagemetrics.page(payload.channel, "unreachable")
                self._timeline_attempt(
                    payload.incident_id,
                    payload.attempt_id,
                    payload.channel,
                    payload.user_id,
                    payload.contact_method_id,
                    "skipped",
                    reason,
                )
                self._report_out(payload)
                await self._fire_rule(payload, fired.next_rule)
                if fired.next_rule < 0:
                    await self._report_if_spent(payload, reason)
            return
        if payload.slot_ms is None and self.limiter.enabled and channel.rate_limited:
            slot = (
                reserved
                if reserved is not None
                else await self.limiter.reserve(method.type, method.address)
            )
            if slot > self.clock.now_ms():
                if await self.store.rearm(timer, slot, payload.with_slot(slot)):
                    self.on_rearm()
                return
        # Every lookup the page needs happens BEFORE the attempt is recorded SENDING: a
        # process that dies between SENDING and the provider's call loses that page (the
        # sweep marks it UNKNOWN, never resends), so nothing may wait in that window.
        if routes is None:
            routes = channel_routes(channel)
        provider = routes[0].name if routes else ""
        unmirrored = tried == "unmirrored"
        if service_id and not channel.wants_details and not tried:
            slow = await self._fire_mirrored(
                timer, payload, method, channel, service_id, routes, provider, words
            )
            if slow is None:
                return
            unmirrored = slow == "unmirrored"
        content = await self._page_content(payload, channel, read_mirror=not unmirrored)
        if content is None:
            fired = await self.store.fire(timer, payload, method.type, "skip")
            if fired.outcome == "skip":
                pagemetrics.page(method.type, "skipped")
            return
        fired = await self.store.fire(timer, payload, method.type, "mirror", provider=provider)
        if fired.outcome == "check":
            fired = await self._fire_after_check(timer, payload, method.type, provider)
        if fired.outcome != "send":
            log.debug("rule %s not sent: %s", payload.attempt_id, fired.outcome)
            return
        await self._send_rule(payload, method, channel, fired, content, routes)

    async def _fire_mirrored(
        self,
        timer: ClaimedTimer,
        payload: TimerPayload,
        method: notification_pb2.ContactMethod,
        channel: Channel,
        service_id: str,
        routes: tuple[Route, ...],
        provider: str,
        words: domain.IncidentWords | None,
    ) -> str | None:
        """The first page's fast way: the script that records the attempt SENDING also
        hands back the page's words from the status mirror (summary, number, creation),
        so nothing is read before it; the service's name is known before it (cached, or
        looked up now). When the mirror does not hold the incident yet, the page says what
        `words` say if they are fresh (`IncidentWords.fresh`: Notify carried them for a
        young incident). None when done; else the script wrote nothing and the page must
        go the slow way: "unmirrored" (the mirror does not hold the incident and no fresh
        words came) or "check" (the mirror says it stopped). (`ready_now` takes this way
        inside the script that starts the cycle.)"""
        name = await self.incidents.service_name(service_id)  # before SENDING: may ask
        carried = words if words is not None and words.fresh(self.clock.now_ms()) else None
        mode = "mirror" if carried is not None else "mirrored"
        fired = await self.store.fire(timer, payload, method.type, mode, provider=provider)
        if fired.outcome in ("unmirrored", "check"):
            return fired.outcome
        if fired.outcome != "send":
            log.debug("rule %s not sent: %s", payload.attempt_id, fired.outcome)
            return None
        await self._send_mirrored(
            payload, method, channel, fired, service_id, name, carried, routes
        )
        return None

    async def _send_mirrored(
        self,
        payload: TimerPayload,
        method: notification_pb2.ContactMethod,
        channel: Channel,
        fired: Fired,
        service_id: str,
        name: str,
        carried: domain.IncidentWords | None,
        routes: tuple[Route, ...],
    ) -> None:
        """Send a page recorded SENDING by the fast way, in the words the script handed
        back from the mirror, or in `carried` when the mirror did not hold them yet."""
        if fired.service_id and fired.service_id != service_id:  # not expected: no lookup
            name = self.incidents.cached_service_name(fired.service_id) or fired.service_id
        summary, number, created_ms = fired.summary, fired.number, fired.created_ms
        if not summary and carried is not None:  # the mirror did not hold it yet
            summary, number, created_ms = carried.summary, carried.number, carried.created_ms
        content = self._content(payload, summary, name, number, created_ms)
        await self._send_rule(payload, method, channel, fired, content, routes)

    def _content(
        self,
        payload: TimerPayload,
        summary: str,
        service: str,
        number: int,
        created_ms: int,
        details: str = "",
    ) -> PageContent:
        return PageContent(
            incident_id=payload.incident_id,
            service=service or "tocsin",
            summary=summary,
            reply_code="",
            attempt_id=payload.attempt_id,
            public_url=self.options.public_url,
            details=details,
            number=number,
            created_ms=created_ms,
            link=(
                incident_link(self.options.public_url, self.options.link_secret, number)
                if number and self.options.link_secret
                else ""
            ),
        )

    async def _page_content(
        self, payload: TimerPayload, channel: Channel, *, read_mirror: bool = True
    ) -> PageContent | None:
        """What the page says, read before anything is recorded: the summary and service
        from the status mirror (or, while the incident-events consumer has not mirrored
        the incident yet, from the incidents service), the service's name and, for a
        channel that shows them, the alert's details (summary "" when it cannot be had:
        the script's mirror may know it by then). None when the incidents service
        says the incident is no longer triggered (the rule is recorded SKIPPED).
        `read_mirror` False: the mirror was just found empty; ask the incidents service."""
        incident_id = payload.incident_id
        summary, service_id, number, created_ms = (
            await self.store.incident_page_info(incident_id) if read_mirror else ("", "", 0, 0)
        )
        incident = None
        if not summary:
            incident = await self.incidents.get_incident(
                incident_id, include_alerts=channel.wants_details
            )
            if incident is not None:
                await self.store.apply_incident(incident)
                if incident.status in domain.STOPPED_STATUSES:
                    return None
                summary, service_id = incident.summary, incident.service_id
                number = incident.number
                if incident.HasField("created_at"):
                    created_ms = incident.created_at.ToMilliseconds()
        service = await self.incidents.service_name(service_id)
        details = ""
        if channel.wants_details:
            if incident is None:
                incident = await self.incidents.get_incident(incident_id, include_alerts=True)
            alerts = incident.alerts if incident is not None else []
            details = details_text(alerts[0].details) if alerts else ""
        return self._content(payload, summary, service, number, created_ms, details)

    async def _fire_after_check(
        self, timer: ClaimedTimer, payload: TimerPayload, channel: int, provider: str
    ) -> Fired:
        """The mirror says the incident stopped: ask incidents before skipping, since an
        incident triggered again (snooze ended, reassigned) may be newer than the mirror.
        If incidents cannot be reached, send: a page too many beats a lost one."""
        incident = await self.incidents.get_incident(payload.incident_id)
        stopped = incident is not None and incident.status in domain.STOPPED_STATUSES
        fired = await self.store.fire(
            timer, payload, channel, "skip" if stopped else "send", provider=provider
        )
        if incident is not None:
            await self.store.apply_incident(incident)
        return fired

    async def _send_rule(
        self,
        payload: TimerPayload,
        method: notification_pb2.ContactMethod,
        channel: Channel,
        fired: Fired,
        content: PageContent,
        routes: tuple[Route, ...] = (),
    ) -> None:
        """Send a page recorded SENDING: no lookup here (see `_page_content`), only the
        reply code the script just handed out."""
        location = AttemptLocation(payload.attempt_id, fired.incident_id, None)
        label = f"incident #{content.number}" if content.number else f"incident {fired.incident_id}"
        summary = content.summary or fired.summary or label
        content = replace(content, summary=summary, reply_code=fired.reply_code)
        page = Page(
            location,
            method,
            channel,
            fired.user_id,
            payload.rule_index,
            payload.traceparent,
            channel.render(content),
            fired.incident_id,
            routes,
            content.created_ms,
            (payload.awaited_key or "") if payload.rule_index == 0 else "",
        )
        rearmed = False

        async def retry_later(error: ProviderError) -> bool:
            nonlocal rearmed
            rearmed = await self._retry_later(payload, page, error)
            return rearmed

        # A retry from the timer is one request: the quick in-process ones were spent.
        attempts = 1 if payload.retry_until_ms is not None else self.options.retry_attempts
        error = await self.deliver(page, retry_later=retry_later, attempts=attempts)
        if rearmed:
            return
        if error is not None or not self._reported_with_sent(page):
            self._report_out(payload)
        if error is None or error.outcome_unknown:
            return
        if error.code == domain.OPTED_OUT_CODE and method.type == domain.SMS:
            await self.contacts.set_number_enabled(method.address, False)
        next_rule = await self.store.advance(payload, method.id)
        await self._fire_rule(payload, next_rule)
        if next_rule < 0:
            await self._report_if_spent(payload, f"{channel_name(method.type).upper()}: {error}")

    async def _retry_later(self, payload: TimerPayload, page: Page, error: ProviderError) -> bool:
        """Re-arm the rule's timer for another try of a send the provider did not process,
        while within the retry window; False when the window is over (it failed)."""
        now = self.clock.now_ms()
        deadline = payload.retry_until_ms
        if deadline is None:
            window = await self.store.retry_window(payload)
            if window is None:
                return False
            deadline = domain.retry_deadline(
                now,
                window.created_ms,
                window.delays_ms,
                payload.rule_index,
                window.level_due_ms,
                self.options.retry_window_ms,
            )
        if now >= deadline:
            return False
        ceiling = min(
            self.options.later_max_delay_s,
            self.options.later_base_delay_s * 2**payload.retries,
        )
        delay_s = max(ceiling / 2 + ceiling / 2 * random.random(), error.retry_after_s or 0.0)
        due = min(now + int(delay_s * 1000), deadline)
        retry = replace(payload, retry_until_ms=deadline, retries=payload.retries + 1)
        if not await self.store.retry_later(retry, due):
            return False
        self.on_rearm()
        log.info(
            "%s refused without being processed (%s); trying again in %.1f s",
            page.attempt_id,
            error,
            (due - now) / 1000,
        )
        if payload.retry_until_ms is None:
            self._timeline_attempt(
                page.incident_id,
                page.attempt_id,
                page.method.type,
                page.user_id,
                page.method.id,
                "refused for now",
                f"{error}; trying again for up to {(deadline - now) // 1000} s",
                error_code=error.code,
            )
        return True

    def _report_out(self, payload: TimerPayload) -> None:
        if payload.rule_index == 0:
            self.report_first_page_out(
                payload.incident_id,
                payload.cycle_id,
                payload.user_id,
                payload.traceparent,
                payload.awaited_key,
            )

    def report_first_page_out(
        self,
        incident_id: str,
        cycle_id: str,
        user_id: str,
        traceparent: str = "",
        awaited_key: str | None = None,
    ) -> None:
        """The cycle's first page went out (or failed, or its outcome became unknown):
        tell escalation, in the background, so the next level may follow (it waits for
        this, or for its bound). `awaited_key`: the key the level waits on, "" if none,
        None if not known (the cycle is read)."""
        out_ms = self.clock.now_ms()
        if awaited_key == "":
            return

        async def report() -> None:
            key = awaited_key
            if key is None:
                key = await self.store.awaited_key(incident_id, cycle_id)
            if not key:
                return
            with self.tracer.start_as_current_span(
                "notification.page_out",
                context=context_from_traceparent(traceparent),
                attributes={"incident.id": incident_id, "user.id": user_id},
            ):
                await self.escalation.report_page_out(incident_id, user_id, key, out_ms)

        self.spawn(report(), f"page-out report for {cycle_id}")

    async def _report_if_spent(self, payload: TimerPayload, reason: str) -> None:
        """No rule is left to reach the user with: tell escalation (which moves the level
        on once every user it paged is unreachable)."""
        key = await self.store.cycle_spent(payload)
        if key is None:
            return
        # In the background: the send slot is not held while escalation fires a level.
        self.spawn(
            self.escalation.report_unreachable(
                payload.incident_id,
                payload.user_id,
                key,
                f"every notification rule of {payload.user_id} failed (last: {reason})",
            ),
            f"unreachable report for {payload.cycle_id}",
        )

    async def _fire_rule(self, payload: TimerPayload, rule_index: int) -> None:
        """Fire rule `rule_index` of the cycle now (it was re-armed due now), if any."""
        if rule_index < 0:
            return
        shard = incident_shard(payload.incident_id)
        timer_id = domain.rule_attempt_id(payload.cycle_id, rule_index)
        claimed = await self.store.timers.claim(timer_id, shard, self.options.lease_ms)
        if claimed is not None:
            await self._fire(claimed)

    # -- test pages ---------------------------------------------------------------------

    async def test_page(self, user: scheduling_pb2.User) -> list[notification_pb2.Attempt]:
        """One test message or call through each of the user's contact methods."""
        settings = await self.contacts.settings(user.id)
        methods = settings.contact_methods if settings else []
        results = await asyncio.gather(*(self._test_one(user, m) for m in methods))
        return list(results)

    async def _test_one(
        self, user: scheduling_pb2.User, method: notification_pb2.ContactMethod
    ) -> notification_pb2.Attempt:
        channel = self.channels.find(method.type)
        routes = channel_routes(channel) if channel is not None else ()
        provider = routes[0].name if routes else ""
        attempt = await self.store.begin_test_attempt(user.id, method, provider)
        location = AttemptLocation(attempt.id, None, user.id)
        if method.disabled or channel is None:
            reason = UNREACHABLE_DISABLED if method.disabled else unhandled_type_reason(method.type)
            await self.store.update_attempt(location, domain.FAILED, provider_status=reason)
        else:
            message = channel.render_test(user.name or user.id)
            await self.deliver_outside_incident(location, method, channel, message, routes)
        return await self.store.attempt(location) or attempt

    async def deliver_outside_incident(
        self,
        location: AttemptLocation,
        method: notification_pb2.ContactMethod,
        channel: Channel,
        message: Message,
        routes: tuple[Route, ...] = (),
    ) -> ProviderError | None:
        """Send a test page or notice already recorded SENDING under its user, as a page
        goes: a phone channel waits for its rate-limit slot (the number's interval and the
        sender's rate), then `deliver` (spans, provider fail-over, quick retries, the
        outcome recorded). Returns the error if it failed."""
        if self.limiter.enabled and channel.rate_limited:
            slot = await self.limiter.reserve(method.type, method.address)
            if slot > self.clock.now_ms():
                # Recorded SENDING already: the sweep must count from the send, not the wait.
                await self.store.send_starts_at(location, slot)
            await self.clock.sleep_until(slot)
        user_id = location.user_id or ""
        page = Page(location, method, channel, user_id, -1, "", message, "", routes)
        return await self.deliver(page)

    # -- the channel's send --------------------------------------------------------------

    async def deliver(
        self,
        page: Page,
        *,
        retry_later: Callable[[ProviderError], Awaitable[bool]] | None = None,
        attempts: int | None = None,
    ) -> ProviderError | None:
        """Call the provider for a page recorded SENDING and record the outcome.
        Returns the error if it failed. A retryable error that `retry_later` took (True:
        the page will be tried again) is returned without recording a failure."""
        channel = channel_name(page.channel.type)
        attributes: dict[str, str | int] = {
            "incident.id": page.incident_id,
            "user.id": page.user_id,
            "notification.channel": channel,
            "notification.rule_index": page.rule_index,
            "notification.attempt_id": page.attempt_id,
            "notification.contact_method_id": page.method.id,
        }
        with self.tracer.start_as_current_span(
            "notification.send",
            context=context_from_traceparent(page.traceparent),
            attributes=attributes,
        ) as span:
            try:
                result = await self._send(page, attempts or self.options.retry_attempts)
            except ProviderError as error:
                span.set_status(Status(StatusCode.ERROR, str(error)))
                if error.code:
                    span.set_attribute("notification.error_code", error.code)
                if error.retryable and retry_later is not None and await retry_later(error):
                    span.set_attribute("notification.retry_later", True)
                    pagemetrics.page(page.channel.type, "retry_later")
                    return error
                await self._record_failure(page, error)
                outcome = "unknown" if error.outcome_unknown else "failed"
                pagemetrics.page(page.channel.type, outcome)
                return error
            span.set_attribute("notification.provider_id", result.sid or "")
        accepted_ms = self.clock.now_ms()
        first = await self._record_sent(page, result, accepted_ms)
        pagemetrics.page(page.channel.type, "sent")
        if first:
            self.spawn(
                pagemetrics.first_page_sent(
                    self.incidents,
                    page.incident_id,
                    page.channel.type,
                    accepted_ms,
                    page.created_ms,
                ),
                f"first page metric of {page.incident_id}",
            )
        return None

    async def _send(self, page: Page, attempts: int) -> SendResult:
        """Send the page through its channel, with quick retries; a phone page goes
        through its routes in order: when one refuses it without processing it for a
        trouble of its own (providers.fails_over), the attempt is handed to the next one,
        recorded before that one is called and at most once per provider
        (store.fail_over), and the timeline says so. Raises the last ProviderError."""

        def once(route: Route | None) -> Awaitable[SendResult]:
            return send_with_retry(
                lambda: self._provider_request(page, route),
                attempts=attempts,
                base_delay=self.options.retry_base_delay_s,
                max_delay=self.options.retry_max_delay_s,
                sleep=self.clock.sleep,
                # Before the last provider, a provider failure goes to the next at once.
                retry_if=(lambda error: not fails_over(error))
                if route is not None and route is not page.routes[-1]
                else (lambda error: True),
            )

        if not page.routes:
            return await once(None)
        previous: tuple[Route, ProviderError] | None = None
        for route in page.routes:
            if previous is not None:
                before, error = previous
                if not await self.store.fail_over(page.location, before.name, route.name):
                    raise error
                self._timeline_attempt(
                    page.incident_id,
                    page.attempt_id,
                    page.method.type,
                    page.user_id,
                    page.method.id,
                    f"failed over to {route.name}",
                    f"{before.name}: {error}",
                    error_code=error.code,
                )
                log.warning(
                    "%s: %s failed (%s), sending through %s",
                    page.attempt_id,
                    before.name,
                    error,
                    route.name,
                )
            try:
                result = await once(route)
            except ProviderError as error:
                if route.breaker is not None and counts_against_provider(error):
                    route.breaker.failed()
                if route is page.routes[-1] or not fails_over(error):
                    raise
                previous = (route, error)
                continue
            if route.breaker is not None:
                route.breaker.succeeded()
            return result
        raise AssertionError("unreachable")

    async def _provider_request(self, page: Page, route: Route | None = None) -> SendResult:
        """One request of the page's channel (through `route`, for a phone page), as a
        child span of the send (never the address in it)."""
        channel = page.channel
        provider = route.name if route is not None else type(channel).__name__
        with self.tracer.start_as_current_span(
            channel.span_name,
            kind=SpanKind.CLIENT,
            attributes={"notification.provider": provider},
        ) as span:
            try:
                if route is not None:
                    send_via = channel.send_via  # type: ignore[attr-defined]
                    result: SendResult = await send_via(
                        route, page.method.address, page.message, page.attempt_id
                    )
                    return result
                return await channel.send(page.method.address, page.message, page.attempt_id)
            except ProviderError as error:
                span.set_status(Status(StatusCode.ERROR, str(error)))
                code = pagemetrics.error_code(error)
                pagemetrics.provider_error(channel.type, code, "request")
                raise

    def _reported_with_sent(self, page: Page) -> bool:
        """Whether `_record_sent` queues the page's page-out report with SENT."""
        return bool(page.report_key) and self.store.pipelines_scripts

    async def _record_sent(self, page: Page, result: SendResult, accepted_ms: int) -> bool:
        """SENT, the provider id -> attempt index, (SMS) the latest page to the number and,
        for an incident's page, whether it is the incident's first page accepted (True:
        this one; pagemetrics): one round trip on one Redis server (store.record_sent).

        No timeline entry: escalation's own entry already says who was paged; what the
        timeline gets from here is how it ended (delivered, answered, failed) when the
        provider reports it, and every failure.
        """
        latest = page.incident_id and page.channel.replies
        queue_report = None
        if self._reported_with_sent(page):
            report = escalation_pb2.ReportPageOutRequest(
                incident_id=page.incident_id, user_id=page.user_id, idempotency_key=page.report_key
            )
            report.out_at.FromMilliseconds(accepted_ms)

            def queue_report(pipe: Any) -> None:
                self.escalation.reports.queue(pipe, [report], page.traceparent)

        return await self.store.record_sent(
            page.location,
            result.sid or "",
            result.status,
            self.contacts.latest_page_write(page.method.address, page.incident_id, page.user_id)
            if latest
            else None,
            pagemetrics.first_page_write(page.incident_id, accepted_ms, self.store.retention_ms)
            if page.incident_id and page.rule_index >= 0
            else None,
            queue_report,
        )

    async def _record_failure(self, page: Page, error: ProviderError) -> None:
        if error.outcome_unknown:
            status, what, detail = domain.UNKNOWN, "outcome unknown", UNKNOWN_OUTCOME
        else:
            status, what, detail = domain.FAILED, "failed", str(error)
        await self.store.update_attempt(
            page.location,
            status,
            error_code=error.code or 0,
            provider_status=detail if error.outcome_unknown else "",
        )
        log.warning("%s %s: %s", page.attempt_id, what, error)
        self._timeline_attempt(
            page.incident_id,
            page.attempt_id,
            page.method.type,
            page.user_id,
            page.method.id,
            what,
            detail,
            error_code=error.code,
        )

    def _timeline_attempt(
        self,
        incident_id: str,
        attempt_id: str,
        channel: int,
        user_id: str,
        method_id: str,
        what: str,
        detail: str = "",
        *,
        error_code: int | None = None,
    ) -> None:
        """Write what happened to an attempt to the incident's timeline, in the background
        and once (keyed by attempt and event)."""
        if not incident_id:
            return
        attributes = {
            "user_id": user_id,
            "contact_method_id": method_id,
            "channel": channel_name(channel),
            "attempt_id": attempt_id,
            "status": what,
        }
        if error_code:
            attributes["error_code"] = str(error_code)
        text = domain.attempt_timeline_text(channel, user_id, method_id, what, detail)
        self.spawn(
            self.incidents.append_timeline(
                incident_id, text, attributes, f"notify/{attempt_id}/{what}"
            ),
            f"timeline entry for {attempt_id}",
        )
