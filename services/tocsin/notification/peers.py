"""What notification asks of the other services, through their gRPC contracts.

Lookups made while paging (the incident's summary, its service's name) and timeline
entries are best effort under a short deadline: a page may go out with plainer text or a
missing timeline line, but it never waits long on them and never fails because of them.
Acknowledge and Resolve (from a reply) and user checks (on settings changes) report their
errors, because the person on the other end must know whether it worked. Every call waits
for a peer that is starting (wait_for_ready) within its deadline instead of failing at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import grpc

from tocsin.client.client import TocsinClient
from tocsin.runtime.clock import Clock
from tocsin.runtime.errors import NotFound, Unavailable
from tocsin.runtime.report_outbox import ReportOutbox
from tocsin.runtime.telemetry import current_traceparent
from tocsin.runtime.timeline_outbox import TimelineOutbox
from tocsin.v1 import common_pb2, escalation_pb2, incidents_pb2, scheduling_pb2

log = logging.getLogger(__name__)
_Reply = TypeVar("_Reply")

LOOKUP_TIMEOUT_S = 1.0
SERVICE_NAME_TTL_MS = 5 * 60 * 1000
NOTIFICATION_ACTOR = common_pb2.Actor(channel=common_pb2.CHANNEL_AUTO, display="notification")


class IncidentsPeer:
    def __init__(
        self,
        client: Callable[[], TocsinClient],
        clock: Clock,
        timeline: TimelineOutbox,
        timeout_s: float = LOOKUP_TIMEOUT_S,
    ) -> None:
        self._client = client
        self.clock = clock
        self.timeout_s = timeout_s
        self.timeline = timeline
        """Where timeline entries go (runtime/timeline_outbox.py), not AppendTimeline."""
        self._service_names: dict[str, tuple[str, int]] = {}
        self._refreshing: dict[str, asyncio.Task[str]] = {}
        """Per service, the lookup of its name in flight (one at a time)."""

    @property
    def client(self) -> Callable[[], TocsinClient]:
        """The peer client factory (shared with the other peers of this process)."""
        return self._client

    async def get_incident(
        self, incident_id: str, *, include_alerts: bool = False
    ) -> incidents_pb2.Incident | None:
        """The incident, or None if it does not exist or incidents cannot be reached."""
        try:
            reply = await self._client().incidents.GetIncident(
                incidents_pb2.GetIncidentRequest(
                    incident_id=incident_id, include_alerts=include_alerts
                ),
                timeout=self.timeout_s,
                wait_for_ready=True,
            )
        except grpc.aio.AioRpcError as error:
            log.warning("incident %s: lookup failed: %s", incident_id, error.code().name)
            return None
        return reply.incident

    def cached_service_name(self, service_id: str) -> str | None:
        """The service's display name if it is cached and fresh; None otherwise."""
        cached = self._service_names.get(service_id)
        if cached is not None and cached[1] > self.clock.now_ms():
            return cached[0]
        return None

    async def service_name(self, service_id: str) -> str:
        """The service's display name (cached a few minutes); its id if it cannot be had.
        A name cached longer than that is still used, at once, while it is looked up again
        in the background for the pages after: otherwise a page every few minutes per
        service waited for a GetService call (a rename shows on the next page, as before,
        or on the one after it). Lookups of one service share one call."""
        if not service_id:
            return ""
        cached = self._service_names.get(service_id)
        if cached is not None:
            if cached[1] <= self.clock.now_ms():
                self._lookup(service_id)  # for the next pages
            return cached[0]
        return await asyncio.shield(self._lookup(service_id))

    def _lookup(self, service_id: str) -> asyncio.Task[str]:
        task = self._refreshing.get(service_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._look_up(service_id))
            self._refreshing[service_id] = task
            task.add_done_callback(lambda done: self._looked_up(service_id, done))
        return task

    def _looked_up(self, service_id: str, task: asyncio.Task[str]) -> None:
        self._refreshing.pop(service_id, None)
        if not task.cancelled() and task.exception() is not None:  # retrieved: logged
            log.warning("service %s: name lookup failed: %r", service_id, task.exception())

    async def _look_up(self, service_id: str) -> str:
        now = self.clock.now_ms()
        try:
            reply = await self._client().incidents.GetService(
                incidents_pb2.GetServiceRequest(id=service_id),
                timeout=self.timeout_s,
                wait_for_ready=True,
            )
        except grpc.aio.AioRpcError as error:
            log.warning("service %s: name lookup failed: %s", service_id, error.code().name)
            cached = self._service_names.get(service_id)
            return service_id if cached is None else cached[0]
        name = reply.service.name or service_id
        self._service_names[service_id] = (name, now + SERVICE_NAME_TTL_MS)
        return name

    async def append_timeline(
        self,
        incident_id: str,
        message: str,
        attributes: Mapping[str, str],
        idempotency_key: str,
        kind: incidents_pb2.TimelineKind.ValueType = incidents_pb2.TIMELINE_KIND_NOTIFICATION,
    ) -> bool:
        """Append a timeline entry once per key, through the timeline outbox (one Redis
        round trip, no RPC); False (logged) if it could not be queued."""
        entry = incidents_pb2.TimelineEntry(
            kind=kind, message=message, actor=NOTIFICATION_ACTOR, attributes=dict(attributes)
        )
        entry.at.FromMilliseconds(self.clock.now_ms())
        request = incidents_pb2.AppendTimelineRequest(
            incident_id=incident_id, entry=entry, idempotency_key=idempotency_key
        )
        try:
            await self.timeline.append([request], current_traceparent())
        except Exception as error:  # a note is best effort; Redis errors vary
            log.warning(
                "incident %s: timeline entry %s not queued: %s",
                incident_id,
                idempotency_key,
                type(error).__name__,
            )
            return False
        return True

    async def acknowledge(
        self, incident_id: str, actor: common_pb2.Actor
    ) -> incidents_pb2.AcknowledgeResponse:
        return await self._client().incidents.Acknowledge(
            incidents_pb2.AcknowledgeRequest(incident_id=incident_id, actor=actor),
            timeout=5 * self.timeout_s,
            wait_for_ready=True,
        )

    async def resolve(
        self, incident_id: str, actor: common_pb2.Actor
    ) -> incidents_pb2.ResolveResponse:
        return await self._client().incidents.Resolve(
            incidents_pb2.ResolveRequest(incident_id=incident_id, actor=actor),
            timeout=5 * self.timeout_s,
            wait_for_ready=True,
        )


