"""The escalation engine: follows incident events, fires levels from timers, hands the
pages of a fired level to notification in the write that fires it, writes the level's
timeline notes through an outbox timer, and audits for lost timers.

Firing a level is a GoAlert-style idempotent cycle:

1. the level timer (or the event that started the escalation) hands over the state;
2. schedule targets are resolved through scheduling's WhoIsOnCall, or from the answer
   remembered for the schedule while its revision and the answer's shift still hold
   (tocsin/runtime/oncall.py; when an escalation starts, the revision comes with the
   policy from the process's copy, policy_cache.py, else it is read with the policy);
3. ONE compare-and-set writes the advanced state, arms the next level's timer, adds each
   page, a NotifyRequest with the idempotency key incident/epoch/level/loop/user, to the
   incident shard's page stream (runtime/page_outbox.py: notification, blocked on it,
   starts the page the moment the write commits) and, on one Redis server, adds the
   level's timeline notes to the timeline outbox (runtime/timeline_outbox.py; appended
   once, by their keys); on a Cluster, where that outbox is in another slot, it arms a
   "hop" outbox timer holding the notes instead. A stale or duplicate timer fails the
   version check and pages nobody;
4. on a Cluster the same write claims the hop for this process (no poll, no round trip
   of its own) and its notes are queued with the hop's completion. If the process dies
   after the write, the pages (and on one server the notes) are in their streams
   already, and a hop is re-offered after its lease and redone; notification drops
   repeated keys. A hop an older version armed holds its pages: it still sends them as
   Notify calls.

A level nobody can answer does not wait out its delay. Notification reports through
ReportUnreachable a user with no contact method or rule (when it starts the page) and a
user whose every rule failed (later). Once every user the level paged is
reported, one more compare-and-set makes the next level due now, guarded by the level's
epoch, level and loop and by its still being the current one, so a repeated report or a
redone hop moves nothing twice.

Levels go out in order (domain.py): a fired level awaits notification's ReportPageOut
for each user it paged (a user reported unreachable counts as out at once). A level
timer that comes before those reports re-arms itself for the bound (`Held`); the last
report re-arms it for the level's delay after the last page went out, and fires it now if
that has passed. The report is recorded per user (HSETNX, first wins) and applied by one
compare-and-set guarded by epoch, level and loop, so a repeated or stale report moves
nothing; a lost one delays the next level by at most LEVEL_HOLD_MAX_MS past its due time.

Calls to the other services wait for a peer that is starting (gRPC wait_for_ready) inside
`PEER_DEADLINE_S`; if one still fails with UNAVAILABLE or its deadline, the timer (level
or hop) is given back due again in `PEER_RETRY_MS` rather than left in flight until its
lease, so overdue levels go out about a second after the peers are up.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, TypeVar

import grpc
from opentelemetry import metrics, trace
from opentelemetry.trace import Status as SpanStatus
from opentelemetry.trace import StatusCode

from tocsin.client.client import TocsinClient
from tocsin.escalation import domain
from tocsin.escalation.codec import HopPage, HopPayload, LevelTimerPayload, policy_from_proto
from tocsin.escalation.domain import (
    LEVEL_HOLD_MAX_MS,
    Awaiting,
    Escalation,
    Exhausted,
    Held,
    LevelFired,
    LevelKey,
    Page,
    Policy,
    Status,
)
from tocsin.escalation.store import EscalationStore, Hop, hop_timer_id, level_timer_id
from tocsin.runtime import channeltargets
from tocsin.runtime.clock import Clock, datetime_to_ms
from tocsin.runtime.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from tocsin.runtime.events import incident_shard
from tocsin.runtime.metrics import timer_fired
from tocsin.runtime.oncall import OnCallCache, read_revisions
from tocsin.runtime.telemetry import (
    context_from_traceparent,
    current_traceparent,
    traceparent_of,
)
from tocsin.runtime.timeline_outbox import TimelineOutbox
from tocsin.runtime.timers import ClaimedTimer, RetryLater, retry_later
from tocsin.v1 import common_pb2, incidents_pb2, notification_pb2, scheduling_pb2
from tocsin.v1 import escalation_pb2 as pb_policy

_T = TypeVar("_T")
log = logging.getLogger(__name__)
tracer = trace.get_tracer("tocsin.escalation")
_meter = metrics.get_meter("tocsin.escalation")
_held = _meter.create_counter(
    "tocsin.escalation.levels_held",
    description="Level timers that came while the previous level's pages were not out yet",
)
_unconfirmed = _meter.create_counter(
    "tocsin.escalation.levels_unconfirmed",
    description="Levels that went ahead after LEVEL_HOLD_MAX_MS without the previous "
    "level's pages reported out (a lost report, or a backlog older than that)",
)
_repaired = _meter.create_counter(
    "tocsin.escalation.auditor.repaired",
    description="Escalations the auditor found without a live timer and re-armed or started",
)

DIRECT_ASSIGNMENT_DELAY_MS = 5 * 60_000
"""A user-assigned incident is one level: that user, whose own rules repeat the page."""
HOP_LEASE_MS = 15_000
AWAITING_KEPT = 2_048
"""Levels awaiting a report kept for `report_page_out`'s fast path, oldest out first (a
report usually comes within a second; one whose state is gone takes the path that reads).
With several replicas most reports go to another one, so the entries are bounded here:
a few KB each, the policy included."""
PEER_DEADLINE_S = 5.0
"""How long a call to another service may take, waiting for it to be up included."""
PEER_RETRY_MS = 1_000
"""When a timer whose peer call failed (UNAVAILABLE, deadline) is due again."""
_PEER_PASSING = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
PEER_LOG_EVERY_S = 30.0
"""While peers keep failing, one WARNING per this interval (the rest at DEBUG)."""
_WRITE_ATTEMPTS = 5


class _Unread:
    """A policy not read yet (`_policy_for` reads it)."""


_UNREAD = _Unread()
_EVENT = incidents_pb2.IncidentEventKind


class EscalationEngine:
    def __init__(self, store: EscalationStore, peers: TocsinClient, clock: Clock) -> None:
        self.store = store
        self.peers = peers
        self.clock = clock
        self.timeline = TimelineOutbox(store.redis)
        """The hops' timeline notes go to incidents through it (no AppendTimeline call)."""
        self.hold_max_ms = LEVEL_HOLD_MAX_MS
        """How long past its due time a level waits for the previous level's pages."""
        self.repaired = 0
        self.on_call = OnCallCache()
        """WhoIsOnCall answers, used while the schedule's revision and shift hold."""
        self._first_schedules: dict[str, tuple[str, ...]] = {}
        """Per policy, the schedules its level 0 named when last read: their revisions
        are read with the policy when an escalation starts."""
        self._peer_warned_at: float | None = None
        self._peer_failures = 0
        self._awaiting: OrderedDict[str, tuple[Escalation, str]] = OrderedDict()
        """Per incident, the state this process wrote with a level awaiting one user's
        report, and the trace its level timer carries: `report_page_out`'s fast path."""

    # incident events

    async def on_event(self, event: incidents_pb2.IncidentEvent) -> None:
        incident = event.incident
        if event.kind == _EVENT.INCIDENT_EVENT_KIND_TRIGGERED:
            await self.begin(incident, event.traceparent)
        elif event.kind in (
            _EVENT.INCIDENT_EVENT_KIND_UNSNOOZED,
            _EVENT.INCIDENT_EVENT_KIND_REASSIGNED,
        ):
            await self.restart(incident, event.traceparent)
        elif event.kind in (
            _EVENT.INCIDENT_EVENT_KIND_ACKNOWLEDGED,
            _EVENT.INCIDENT_EVENT_KIND_RESOLVED,
            _EVENT.INCIDENT_EVENT_KIND_SNOOZED,
        ):
            await self.halt(incident.id, event.traceparent, _EVENT.Name(event.kind))

    async def begin(self, incident: incidents_pb2.Incident, traceparent: str) -> None:
        """Start escalating a newly triggered incident (a repeated event does nothing).
        The policy and its level 0's schedules' revisions come from the process's copy
        (policy_cache.py), and nothing is read before the write; without a fresh copy,
        whether it started already, the policy and the revisions are read in one round
        trip."""
        policy_id = (
            incident.assignment.escalation_policy_id
            if incident.assignment.WhichOneof("target") != "user_id"
            else ""
        )
        cached = self.store.policies.get(policy_id, self.clock.now_ms()) if policy_id else None
        stored: pb_policy.EscalationPolicy | None
        revisions: dict[str, bytes | None]
        if cached is not None:
            # Nothing read: a repeated event loses the start's compare-and-set.
            stored, revisions = cached
        else:
            exists, stored, revisions = await self.store.exists_with_policy(
                incident.id, policy_id, self._first_schedules.get(policy_id, ())
            )
            if exists:
                return
        with tracer.start_as_current_span(
            "escalation.start",
            context=context_from_traceparent(traceparent),
            attributes={"incident.id": incident.id},
        ) as span:
            policy = await self._policy_for(incident, stored if policy_id else _UNREAD)
            if policy is None:
                return
            span.set_attribute("policy.id", policy.id)
            self._learn_first_schedules(policy)
            page_at = incident.page_at.ToMilliseconds() if incident.HasField("page_at") else None
            now = self.clock.now_ms()
            state = domain.start(
                incident.id,
                policy,
                now,
                low_urgency=incident.urgency == common_pb2.URGENCY_LOW,
                first_fire_ms=page_at,  # waiting for support hours: level 0 due then
                service_id=incident.service_id,
            )
            if domain.is_due(state, now) and await self._start_fired(state, revisions, incident):
                return
            written = await self.store.write(state, 0, traceparent=current_traceparent())
        if written:
            await self.fire_now(incident.id)

    def _learn_first_schedules(self, policy: Policy) -> None:
        if not policy.levels or not policy.id:
            return
        if len(self._first_schedules) >= 4096:
            self._first_schedules.clear()
        self._first_schedules[policy.id] = tuple(
            t.id for t in policy.levels[0].targets if t.kind == "schedule"
        )

    async def _start_fired(
        self,
        state: Escalation,
        revisions: dict[str, bytes | None],
        incident: incidents_pb2.Incident,
    ) -> bool:
        """Level 0 fires inside the write that starts the escalation: one compare-and-set
        (nothing stored yet) records the escalation with level 0 fired, its hop and the
        next level's timer, and the hop is sent at once. Nothing is written before that
        write, so a crash before it leaves the event pending and the start is redone; a
        crash after it leaves the hop and the level timer, which the shard's worker
        claims. A concurrent start of the same incident loses the compare-and-set and
        pages nobody. False when a peer did not answer: the caller takes the slow path
        (state written, level 0 due, retried by its timer). The hop carries `incident`'s
        summary, number and creation (the TRIGGERED event's) to its Notify calls."""
        timer_fired("escalation", state.started_ms, state.started_ms)
        try:
            await self._advance(
                state,
                current_traceparent(),
                manual=False,
                expected_version=0,
                revisions=revisions,
                trigger=incident,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() not in _PEER_PASSING:
                raise
            return False
        return True

    async def restart(self, incident: incidents_pb2.Incident, traceparent: str) -> None:
        """Start over for a snooze that ended or a new assignment, in a new epoch."""
        with tracer.start_as_current_span(
            "escalation.restart",
            context=context_from_traceparent(traceparent),
            attributes={"incident.id": incident.id},
        ):
            policy = await self._policy_for(incident)
            if policy is None:
                return
            for _ in range(_WRITE_ATTEMPTS):
                current = await self.store.load(incident.id)
                low = incident.urgency == common_pb2.URGENCY_LOW
                if current is None:
                    state = domain.start(
                        incident.id,
                        policy,
                        self.clock.now_ms(),
                        low_urgency=low,
                        service_id=incident.service_id,
                    )
                    expected = 0
                else:
                    state = domain.restart(
                        current,
                        policy,
                        self.clock.now_ms(),
                        low_urgency=low,
                        service_id=incident.service_id,
                    )
                    expected = current.version
                if await self.store.write(state, expected, traceparent=current_traceparent()):
                    break
            else:
                raise Conflict(f"escalation of incident {incident.id} kept changing; retried")
        await self.fire_now(incident.id)

    async def halt(self, incident_id: str, traceparent: str, reason: str) -> None:
        """Stop paging: acknowledged, resolved or snoozed. Later timers become no-ops."""
        with tracer.start_as_current_span(
            "escalation.stop",
            context=context_from_traceparent(traceparent),
            attributes={"incident.id": incident_id, "reason": reason},
        ):
            for _ in range(_WRITE_ATTEMPTS):
                current = await self.store.load(incident_id)
                stopped = domain.stop(current) if current else None
                if current is None or stopped is None:
                    return
                if await self.store.write(stopped, current.version, traceparent=""):
                    return
            # Raising leaves the event pending: the stop is retried, never dropped.
            raise Conflict(f"escalation of incident {incident_id} kept changing; retried")

    # levels

    async def fire_now(self, incident_id: str) -> None:
        """The fast path: claim the level timer that is due now and fire it here."""
        claimed = await self.store.timers.claim(
            level_timer_id(incident_id), incident_shard(incident_id), HOP_LEASE_MS
        )
        if claimed is not None:
            timer_fired("escalation", self.clock.now_ms(), claimed.due_ms)
            try:
                await self.on_timer(claimed)
            except RetryLater as later:
                await retry_later(self.store.timers, claimed, later)
                return
            await self.store.timers.complete(claimed)

    async def on_timer(self, timer: ClaimedTimer) -> None:
        """Handler for every timer of the escalation shards: levels and hops. Raises
        RetryLater when a peer did not answer (still starting, or gone for a moment)."""
        await self._peers_may_fail(timer.timer_id, self._on_timer(timer))

    async def _peers_may_fail(self, timer_id: str, work: Awaitable[_T]) -> _T:
        """`work`'s result; RetryLater when a peer it called did not answer."""
        try:
            return await work
        except grpc.aio.AioRpcError as error:
            if error.code() not in _PEER_PASSING:
                raise
            self._peer_failures += 1
            now = time.monotonic()  # log pacing, not product time
            last = self._peer_warned_at
            loud = last is None or now - last >= PEER_LOG_EVERY_S
            if loud:
                self._peer_warned_at = now
            log.log(
                logging.WARNING if loud else logging.DEBUG,
                "%s: a peer did not answer (%s: %s); retried in %d ms (%d such retries)",
                timer_id,
                error.code().name,
                _peer_of(error),
                PEER_RETRY_MS,
                self._peer_failures,
            )
            raise RetryLater(PEER_RETRY_MS) from None

    async def _on_timer(self, timer: ClaimedTimer) -> None:
        if timer.timer_id.startswith("hop:"):
            await self._send_hop(timer)
            return
        payload = LevelTimerPayload.decode(timer.payload)
        incident_id = timer.timer_id.removeprefix("esc:")
        state = await self.store.load(incident_id)
        if state is None or state.version != payload.version:
            return  # stale: a newer write re-armed or cancelled it
        if not domain.is_due(state, self.clock.now_ms()):
            return
        await self._advance(state, payload.traceparent, manual=False)

    async def escalate(self, incident_id: str) -> Escalation:
        """Manual escalation: fire the next level now."""
        for _ in range(_WRITE_ATTEMPTS):
            state = await self.store.load(incident_id)
            if state is None:
                raise NotFound(f"incident {incident_id} has no escalation")
            if state.status is not Status.ACTIVE:
                raise FailedPrecondition(
                    f"escalation of incident {incident_id} is {state.status.value}"
                )
            advanced = await self._advance(state, current_traceparent(), manual=True)
            if advanced is not None:
                return advanced
        raise FailedPrecondition(f"escalation of incident {incident_id} kept changing")

    async def report_unreachable(
        self, incident_id: str, user_id: str, idempotency_key: str, reason: str, traceparent: str
    ) -> bool:
        """`user_id`, paged with `idempotency_key`, cannot be reached. When every user
        that level paged is, and it is still the current level, the next level fires now.
        True when this report moved the escalation on."""
        key = domain.parse_idempotency_key(idempotency_key)
        if key is None or key.incident_id != incident_id or key.user_id != user_id:
            raise InvalidArgument.one(
                "idempotency_key",
                "must be the key escalation paged the user with (incident/epoch/level/loop/user)",
            )
        # A user nobody can reach has no page left to wait for: out (failed) now, so a
        # level of reachable and unreachable users is released once the others' are out.
        await self.report_page_out(incident_id, user_id, idempotency_key, None)
        reported = await self.store.record_unreachable(
            incident_id, key.epoch, key.level, key.loop, user_id, reason or "cannot be reached"
        )
        for _ in range(_WRITE_ATTEMPTS):
            state = await self.store.load(incident_id)
            if state is None:
                return False
            now = self.clock.now_ms()
            skipped = domain.skip_unanswered(state, key, frozenset(reported), now)
            if skipped is None:
                return False
            hop = Hop(
                f"hop:{incident_id}:{key.epoch}:{key.level}:{key.loop}:unreachable",
                HopPayload(
                    incident_id, key.epoch, (), (_unreachable_note(key, reported),), traceparent
                ),
            )
            written, claimed = await self.store.write_hop(
                skipped, state.version, traceparent=traceparent, hop=hop, lease_ms=HOP_LEASE_MS
            )
            if written:
                log.info(
                    "incident %s: level %d (loop %d) can reach nobody; moving on now",
                    incident_id,
                    key.level,
                    key.loop,
                )
                await self._send_claimed_hop(claimed, hop.timer_id)
                await self.fire_now(incident_id)
                return True
        raise Conflict(f"escalation of incident {incident_id} kept changing; retried")

    async def apply_page_out_report(
        self, request: pb_policy.ReportPageOutRequest, traceparent: str
    ) -> bool:
        """A report notification queued (runtime/report_outbox.py), as the ReportPageOut
        RPC would apply it, in a span of the page's trace. InvalidArgument if it names no
        level this service pages with."""
        with tracer.start_as_current_span(
            "escalation.page_out",
            context=context_from_traceparent(traceparent),
            attributes={"incident.id": request.incident_id},
        ):
            return await self.report_page_out(
                request.incident_id,
                request.user_id,
                request.idempotency_key,
                request.out_at.ToMilliseconds() if request.HasField("out_at") else None,
            )

    async def report_page_out(
        self,
        incident_id: str,
        user_id: str,
        idempotency_key: str,
        out_ms: int | None,
    ) -> bool:
        """The first page to `user_id`, paged with `idempotency_key`, went out (or failed)
        at `out_ms` (None: now). When every user that level paged is reported, the next
        level counts its delay from the last of them (firing now if that has passed).
        True when this report released the next level."""
        key = domain.parse_idempotency_key(idempotency_key)
        if key is None or key.incident_id != incident_id or key.user_id != user_id:
            raise InvalidArgument.one(
                "idempotency_key",
                "must be the key escalation paged the user with (incident/epoch/level/loop/user)",
            )
        now = self.clock.now_ms()
        at = now if out_ms is None else min(out_ms, now)
        fast = await self._report_written(key, at, now)
        if fast is not None:
            return fast
        reported, state, traceparent = await self.store.record_out(
            incident_id, key.epoch, key.level, key.loop, user_id, at
        )
        for attempt in range(_WRITE_ATTEMPTS):
            if attempt:  # the write lost to another: read again
                state, traceparent = await self.store.load_for_report(incident_id)
            if state is None:
                return False
            now = self.clock.now_ms()
            released = domain.pages_out(state, key, reported, now)
            if released is None:
                return False
            if await self.store.write(released, state.version, traceparent=traceparent):
                if released.next_fire_ms is not None and released.next_fire_ms <= now:
                    await self.fire_now(incident_id)
                return True
        raise Conflict(f"escalation of incident {incident_id} kept changing; retried")

    def _remember_awaiting(self, state: Escalation, traceparent: str) -> None:
        """Keep `state`, just written by this process, if its level awaits one user's
        report: that report then needs no read (`_report_written`)."""
        awaiting = state.awaiting
        if awaiting is None or state.next_fire_ms is None:
            return
        key = LevelKey(state.incident_id, state.epoch, awaiting.level, awaiting.loop, "")
        if len(domain.level_users(state, key)) != 1:
            return
        self._awaiting[state.incident_id] = (state, traceparent)
        self._awaiting.move_to_end(state.incident_id)
        while len(self._awaiting) > AWAITING_KEPT:
            self._awaiting.popitem(last=False)

    async def _report_written(self, key: LevelKey, at_ms: int, now_ms: int) -> bool | None:
        """The fast path of a report: when this process wrote the level that awaits it
        and the report is its only user's, the report and the release it causes go in one
        script (`report_and_write`: the report recorded first-wins, the write only if it
        was the first, guarded by the written version). None: take the path that reads
        (another process wrote the level, a newer write came, a repeated report)."""
        kept = self._awaiting.pop(key.incident_id, None)
        if kept is None:
            return None
        state, traceparent = kept
        released = domain.pages_out(state, key, {key.user_id: at_ms}, now_ms)
        if released is None:
            return None
        outcome = await self.store.report_and_write(
            released, state.version, key, at_ms, traceparent=traceparent
        )
        if outcome != "ok":
            return None
        if released.next_fire_ms is not None and released.next_fire_ms <= now_ms:
            await self.fire_now(key.incident_id)
        return True

    async def _advance(
        self,
        state: Escalation,
        traceparent: str,
        *,
        manual: bool,
        expected_version: int | None = None,
        revisions: dict[str, bytes | None] | None = None,
        trigger: incidents_pb2.Incident | None = None,
    ) -> Escalation | None:
        """Fire what is next of `state` and write it with a compare-and-set on
        `expected_version` (default: `state.version`; 0: nothing stored yet).
        `revisions`: schedules' revisions read already for this firing; `trigger`: the
        incident as the TRIGGERED event that started it gave it (its words go with the
        hop)."""
        expected = state.version if expected_version is None else expected_version
        now = self.clock.now_ms()
        with tracer.start_as_current_span(
            "escalation.level", context=context_from_traceparent(traceparent)
        ) as span:
            span.set_attributes(
                {
                    "incident.id": state.incident_id,
                    "escalation.level": state.next_level,
                    "escalation.loop": state.loop,
                    "escalation.epoch": state.epoch,
                    "escalation.manual": manual,
                }
            )
            advanced, work = domain.fire(state, now, manual=manual, hold_max_ms=self.hold_max_ms)
            if isinstance(work, Held):
                # The previous level's pages are still waiting to go out: the timer comes
                # back at the bound, or earlier when they are reported (report_page_out).
                span.set_attribute("escalation.held_until", work.until_ms)
                if not await self.store.write(advanced, expected, traceparent=traceparent):
                    span.set_attribute("escalation.stale", True)
                    return None
                _held.add(1)
                return advanced
            addresses: dict[str, str] = {}
            if isinstance(work, LevelFired):
                addresses = {
                    channeltargets.target_id(t.kind, t.id): t.id
                    for t in work.targets
                    if t.kind in channeltargets.KINDS
                }
                pages, notes = await self._resolve_targets(state, work, now, revisions or {})
                advanced = domain.record_pages(advanced, pages)
                if not pages and advanced.next_fire_ms is not None:
                    advanced = replace(advanced, next_fire_ms=now)  # nobody here: go on now
                span.set_attribute("escalation.paged", [p.user_id for p in pages])
                hop_id = hop_timer_id(state.incident_id, state.epoch, work.level, work.loop)
            else:
                span.set_attribute("escalation.exhausted", True)
                pages, notes = (), [_exhausted_note(state, work)]
                hop_id = f"hop:{state.incident_id}:{state.epoch}:exhausted"
            if work.unconfirmed is not None:
                span.set_attribute("escalation.unconfirmed", True)
                notes.insert(0, _unconfirmed_note(work.unconfirmed, self.hold_max_ms))
            paged = HopPayload(
                state.incident_id,
                state.epoch,
                tuple(
                    HopPage(p.level, p.loop, p.user_id, p.schedule_id, addresses.get(p.user_id, ""))
                    for p in pages
                ),
                tuple(notes),
                current_traceparent(),
                advanced.next_fire_ms,
                low_urgency=state.low_urgency,
                service_id=state.service_id,
                **_words(trigger),
            )
            # The pages go to notification's stream in the write (runtime/page_outbox.py);
            # on one Redis server the notes go to the timeline outbox in it too, else a
            # hop keeps them, written once the write is made.
            # Each page's `escalation.notify` span ends once the write queued it: a write
            # that loses its compare-and-set queued nothing, and its spans are dropped.
            notify_spans = [_notify_span(paged, page) for page in paged.pages]
            requests = [
                _notify_request(paged, page, traceparent_of(span))
                for page, span in zip(paged.pages, notify_spans, strict=True)
            ]
            hop: Hop | None = None
            in_write: list[bytes] = []
            if self.store.notes_in_write:
                in_write = [n.SerializeToString() for n in _timeline_requests(paged, hop_id)]
            else:
                hop = Hop(
                    hop_id,
                    HopPayload(state.incident_id, state.epoch, (), tuple(notes), paged.traceparent),
                )
            try:
                written, claimed = await self.store.write_hop(
                    advanced,
                    expected,
                    traceparent=traceparent,
                    hop=hop,
                    lease_ms=HOP_LEASE_MS,
                    pages=[r.SerializeToString() for r in requests],
                    pages_trace=paged.traceparent,
                    notes=in_write,
                )
            except BaseException as error:
                # The pages may have been queued (a reply lost after the write): the spans
                # end, marked with the error, so notification's spans keep their parents.
                for notify_span in notify_spans:
                    notify_span.record_exception(error)
                    notify_span.set_status(SpanStatus(StatusCode.ERROR, type(error).__name__))
                    notify_span.end()
                raise
            if not written:
                span.set_attribute("escalation.stale", True)
                return None  # nothing queued: the notify spans are never ended nor exported
            for notify_span in notify_spans:
                notify_span.end()
            self._remember_awaiting(advanced, traceparent)
        if work.unconfirmed is not None:
            _unconfirmed.add(1)
            log.warning(
                "incident %s: level %d (loop %d) went ahead without the previous level's "
                "pages reported out",
                state.incident_id,
                state.next_level,
                state.loop,
            )
        if hop is not None:
            await self._send_claimed_hop(claimed, hop.timer_id)
        if advanced.next_fire_ms is not None and advanced.next_fire_ms <= now:
            await self.fire_now(state.incident_id)
        return advanced

    async def _resolve_targets(
        self,
        state: Escalation,
        work: LevelFired,
        now_ms: int,
        revisions: dict[str, bytes | None],
    ) -> tuple[tuple[Page, ...], list[dict[str, Any]]]:
        pages: list[Page] = []
        notes: list[dict[str, Any]] = []
        seen: set[str] = set()
        targets = work.targets
        round_robin = state.policy.levels[work.level].round_robin and len(targets) > 1
        if round_robin:
            turn = await self.store.round_robin_turn(state.policy.id, work.level, state.incident_id)
            targets = domain.round_robin_order(targets, turn, work.loop)
        unread = [t.id for t in targets if t.kind == "schedule" and t.id not in revisions]
        if unread:  # the revisions not read with the policy, in one round trip
            revisions = {**revisions, **await read_revisions(self.store.redis, unread)}
        for target in targets:
            user: str | None
            if target.kind == "user":
                user, schedule_id = target.id, ""
            elif target.kind in channeltargets.KINDS:
                user, schedule_id = channeltargets.target_id(target.kind, target.id), ""
            else:
                schedule_id = target.id
                user = await self._on_call(schedule_id, revisions.get(schedule_id), notes, work)
                if user is None:
                    continue
            if user not in seen:
                seen.add(user)
                pages.append(Page(work.level, work.loop, user, schedule_id, now_ms, state.epoch))
            if round_robin:
                notes.append(
                    {
                        "kind": incidents_pb2.TIMELINE_KIND_NOTE,
                        "message": f"Round robin: level {work.level + 1} paged {user} "
                        f"({target.kind} {target.id}), whose turn it was",
                        "attributes": {"round_robin_target": f"{target.kind}:{target.id}"},
                    }
                )
                break
        who = ", ".join(
            channeltargets.describe(p.user_id)
            + (f" (schedule {p.schedule_id})" if p.schedule_id else "")
            for p in pages
        )
        notes.insert(
            0,
            {
                "kind": incidents_pb2.TIMELINE_KIND_ESCALATED,
                "message": f"Escalation level {work.level + 1} (loop {work.loop + 1}) paged "
                + (who or "nobody"),
                "attributes": {
                    "level": str(work.level),
                    "loop": str(work.loop),
                    "epoch": str(state.epoch),
                    "users": ",".join(p.user_id for p in pages),
                },
            },
        )
        return tuple(pages), notes

    async def _on_call(
        self,
        schedule_id: str,
        revision: bytes | None,
        notes: list[dict[str, Any]],
        work: LevelFired,
    ) -> str | None:
        """Who `schedule_id` has on call now: the remembered answer if it holds under
        `revision` (read for this firing, before any call), else WhoIsOnCall's."""
        with tracer.start_as_current_span(
            "escalation.who_is_on_call", attributes={"schedule.id": schedule_id}
        ) as span:
            at = self.clock.now()
            remembered = self.on_call.lookup(schedule_id, revision, datetime_to_ms(at))
            span.set_attribute("escalation.on_call_cached", remembered is not None)
            if remembered is not None:
                span.set_attribute("user.id", remembered)
                return remembered
            request = scheduling_pb2.WhoIsOnCallRequest(schedule_id=schedule_id)
            request.at.FromDatetime(at)
            try:
                reply = await self.peers.scheduling.WhoIsOnCall(
                    request, timeout=PEER_DEADLINE_S, wait_for_ready=True
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                notes.append(
                    _warning(
                        f"Schedule {schedule_id} does not exist; level {work.level + 1} skips it"
                    )
                )
                return None
            user = reply.shift.user_id or None
            span.set_attribute("user.id", user or "")
            if user is not None:
                self.on_call.remember(
                    schedule_id,
                    revision,
                    user,
                    -(-reply.shift.start.ToNanoseconds() // 1_000_000),  # rounded up
                    reply.shift.end.ToMilliseconds(),  # rounded down
                )
        if user is None:
            notes.append(
                _warning(
                    f"Schedule {schedule_id} had nobody on call; "
                    f"level {work.level + 1} paged nobody from it"
                )
            )
        return user

    # the outbox

    async def _send_claimed_hop(self, claimed: ClaimedTimer | None, hop_id: str) -> None:
        """Send the hop the write that armed it claimed for this process (None: not
        claimed, which a write always does; the shard's worker would send it)."""
        if claimed is None:
            log.debug("hop %s not claimed by its write; the shard's worker sends it", hop_id)
            return
        try:
            completed = await self._peers_may_fail(
                claimed.timer_id, self._send_hop(claimed, complete=True)
            )
        except RetryLater as later:
            await retry_later(self.store.timers, claimed, later)
            return
        except Exception:
            log.exception("sending %s failed; its timer retries after the lease", hop_id)
            return
        if not completed:
            await self.store.timers.complete(claimed)

    async def _send_hop(self, timer: ClaimedTimer, *, complete: bool = False) -> bool:
        """Write the hop's timeline notes (after Notifying each user it holds: a hop an
        older version armed, with its pages). With `complete`
        (the hop's timer claimed by the write that armed it), the notes and the timer's
        completion go in one round trip (`TimerStore.complete_with`) unless a user could
        not be reached, whose report must come before the completion; True when the
        timer was completed here."""
        hop = HopPayload.decode(timer.payload)
        incident_id = hop.incident_id
        unreachable: list[tuple[str, str, str]] = []
        for page in hop.pages:  # a hop armed before pages went through the stream
            with _notify_span(hop, page) as notify_span:
                request = _notify_request(hop, page, traceparent_of(notify_span))
            # sent with the other hops' Notify calls waiting now (NotifyBatch)
            reply = await self.peers.notify(request, timeout=PEER_DEADLINE_S)
            if reply.unreachable:
                key, reason = request.idempotency_key, reply.unreachable_reason
                unreachable.append((page.user_id, key, reason))
        # Through the timeline outbox: one Redis round trip for the hop's notes, no RPC.
        notes = _timeline_requests(hop, timer.timer_id)
        traceparent = current_traceparent() or hop.traceparent
        if complete and notes and not unreachable:
            await self.store.timers.complete_with(
                timer, lambda pipe: self.timeline.queue(pipe, notes, traceparent)
            )
            return True
        await self.timeline.append(notes, traceparent)
        # After the level's own entries, so the timeline reads in order. A redone hop
        # reports again; the report's guard moves the level on once.
        for user_id, key, reason in unreachable:
            await self.report_unreachable(incident_id, user_id, key, reason, hop.traceparent)
        return False

    # policies

    async def _policy_for(
        self,
        incident: incidents_pb2.Incident,
        stored: pb_policy.EscalationPolicy | _Unread | None = _UNREAD,
    ) -> Policy | None:
        """The incident's policy: `stored` when the caller read it already (None: there
        is none), else read here."""
        assignment = incident.assignment
        target = assignment.WhichOneof("target")
        if target == "user_id":
            level = domain.Level(
                (domain.Target("user", assignment.user_id),), DIRECT_ASSIGNMENT_DELAY_MS
            )
            return Policy(f"user:{assignment.user_id}", assignment.user_id, (level,))
        policy_id = assignment.escalation_policy_id
        try:
            if not policy_id:
                raise NotFound("no escalation policy assigned")
            if isinstance(stored, _Unread):
                stored = await self.store.get_policy(policy_id)
            if stored is None:
                raise NotFound(f"escalation policy {policy_id!r} does not exist")
            return policy_from_proto(stored)
        except NotFound:
            await self.peers.incidents.AppendTimeline(
                incidents_pb2.AppendTimelineRequest(
                    incident_id=incident.id,
                    idempotency_key=f"no-policy:{incident.id}:{incident.version}",
                    entry=_timeline_entry(
                        _warning(
                            f"Escalation policy {policy_id or '(none)'} does not exist; "
                            "nobody is paged. Assign a policy to the service."
                        )
                    ),
                ),
                timeout=PEER_DEADLINE_S,
                wait_for_ready=True,
            )
            return None

    # auditing

    async def audit(
        self,
        shards: frozenset[int],
        grace_ms: int,
        window_ms: int,
        *,
        start_grace_ms: int | None = None,
    ) -> int:
        """Re-arm active escalations whose timer is gone, and start escalations for
        triggered incidents that have none. Cost follows the overdue and recent incidents,
        never the whole keyspace. Only incidents created more than `start_grace_ms`
        (default `grace_ms`) ago are started: a younger one's TRIGGERED event may still
        wait in the stream, and the consumer starts it in its turn (the server passes
        twice the backlog age limit, so under a storm the auditor neither races the
        consumer through the whole backlog, nor pages ahead of the lanes' order)."""
        now = self.clock.now_ms()
        fixed = 0
        for shard in sorted(shards):
            for incident_id in await self.store.overdue(shard, now - grace_ms):
                if await self.store.has_live_timer(incident_id):
                    continue
                state = await self.store.load(incident_id)
                if state is None or state.status is not Status.ACTIVE:
                    continue
                rearmed = replace(state, version=state.version + 1)
                if await self.store.write(rearmed, state.version, traceparent=""):
                    log.warning("auditor re-armed the escalation of incident %s", incident_id)
                    fixed += 1
        if 0 in shards:
            start_grace = grace_ms if start_grace_ms is None else start_grace_ms
            fixed += await self._start_missing(now - window_ms, now - start_grace)
        self.repaired += fixed
        _repaired.add(fixed)  # 0 too: the series exists before the first repair
        return fixed

    async def _start_missing(self, since_ms: int, before_ms: int) -> int:
        request = incidents_pb2.ListIncidentsRequest(
            statuses=[incidents_pb2.INCIDENT_STATUS_TRIGGERED], page_size=500
        )
        request.created_after.FromMilliseconds(since_ms)
        request.created_before.FromMilliseconds(before_ms)
        started = 0
        while True:
            reply = await self.peers.incidents.ListIncidents(
                request, timeout=PEER_DEADLINE_S, wait_for_ready=True
            )
            for incident in reply.incidents:
                if not await self.store.exists(incident.id):
                    log.warning("auditor starts the missing escalation of incident %s", incident.id)
                    await self.begin(incident, "")
                    started += 1
            if not reply.next_page_token:
                return started
            request.page_token = reply.next_page_token


def _peer_of(error: grpc.aio.AioRpcError) -> str:
    """The call's details, which name the peer's address (no secrets in them)."""
    return (error.details() or "")[:200]


def _warning(message: str) -> dict[str, Any]:
    return {"kind": incidents_pb2.TIMELINE_KIND_WARNING, "message": message}


def _unreachable_note(key: LevelKey, reported: dict[str, str]) -> dict[str, Any]:
    why = "; ".join(reported[user] for user in sorted(reported))
    return {
        "kind": incidents_pb2.TIMELINE_KIND_WARNING,
        "message": f"Escalation level {key.level + 1} (loop {key.loop + 1}) can reach nobody "
        f"({why}); moving on now",
        "attributes": {
            "level": str(key.level),
            "loop": str(key.loop),
            "epoch": str(key.epoch),
            "users": ",".join(sorted(reported)),
        },
    }


def _unconfirmed_note(previous: Awaiting, hold_max_ms: int) -> dict[str, Any]:
    return _warning(
        f"Escalation level {previous.level + 1} (loop {previous.loop + 1}): its pages were "
        f"not reported sent within {hold_max_ms // 1000} s of the next level's due time; "
        "the escalation goes on without waiting longer"
    )


def _exhausted_note(state: Escalation, work: Exhausted) -> dict[str, Any]:
    return {
        "kind": incidents_pb2.TIMELINE_KIND_POLICY_EXHAUSTED,
        "message": f"Escalation policy {state.policy.name or state.policy.id} exhausted after "
        f"{work.loops} loop(s); nobody acknowledged",
        "attributes": {"loops": str(work.loops), "epoch": str(state.epoch)},
    }


def _timeline_requests(hop: HopPayload, hop_id: str) -> list[incidents_pb2.AppendTimelineRequest]:
    """The hop's notes as timeline outbox entries, keyed by the hop and their place in it
    (appended once however often they are queued)."""
    return [
        incidents_pb2.AppendTimelineRequest(
            incident_id=hop.incident_id,
            entry=_timeline_entry(note),
            idempotency_key=f"{hop_id}/{i}",
        )
        for i, note in enumerate(hop.notes)
    ]


def _notify_span(hop: HopPayload, page: HopPage) -> trace.Span:
    """An `escalation.notify` span of the hop's trace for `page`, started and not ended:
    notification starts the user's cycle under it. The caller ends it once the page is
    queued (or sent through Notify); one never ended is never exported."""
    return tracer.start_span(
        "escalation.notify",
        context=context_from_traceparent(hop.traceparent),
        attributes={
            "incident.id": hop.incident_id,
            "user.id": page.user_id,
            "escalation.level": page.level,
            "escalation.loop": page.loop,
            "schedule.id": page.schedule_id,
        },
    )


def _notify_request(
    hop: HopPayload, page: HopPage, traceparent: str
) -> notification_pb2.NotifyRequest:
    """What notification is asked to do for `page` of `hop` (the key incident/epoch/level/
    loop/user makes a repeat a no-op), under `traceparent` (its `escalation.notify`
    span)."""
    request = notification_pb2.NotifyRequest(
        incident_id=hop.incident_id,
        user_id=page.user_id,
        idempotency_key=domain.idempotency_key(
            hop.incident_id, hop.epoch, page.level, page.loop, page.user_id
        ),
        traceparent=traceparent,
        urgency=common_pb2.URGENCY_LOW if hop.low_urgency else common_pb2.URGENCY_HIGH,
        service_id=hop.service_id,
        incident_summary=hop.summary,
        incident_number=hop.number,
    )
    if hop.created_ms:
        request.incident_created_at.FromMilliseconds(hop.created_ms)
    if page.address:
        kind = page.user_id.partition(":")[0]
        request.channel.CopyFrom(
            notification_pb2.ChannelTarget(
                type=notification_pb2.CONTACT_METHOD_TYPE_SLACK
                if kind == channeltargets.SLACK_CHANNEL
                else notification_pb2.CONTACT_METHOD_TYPE_TEAMS,
                address=page.address,
            )
        )
    if hop.next_level_ms is not None:
        # the page matters until then: a throttled send is retried until then
        request.next_level_at.FromMilliseconds(hop.next_level_ms)
    return request


def _words(incident: incidents_pb2.Incident | None) -> dict[str, Any]:
    """The hop's copy of what a page says of `incident` (none without one)."""
    if incident is None or not incident.summary:
        return {}
    created = incident.created_at.ToMilliseconds() if incident.HasField("created_at") else 0
    return {"summary": incident.summary, "number": incident.number, "created_ms": created}


def _timeline_entry(note: dict[str, Any]) -> incidents_pb2.TimelineEntry:
    return incidents_pb2.TimelineEntry(
        kind=note["kind"],
        message=note["message"],
        attributes=note.get("attributes", {}),
        actor=common_pb2.Actor(channel=common_pb2.CHANNEL_AUTO, display="escalation"),
    )
