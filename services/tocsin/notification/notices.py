"""Notices: a short message to a person or a channel that is no page (a shift hand-off).

A notice is sent as a page is, through the channel registry and the sender
(`Sender.deliver_outside_incident`): one attempt per target, recorded SENDING before its
channel is called, the Twilio rate limits (the number's interval and the sender's rate)
for SMS, provider fail-over and quick retries, spans, and the outcome recorded. Its
attempts are listed with the user's test pages (ListAttempts with `user_id`; a channel's
under its target id, e.g. `slack_channel:c024be91l`), as `ATTEMPT_KIND_NOTICE` with the
notice's key, never in an incident's.

At most once per idempotency key: the key (kept 30 days) and the notice's attempts are
recorded in one script (lua/notice_begin.lua) before any channel is called, so a notice
whose sender fired twice, on two workers, restarted, or failed over to another replica
goes out once; one whose process died after that record is not resent (its attempts are
marked UNKNOWN by the sweep), nor one whose send failed (a notice is a courtesy, a page
is not: pages have their own at-most-once-per-attempt cycle). A person is told on every
enabled SMS, email and Slack contact method (not by a call, not by webhook); a channel
target is a Slack channel id.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tocsin.notification import domain
from tocsin.notification.channels import Channel, Message
from tocsin.notification.contacts import ContactStore
from tocsin.notification.domain import AttemptLocation
from tocsin.notification.records import AttemptRecord
from tocsin.notification.sender import Sender, channel_routes
from tocsin.notification.store import PagingStore
from tocsin.runtime import channeltargets
from tocsin.runtime.errors import FieldViolation, InvalidArgument
from tocsin.v1 import notification_pb2 as pb

NOTICE_TYPES = (
    pb.CONTACT_METHOD_TYPE_SMS,
    pb.CONTACT_METHOD_TYPE_EMAIL,
    pb.CONTACT_METHOD_TYPE_SLACK,
)
KEEP_MS = 30 * 86_400_000
MAX_TEXT = 1000


class Notices:
    def __init__(self, store: PagingStore, contacts: ContactStore, sender: Sender) -> None:
        self.store = store
        self.contacts = contacts
        self.sender = sender
        self._delivering: set[asyncio.Future[Any]] = set()
        """Notices being sent, whatever became of the calls that began them."""

    async def send(self, request: pb.SendNoticeRequest) -> pb.SendNoticeResponse:
        _check(request)
        if request.HasField("channel"):
            owner = channeltargets.target_id(channeltargets.SLACK_CHANNEL, request.channel.address)
            methods = [
                pb.ContactMethod(
                    id=owner,
                    user_id=owner,
                    type=request.channel.type,
                    address=request.channel.address,
                )
            ]
        else:
            owner = request.user_id
            settings = await self.contacts.settings(owner)
            methods = [
                m
                for m in (settings.contact_methods if settings else [])
                if m.type in NOTICE_TYPES and not m.disabled
            ]
        targets: list[tuple[pb.ContactMethod, Channel]] = []
        for method in methods:
            channel = self.sender.channels.find(method.type)
            if channel is not None:
                targets.append((method, channel))
        now = self.sender.clock.now_ms()
        routes = [channel_routes(channel) for _, channel in targets]
        records = [
            AttemptRecord(
                id=domain.notice_attempt_id(request.idempotency_key, i, owner),
                incident_id="",
                user_id=owner,
                contact_method_id=method.id,
                channel=int(method.type),
                rule_index=-1,
                status=domain.SENDING,
                created_ms=now,
                updated_ms=now,
                providers=(routes[i][0].name,) if routes[i] else (),
                notice=True,
                notice_key=request.idempotency_key,
            )
            for i, (method, _) in enumerate(targets)
        ]
        begun = await self.store.begin_notice(request.idempotency_key, owner, records, KEEP_MS)
        if begun is None:
            return pb.SendNoticeResponse(first=False)
        message = Message(request.text, subject=request.text[:120])
        # Once begun, the notice goes out whatever becomes of this call: a caller whose
        # deadline passed (or who hung up) would find the key taken when it asks again,
        # so cancelling the sends with the call lost the notice. The call only waits
        # for them (they are held here: the event loop keeps weak references only).
        delivery = asyncio.ensure_future(
            asyncio.gather(
                *(
                    self.sender.deliver_outside_incident(
                        AttemptLocation(record.id, None, owner), method, channel, message, routes[i]
                    )
                    for i, (record, (method, channel)) in enumerate(
                        zip(records, targets, strict=True)
                    )
                )
            )
        )
        self._delivering.add(delivery)
        delivery.add_done_callback(self._delivering.discard)
        errors = await asyncio.shield(delivery)
        return pb.SendNoticeResponse(first=True, sent=sum(error is None for error in errors))


def _check(request: pb.SendNoticeRequest) -> None:
    violations: list[FieldViolation] = []
    if not request.text.strip() or len(request.text) > MAX_TEXT:
        violations.append(FieldViolation("text", f"must be 1 to {MAX_TEXT} characters"))
    if not request.idempotency_key:
        violations.append(FieldViolation("idempotency_key", "is required"))
    channel_target = request.HasField("channel")
    if channel_target == bool(request.user_id):
        violations.append(FieldViolation("user_id", "exactly one of user_id, channel"))
    if channel_target and request.channel.type != pb.CONTACT_METHOD_TYPE_SLACK:
        violations.append(FieldViolation("channel.type", "must be slack"))
    elif channel_target:
        violations += channeltargets.violations(
            channeltargets.SLACK_CHANNEL, request.channel.address, "channel.address"
        )
    if violations:
        raise InvalidArgument(violations)