class UsersPeer:
    def __init__(self, client: Callable[[], TocsinClient], timeout_s: float = 5.0) -> None:
        self._client = client
        self.timeout_s = timeout_s

    async def get(self, user_id: str) -> scheduling_pb2.User:
        """The user; NotFound if scheduling does not know them, Unavailable if it is down."""
        try:
            reply = await self._client().scheduling.GetUser(
                scheduling_pb2.GetUserRequest(id=user_id),
                timeout=self.timeout_s,
                wait_for_ready=True,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"user {user_id!r} does not exist") from None
            raise Unavailable(
                f"cannot check user {user_id!r} with the scheduling service: {error.code().name}"
            ) from None
        return reply.user


REPORT_ATTEMPTS = 3
"""A report escalation did not answer in time (DEADLINE_EXCEEDED) or could not take
(UNAVAILABLE) is sent again at once, up to this many times in all: each try waits out its
own deadline, and the reports are idempotent. Once, under overload (200 new incidents a
second on two cores), a lost report held the next level for minutes."""
_RETRIED = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)


class EscalationPeer:
    """Tells escalation that a user it paged cannot be reached (every rule failed), so a
    level nobody can answer moves on at once, and that a user's first page went out, so
    the next level may follow. Best effort (REPORT_ATTEMPTS tries): should escalation not
    answer, an unreachable level waits out its delay, as it would have anyway. Page-out
    reports go through the report outbox (runtime/report_outbox.py), not an RPC: should
    one not be queued, the next level goes ahead at most LEVEL_HOLD_MAX_MS
    (escalation/domain.py) after its due time."""

    def __init__(
        self, client: Callable[[], TocsinClient], reports: ReportOutbox, timeout_s: float = 5.0
    ) -> None:
        self.client = client
        self.reports = reports
        self.timeout_s = timeout_s

    async def _call(self, send: Callable[[], Awaitable[_Reply]]) -> _Reply:
        """`send()`, tried again at once after DEADLINE_EXCEEDED or UNAVAILABLE
        (REPORT_ATTEMPTS in all); raises the last error."""
        for attempt in range(1, REPORT_ATTEMPTS + 1):
            try:
                return await send()
            except grpc.aio.AioRpcError as error:
                if attempt == REPORT_ATTEMPTS or error.code() not in _RETRIED:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def report_unreachable(
        self,
        incident_id: str,
        user_id: str,
        idempotency_key: str,
        reason: str,
        *,
        strict: bool = False,
    ) -> bool:
        """True when the report moved the escalation on. `strict`: a report that did not
        arrive raises (else it is logged and False)."""
        request = escalation_pb2.ReportUnreachableRequest(
            incident_id=incident_id, user_id=user_id, idempotency_key=idempotency_key, reason=reason
        )
        try:
            reply = await self._call(
                lambda: self.client().escalation.ReportUnreachable(
                    request, timeout=self.timeout_s, wait_for_ready=True
                )
            )
        except grpc.aio.AioRpcError as error:
            if strict and error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            _report_failed(
                error, "incident %s: could not report %s unreachable", incident_id, user_id
            )
            return False
        return reply.advanced

    async def report_page_out(
        self, incident_id: str, user_id: str, idempotency_key: str, out_ms: int
    ) -> bool:
        """Queue the report for escalation (runtime/report_outbox.py: one Redis round trip,
        no RPC; escalation applies it once it reads it). False (logged) if it could not be
        queued: the next level then waits for its bound."""
        request = escalation_pb2.ReportPageOutRequest(
            incident_id=incident_id, user_id=user_id, idempotency_key=idempotency_key
        )
        request.out_at.FromMilliseconds(out_ms)
        try:
            await self.reports.append([request], current_traceparent())
        except Exception as error:  # Redis errors vary
            log.warning(
                "incident %s: could not queue %s's page-out report for escalation: %s",
                incident_id,
                user_id,
                type(error).__name__,
            )
            return False
        return True


def _report_failed(error: grpc.aio.AioRpcError, what: str, *args: str) -> None:
    """Log a report to escalation that did not arrive: quietly for INVALID_ARGUMENT (a
    Notify that escalation did not send, with its own key format), else as a warning."""
    level = logging.DEBUG if error.code() == grpc.StatusCode.INVALID_ARGUMENT else logging.WARNING
    log.log(level, what + " to escalation: %s", *args, error.code().name)
