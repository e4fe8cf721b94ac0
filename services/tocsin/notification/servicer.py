"""The NotificationService gRPC adapter: requests in, domain calls, responses out.

Every input is checked (violations named by proto field path) before anything is
written; settings writes also check with the scheduling service that the user exists.

At most MAX_CONCURRENT_CALLS requests (the pages of the page stream among them) are
handled at once; more wait their turn. With the
background work's own bounds (sends, the event consumer's one read per shard, the timer
worker's one claim per shard) that keeps this process within the Redis client's
connection pool however hard a burst of Notify calls or Twilio callbacks comes in.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from tocsin.notification import domain
from tocsin.notification.channels import ChannelRegistry
from tocsin.notification.contacts import ContactStore
from tocsin.notification.inbound import Inbound
from tocsin.notification.notices import Notices
from tocsin.notification.pager import Pager
from tocsin.notification.peers import UsersPeer
from tocsin.notification.sender import Sender
from tocsin.notification.store import PagingStore
from tocsin.runtime import channeltargets
from tocsin.runtime.audit import AuditLog
from tocsin.runtime.batches import answer_each
from tocsin.runtime.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound
from tocsin.runtime.ids import id_violations
from tocsin.runtime.telemetry import context_from_traceparent, current_traceparent
from tocsin.v1 import common_pb2, notification_pb2, notification_pb2_grpc

tracer = trace.get_tracer("tocsin.notification")

pb = notification_pb2
SERVICE_NAME = "tocsin.v1.NotificationService"
MAX_CONCURRENT_CALLS = 40
MAX_SERVICE_ID = 128
"""Longest service id a Notify may name (it only picks the sender's queue)."""

Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[["NotificationServicer", Request, Any], Awaitable[Response]]


def _bounded(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    @functools.wraps(handler)
    async def bounded(self: NotificationServicer, request: Request, context: Any) -> Response:
        async with self.slots:
            return await handler(self, request, context)

    return bounded


def _check(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(violations)


class NotificationServicer(notification_pb2_grpc.NotificationServiceServicer):
    def __init__(
        self,
        contacts: ContactStore,
        store: PagingStore,
        pager: Pager,
        sender: Sender,
        inbound: Inbound,
        channels: ChannelRegistry,
        users: UsersPeer,
    ) -> None:
        self.contacts = contacts
        self.store = store
        self.pager = pager
        self.sender = sender
        self.inbound = inbound
        self.channels = channels
        self.users = users
        self.notices = Notices(store, contacts, sender)
        self.slots = asyncio.Semaphore(MAX_CONCURRENT_CALLS)
        self.audit: AuditLog | None = None
        """Where configuration changes are recorded (set by the server)."""

    async def _record(self, action: str, object_id: str, before: Any, after: Any) -> None:
        if self.audit is not None:
            kind = "notification_rules" if action.startswith("rules") else "contact_method"
            await self.audit.record(action, kind, object_id, before, after)

    # -- settings -----------------------------------------------------------------------

    @_bounded
    async def CreateContactMethod(
        self, request: pb.CreateContactMethodRequest, context: Any
    ) -> pb.CreateContactMethodResponse:
        method = domain.validated_contact_method(request.contact_method, self.channels)
        if request.validate_only:  # the user may be created by the same apply
            if await self.contacts.owner_of(method.id) not in (None, method.user_id):
                raise AlreadyExists("that contact method id belongs to another user")
            current = await self.contacts.settings(method.user_id) or domain.Settings()
            domain.with_contact_method(current, method)
            return pb.CreateContactMethodResponse(contact_method=method)
        await self.users.get(method.user_id)
        before = await self.contacts.contact_method(method.user_id, method.id)
        settings = await self.contacts.change(
            method.user_id, lambda s: domain.with_contact_method(s, method)
        )
        stored = domain.contact_method(settings, method.id)
        await self._record("contact_method.create", method.id, before, stored)
        return pb.CreateContactMethodResponse(contact_method=stored)

    @_bounded
    async def UpdateContactMethod(
        self, request: pb.UpdateContactMethodRequest, context: Any
    ) -> pb.UpdateContactMethodResponse:
        method = domain.validated_contact_method(request.contact_method, self.channels)
        owner = await self.contacts.owner_of(method.id)
        if owner is None:
            raise NotFound(f"contact method {method.id!r} does not exist")
        if owner != method.user_id:
            raise InvalidArgument.one(
                "contact_method.user_id",
                f"a contact method cannot change owner (it belongs to {owner!r})",
            )
        if request.validate_only:
            return pb.UpdateContactMethodResponse(contact_method=method)
        before = await self.contacts.contact_method(owner, method.id)
        settings = await self.contacts.change(
            owner, lambda s: domain.with_replaced_contact_method(s, method)
        )
        stored = domain.contact_method(settings, method.id)
        await self._record("contact_method.update", method.id, before, stored)
        return pb.UpdateContactMethodResponse(contact_method=stored)

    @_bounded
    async def DeleteContactMethod(
        self, request: pb.DeleteContactMethodRequest, context: Any
    ) -> pb.DeleteContactMethodResponse:
        _check(id_violations(request.id, "id"))
        owner = await self.contacts.owner_of(request.id)
        if owner is None:
            raise NotFound(f"contact method {request.id!r} does not exist")
        before = await self.contacts.contact_method(owner, request.id)
        await self.contacts.change(owner, lambda s: domain.without_contact_method(s, request.id))
        await self._record("contact_method.delete", request.id, before, None)
        return pb.DeleteContactMethodResponse()

    @_bounded
    async def GetUserNotificationSettings(
        self, request: pb.GetUserNotificationSettingsRequest, context: Any
    ) -> pb.GetUserNotificationSettingsResponse:
        _check(id_violations(request.user_id, "user_id"))
        settings = await self.contacts.settings(request.user_id)
        if settings is None:
            await self.users.get(request.user_id)  # NotFound for a user nobody knows
            return pb.GetUserNotificationSettingsResponse()
        return settings

    @_bounded
    async def SetNotificationRules(
        self, request: pb.SetNotificationRulesRequest, context: Any
    ) -> pb.SetNotificationRulesResponse:
        _check(id_violations(request.user_id, "user_id"))
        if request.validate_only:  # the contact methods may be created by the same apply
            named = [pb.ContactMethod(id=r.contact_method_id) for r in request.rules]
            return pb.SetNotificationRulesResponse(
                rules=domain.validated_rules(request.rules, named)
            )
        await self.users.get(request.user_id)
        current = await self.contacts.settings(request.user_id)
        before = pb.SetNotificationRulesResponse(rules=current.rules if current else [])
        settings = await self.contacts.change(
            request.user_id, lambda s: domain.with_rules(s, request.rules)
        )
        after = pb.SetNotificationRulesResponse(rules=settings.rules)
        await self._record("rules.set", request.user_id, before, after)
        return after

    # -- paging -------------------------------------------------------------------------

    @_bounded
    async def Notify(self, request: pb.NotifyRequest, context: Any) -> pb.NotifyResponse:
        return await self.notify(request)

    async def apply_page(self, request: pb.NotifyRequest, traceparent: str) -> None:
        """A page escalation queued with the level that fired it (runtime/page_outbox.py),
        applied as a Notify call would be, in a span of the level's trace. A user nobody
        can reach is reported to escalation before the entry is acknowledged: should the
        report not arrive, this raises and the page is applied again (both idempotent).
        InvalidArgument for a request Notify would refuse (logged and dropped)."""
        with tracer.start_as_current_span(
            "notification.page",
            context=context_from_traceparent(request.traceparent or traceparent),
            kind=SpanKind.CONSUMER,
            attributes={"incident.id": request.incident_id, "user.id": request.user_id},
        ):
            async with self.slots:  # as the Notify RPC: a backlog read after an outage
                reply = await self.notify(request)  # starts 40 cycles at a time, not 4,096
            if reply.unreachable:
                await self.sender.escalation.report_unreachable(
                    request.incident_id,
                    request.user_id,
                    request.idempotency_key,
                    reply.unreachable_reason,
                    strict=True,
                )

    async def notify(self, request: pb.NotifyRequest) -> pb.NotifyResponse:
        """Notify's work (the RPC and the page stream): InvalidArgument naming the field."""
        channel = request.channel if request.HasField("channel") else None
        if channel is None:
            violations = id_violations(request.user_id, "user_id")
        else:
            violations = _channel_target_violations(request.user_id, channel)
        try:
            domain.check_incident_id(request.incident_id)
        except InvalidArgument as error:
            violations += error.violations
        if len(request.service_id) > MAX_SERVICE_ID:
            violations.append(
                FieldViolation("service_id", f"must be at most {MAX_SERVICE_ID} characters")
            )
        if len(request.incident_summary) > domain.MAX_INCIDENT_SUMMARY:
            violations.append(
                FieldViolation(
                    "incident_summary",
                    f"must be at most {domain.MAX_INCIDENT_SUMMARY} characters",
                )
            )
        if request.incident_number < 0:
            violations.append(FieldViolation("incident_number", "must not be negative"))
        if request.urgency not in common_pb2.Urgency.values():
            violations.append(FieldViolation("urgency", f"unknown urgency {request.urgency}"))
        if not request.idempotency_key:
            violations.append(FieldViolation("idempotency_key", "is required"))
        elif len(request.idempotency_key) > domain.MAX_IDEMPOTENCY_KEY:
            violations.append(
                FieldViolation(
                    "idempotency_key", f"must be at most {domain.MAX_IDEMPOTENCY_KEY} characters"
                )
            )
        _check(violations)
        if channel is not None:
            await self.contacts.ensure_channel_target(
                request.user_id, channel.type, channel.address
            )
        result = await self.pager.notify(
            request.incident_id,
            request.user_id,
            request.idempotency_key,
            request.traceparent or current_traceparent(),
            request.next_level_at.ToMilliseconds() if request.HasField("next_level_at") else 0,
            request.urgency,
            request.service_id,
            _words(request),
        )
        return pb.NotifyResponse(
            started=result.started,
            rules_scheduled=result.rules_scheduled,
            unreachable=bool(result.unreachable_reason),
            unreachable_reason=result.unreachable_reason,
        )

    async def NotifyBatch(
        self, request: pb.NotifyBatchRequest, context: Any
    ) -> pb.NotifyBatchResponse:
        """Each item as a Notify call (each takes a slot of its own), concurrently."""
        results = await answer_each(
            request.items, lambda item: self.Notify(item, context), pb.NotifyBatchResult, "Notify"
        )
        return pb.NotifyBatchResponse(results=results)

    @_bounded
    async def CancelNotifications(
        self, request: pb.CancelNotificationsRequest, context: Any
    ) -> pb.CancelNotificationsResponse:
        domain.check_incident_id(request.incident_id)
        return pb.CancelNotificationsResponse(
            cancelled=await self.pager.cancel(request.incident_id)
        )

    @_bounded
    async def ListAttempts(
        self, request: pb.ListAttemptsRequest, context: Any
    ) -> pb.ListAttemptsResponse:
        if request.user_id:
            if request.incident_id:
                raise InvalidArgument.one("user_id", "exactly one of incident_id, user_id")
            if not channeltargets.is_target_id(request.user_id):
                _check(id_violations(request.user_id, "user_id"))
            attempts = await self.store.list_user_attempts(request.user_id)
            return pb.ListAttemptsResponse(attempts=attempts)
        domain.check_incident_id(request.incident_id)
        return pb.ListAttemptsResponse(attempts=await self.store.list_attempts(request.incident_id))

    @_bounded
    async def SendTestPage(
        self, request: pb.SendTestPageRequest, context: Any
    ) -> pb.SendTestPageResponse:
        _check(id_violations(request.user_id, "user_id"))
        user = await self.users.get(request.user_id)
        return pb.SendTestPageResponse(attempts=await self.sender.test_page(user))

    async def SendNotice(
        self, request: pb.SendNoticeRequest, context: Any
    ) -> pb.SendNoticeResponse:
        return await self.notices.send(request)

    # -- webhooks (signature already checked by the gateway) -------------------------------

    @_bounded
    async def HandleIncomingSms(
        self, request: pb.HandleIncomingSmsRequest, context: Any
    ) -> pb.HandleIncomingSmsResponse:
        reply = await self.inbound.incoming_sms(
            request.from_number, request.body, request.message_sid
        )
        return pb.HandleIncomingSmsResponse(reply=reply)

    @_bounded
    async def HandleVoiceKeypress(
        self, request: pb.HandleVoiceKeypressRequest, context: Any
    ) -> pb.HandleVoiceKeypressResponse:
        twiml = await self.inbound.keypress(request.call_sid, request.digits, request.attempt_id)
        return pb.HandleVoiceKeypressResponse(twiml=twiml)

    @_bounded
    async def HandleSlackAction(
        self, request: pb.HandleSlackActionRequest, context: Any
    ) -> pb.HandleSlackActionResponse:
        text = await self.inbound.slack_action(
            request.slack_user_id,
            request.action,
            request.attempt_id,
            request.channel_id,
            request.message_ts,
        )
        return pb.HandleSlackActionResponse(text=text)

    @_bounded
    async def HandleDeliveryStatus(
        self, request: pb.HandleDeliveryStatusRequest, context: Any
    ) -> pb.HandleDeliveryStatusResponse:
        if not request.provider_id and not request.attempt_id:
            raise InvalidArgument.one("provider_id", "is required (or attempt_id)")
        known = await self.inbound.delivery_status(
            request.provider_id, request.status, request.error_code, request.attempt_id
        )
        return pb.HandleDeliveryStatusResponse(known=known)

    async def HandleDeliveryStatusBatch(
        self, request: pb.HandleDeliveryStatusBatchRequest, context: Any
    ) -> pb.HandleDeliveryStatusBatchResponse:
        """Each item as a HandleDeliveryStatus call (each takes a slot), concurrently."""
        results = await answer_each(
            request.items,
            lambda item: self.HandleDeliveryStatus(item, context),
            pb.HandleDeliveryStatusBatchResult,
            "HandleDeliveryStatus",
        )
        return pb.HandleDeliveryStatusBatchResponse(results=results)


_CHANNEL_KINDS = {
    domain.SLACK: channeltargets.SLACK_CHANNEL,
    notification_pb2.CONTACT_METHOD_TYPE_TEAMS: channeltargets.TEAMS_CHANNEL,
}


def _channel_target_violations(user_id: str, channel: pb.ChannelTarget) -> list[FieldViolation]:
    """A channel page names a Slack or Teams channel and, as `user_id`, its target id."""
    kind = _CHANNEL_KINDS.get(channel.type)
    if kind is None:
        return [FieldViolation("channel.type", "must be slack or teams")]
    found = channeltargets.violations(kind, channel.address, "channel.address")
    if not found and user_id != channeltargets.target_id(kind, channel.address):
        found.append(FieldViolation("user_id", "must be the channel's target id"))
    return found


def _words(request: pb.NotifyRequest) -> domain.IncidentWords | None:
    """The incident's words Notify carried (None: not carried)."""
    if not request.incident_summary or not request.HasField("incident_created_at"):
        return None
    return domain.IncidentWords(
        request.incident_summary,
        request.incident_number,
        request.incident_created_at.ToMilliseconds(),
    )
