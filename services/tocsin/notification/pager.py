"""Starting and stopping notification cycles; keeping up with the incidents.

`notify` snapshots the user's rules into a cycle with one timer per rule (one script in
the incident's slot, after the one that reads the user's settings and holds their reply
code; on one Redis server both go in one round trip when this process has a copy of the
settings, which the second script checks: `ContactStore.known_settings`), then takes the
fast path: the same script claims the timers of the rules due now for this process,
which sends them at once, so the first SMS leaves within milliseconds instead of waiting
for a worker's poll. A rule due now whose page needs nothing more (Sender.ready_now: a
send slot free, no rate limit, no details to look up) is even recorded SENDING by that
script, so its page has no round trip of its own between the cycle's start and the
provider's request. The TimerWorker fires the later rules, and the claimed ones again
should this process die before sending them (their leases run out).

`handle_event` consumes the incident-events stream (group "notification"): it mirrors
each incident's status, summary and service (newer versions only) and, when an incident
is acknowledged, resolved or snoozed, cancels every pending rule of it. The mirror is
what a firing rule checks before sending; an incident it has not seen yet counts as
triggered.

`sweep` finds attempts left SENDING by a process that died mid-send and marks them
UNKNOWN: they may have reached the person, so they are never resent. A cycle's first
page marked so is reported out to escalation (the dead process could not), so the next
level waits no longer than that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from tocsin.notification import domain
from tocsin.notification.channels import channel_name
from tocsin.notification.contacts import ContactStore, PageContext
from tocsin.notification.peers import IncidentsPeer
from tocsin.notification.sender import Sender
from tocsin.notification.store import CycleRequest, CycleStart, PagingStore
from tocsin.runtime.clock import Clock
from tocsin.v1 import incidents_pb2, notification_pb2

log = logging.getLogger(__name__)
_NO_STATUS_CHANGE = frozenset(
    {
        incidents_pb2.INCIDENT_EVENT_KIND_ALERT_ADDED,
        incidents_pb2.INCIDENT_EVENT_KIND_ESCALATED,
        incidents_pb2.INCIDENT_EVENT_KIND_STATUS_UPDATE,
    }
)

SENDING_TIMEOUT_MS = 2 * 60 * 1000
"""An attempt SENDING for longer than this lost its process (a send with every retry
takes well under a minute) and becomes UNKNOWN."""


@dataclass(frozen=True)
class NotifyResult:
    started: bool
    rules_scheduled: int
    unreachable_reason: str = ""
    """Why no rule can reach the user ("" when one can): escalation moves a level on
    when nobody it paged can be reached."""


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a shielded task's outcome seen (its awaiter may have been cancelled)."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("a Notify's start ended after its caller gave up", exc_info=task.exception())


class Pager:
    def __init__(
        self,
        store: PagingStore,
        contacts: ContactStore,
        sender: Sender,
        incidents: IncidentsPeer,
        clock: Clock,
    ) -> None:
        self.store = store
        self.contacts = contacts
        self.sender = sender
        self.incidents = incidents
        self.clock = clock

    async def notify(
        self,
        incident_id: str,
        user_id: str,
        idempotency_key: str,
        traceparent: str,
        next_level_ms: int = 0,
        urgency: int = 0,
        service_id: str = "",
        words: domain.IncidentWords | None = None,
    ) -> NotifyResult:
        """Start the user's cycle. `next_level_ms` (0: not known) is when the page stops
        mattering: a throttled send is retried until then or the next rule. `urgency`
        picks the user's rules (domain.rules_for; 0 is high). `service_id` (the incident's
        service, "" if not known) picks the sender's queue for the pages sent now;
        `words`, the incident's summary, number and creation if the caller has them, are
        what those pages say when the status mirror does not hold the incident yet."""
        request = CycleRequest(
            incident_id,
            user_id,
            idempotency_key,
            traceparent,
            self.sender.options.lease_ms,
            next_level_ms,
        )
        rate_slots: dict[tuple[int, str], list[int]] = {}  # the first try's, for a second
        known = self.contacts.known_settings(user_id)
        if known is not None:
            context: list[PageContext] = []

            async def with_page(request: CycleRequest) -> CycleStart | None:
                page, start = await self.store.start_cycle_with_page(request, self.contacts, known)
                context.append(page)
                return start

            result = await self._start(
                known.settings, urgency, request, service_id, words, with_page, rate_slots
            )
            if result is not None:
                return result
            page = context[0]  # the settings changed: start from those stored now
        else:
            page = await self.contacts.prepare_page(user_id, incident_id)

        async def alone(request: CycleRequest) -> CycleStart | None:
            return await self.store.start_cycle(request, page.reply_code)

        result = await self._start(
            page.settings, urgency, request, service_id, words, alone, rate_slots
        )
        assert result is not None  # start_cycle always answers
        return result

    async def _start(
        self,
        settings: domain.Settings,
        urgency: int,
        request: CycleRequest,
        service_id: str,
        words: domain.IncidentWords | None,
        start_cycle: Callable[[CycleRequest], Awaitable[CycleStart | None]],
        rate_slots: dict[tuple[int, str], list[int]],
    ) -> NotifyResult | None:
        """The cycle started by `start_cycle` from the user's rules in `settings`, its
        pages due now sent at once; None when `start_cycle` answers None (its script
        started nothing: the settings it was given are not the stored ones)."""
        rules = domain.rules_snapshot(settings, urgency)
        incident_id, user_id = request.incident_id, request.user_id
        unreachable = domain.unreachable_reason(user_id, settings, urgency)
        methods = {m.id: m for m in settings.contact_methods}
        ready = await self.sender.ready_now(rules, methods, service_id, words, rate_slots)

        async def start_and_fire() -> CycleStart | None:
            try:
                start = await start_cycle(replace(request, rules=rules, send_now=ready.rules))
                if start is not None and start.started:
                    self.sender.fire_now(
                        start.claimed, methods, service_id, words, start.fired, ready
                    )
                    if unreachable:
                        self._warn_unreachable(incident_id, user_id, start.cycle_id, unreachable)
                return start
            finally:
                ready.release()

        # Once the script may have run, the pages it recorded SENDING must be sent: a
        # Notify cancelled meanwhile (its caller's deadline, a batch call cancelled) must
        # not cancel that, or they would be swept UNKNOWN and never sent.
        task = asyncio.get_running_loop().create_task(start_and_fire())
        task.add_done_callback(_retrieve)
        start = await asyncio.shield(task)
        if start is None:
            return None
        if not start.started:
            return NotifyResult(False, 0, unreachable)
        return NotifyResult(True, start.rules, unreachable)

    def _warn_unreachable(
        self, incident_id: str, user_id: str, cycle_id: str, unreachable: str
    ) -> None:
        self.sender.spawn(
            self.incidents.append_timeline(
                incident_id,
                f"{unreachable}: nobody was paged",
                {"user_id": user_id},
                f"notify/{cycle_id}/no-rules",
                incidents_pb2.TIMELINE_KIND_WARNING,
            ),
            f"timeline warning for {cycle_id}",
        )

    async def cancel(self, incident_id: str) -> int:
        return await self.store.cancel(incident_id)

    async def handle_event(self, event: incidents_pb2.IncidentEvent) -> None:
        """Mirror the incident's status (a stopped incident's pending sends are cancelled).

        An alert joining an incident changes neither its status nor its summary or
        service, and the events before it already mirrored those, so ALERT_ADDED events,
        all of an alert storm but its first alert, are passed over without a Redis call;
        so are ESCALATED events (escalation's own hops) and status updates."""
        if not event.incident.id or event.kind in _NO_STATUS_CHANGE:
            return
        _, cancelled = await self.store.apply_incident(event.incident)
        if cancelled:
            log.info(
                "incident %s %s: cancelled %d pending notifications",
                event.incident.id,
                incidents_pb2.IncidentEventKind.Name(event.kind),
                cancelled,
            )

    async def sweep(self, shards: frozenset[int] | range, *, tests: bool) -> int:
        """Mark stale SENDING attempts UNKNOWN in `shards` (and test pages if `tests`)."""
        older_than = self.clock.now_ms() - SENDING_TIMEOUT_MS
        marked = []
        for shard in shards:
            marked += await self.store.sweep(shard, older_than)
        if tests:
            marked += await self.store.sweep(None, older_than)
        for attempt in marked:
            log.warning("attempt %s: outcome unknown, not resent", attempt.id)
            if attempt.incident_id:
                self.sender.spawn(
                    self._timeline_unknown(attempt), f"timeline entry for {attempt.id}"
                )
                cycle_id, _, rule = attempt.id.rpartition("-")
                if rule == "0":
                    # its process died before reporting it: the next level may follow now
                    self.sender.report_first_page_out(
                        attempt.incident_id, cycle_id, attempt.user_id
                    )
        return len(marked)

    async def _timeline_unknown(self, attempt: notification_pb2.Attempt) -> None:
        text = domain.attempt_timeline_text(
            attempt.type,
            attempt.user_id,
            attempt.contact_method_id,
            "outcome unknown",
            "the sending process stopped before the provider answered; not resent",
        )
        await self.incidents.append_timeline(
            attempt.incident_id,
            text,
            {
                "user_id": attempt.user_id,
                "contact_method_id": attempt.contact_method_id,
                "channel": channel_name(attempt.type),
                "attempt_id": attempt.id,
                "status": "outcome unknown",
            },
            f"notify/{attempt.id}/outcome unknown",
        )
