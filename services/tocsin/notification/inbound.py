"""What comes back from Twilio: SMS replies, keypresses and delivery status callbacks.

The gateway has already checked each webhook's signature. A reply is read with
messages.parse_sms_reply and turned into an Acknowledge or Resolve on the incidents
service, with the replying user as the actor; the answer says what happened in words a
half-awake person understands ("Acknowledged #123: disk full on db1"). A number tocsin
does not know gets no answer at all, so nobody can probe who is on call.

A reply acts only on the incident it answers. A code names one incident while the page
that carried it can be answered (contacts.py, lua/page_prepare.lua); a code that names
nothing, or more than one incident (two users sharing a number), and a bare "ack" while
more than one of the number's paged incidents is open, act on nothing: the answer lists
the open incidents with their codes. A keypress acts on the incident of the call it was
pressed in (the attempt named in the signed Gather URL), never through a code.

Twilio's signatures carry no timestamp, so a captured request stays valid. Each webhook
is therefore handled once: its MessageSid (a keypress: CallSid and digits; a status
callback: the sid, status and error) is marked seen with SET NX before anything changes,
and a repeat within WEBHOOK_SEEN_TTL_MS is answered without acting. Acting is an RPC to
another service, so the mark cannot commit with it: it is set first and removed when the
action could not be recorded, so a retry may act (at most once, never twice).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import grpc

from tocsin.notification import domain, keys, messages, pagemetrics
from tocsin.notification.channels import channel_name
from tocsin.notification.channels.slack import SlackChannel
from tocsin.notification.contacts import ContactStore, LiveCode
from tocsin.notification.messages import ReplyAction
from tocsin.notification.peers import IncidentsPeer
from tocsin.notification.providers import ProviderError, mask_phone
from tocsin.notification.sender import Sender
from tocsin.notification.store import PagingStore
from tocsin.runtime import channeltargets
from tocsin.v1 import common_pb2, incidents_pb2, notification_pb2

log = logging.getLogger(__name__)

WEBHOOK_SEEN_TTL_MS = 30 * 24 * 3600 * 1000
"""How long a handled webhook is remembered: far beyond Twilio's own retries (minutes)
and beyond a reply code's answer window and quarantine (8 days), so a replay within it
changes nothing. A request replayed later is handled as new (see README)."""
LISTED_INCIDENTS = 5
"""A reply asking which incident lists at most this many (an SMS is read on a phone)."""
_OPEN_STATUSES = (
    incidents_pb2.INCIDENT_STATUS_TRIGGERED,
    incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED,
)

VOICE_RETRY_TEXT = "Sorry, that is not an option."
VOICE_UNKNOWN_CALL = "Sorry, this call is not linked to a page. Goodbye."
VOICE_TEST_CALL = "This was a test call. Goodbye."
VOICE_FAILED = "Sorry, tocsin could not record that."
VOICE_REPEAT = "Goodbye."
ACK_WORDS = {True: "Acknowledged", False: "Already acknowledged"}
RESOLVE_WORDS = {True: "Resolved", False: "Already resolved"}


@dataclass(frozen=True)
class Outcome:
    """The result of acting on an incident, in words."""

    reply: str
    done: bool
    """False when the action could not be recorded (try again)."""


class Inbound:
    def __init__(
        self,
        store: PagingStore,
        contacts: ContactStore,
        incidents: IncidentsPeer,
        sender: Sender,
        public_url: str,
        slack: SlackChannel | None = None,
    ) -> None:
        self.store = store
        self.contacts = contacts
        self.incidents = incidents
        self.sender = sender
        self.public_url = public_url
        self.slack = slack

    # -- SMS ----------------------------------------------------------------------------

    async def incoming_sms(self, from_number: str, body: str, message_sid: str = "") -> str:
        """The answer to an SMS from `from_number` ('' = send no answer); a MessageSid seen
        before is answered with nothing and changes nothing."""
        return await self._once(
            f"sms:{message_sid}" if message_sid else "",
            lambda: self._incoming_sms(from_number, body),
            repeat="",
        )

    async def _incoming_sms(self, from_number: str, body: str) -> Outcome:
        try:
            number = domain.normalize_phone(from_number, "from_number")
        except domain.InvalidArgument:
            return Outcome("", True)
        owners = await self.contacts.owners_of_number(number)
        if not owners:
            log.info("SMS from unknown number %s ignored", mask_phone(number))
            return Outcome("", True)
        reply = messages.parse_sms_reply(body)
        if reply is None or reply.action == ReplyAction.HELP:
            return Outcome(domain.help_reply(), True)
        if reply.action in (ReplyAction.OPT_OUT, ReplyAction.OPT_IN):
            enabled = reply.action == ReplyAction.OPT_IN
            changed = await self.contacts.set_number_enabled(number, enabled)
            log.info(
                "%s from %s: %s %s",
                reply.action.value,
                mask_phone(number),
                "enabled" if enabled else "disabled",
                ", ".join(changed) or "nothing",
            )
            return Outcome("", True)  # Twilio answers STOP / START itself
        users = sorted({o.user_id for o in owners})
        target = await self._target(number, users, reply.code, reply.action)
        if isinstance(target, str):
            return Outcome(target, True)
        incident_id, user_id = target
        actor = common_pb2.Actor(user_id=user_id, channel=common_pb2.CHANNEL_SMS)
        return await self._act(reply.action, incident_id, actor)

    async def _target(
        self, number: str, users: Sequence[str], code: str | None, action: ReplyAction
    ) -> tuple[str, str] | str:
        """(incident, user) a reply is about, or the answer explaining why there is none.

        A code must name exactly one incident among the codes the number's users can still
        answer; a bare "ack" needs at most one of them still open (then that one; with none
        open, the latest page's, whose answer says it is already done). Anything else asks.
        """
        live = [c for user_id in users for c in await self.contacts.live_codes(user_id)]
        if code is not None:
            wanted = code.lstrip("0") or "0"
            named = _by_incident(c for c in live if c.code == wanted)
            if len(named) == 1:
                only = next(iter(named.values()))
                return only.incident_id, only.user_id
            head = (
                f"Code {code} names more than one incident."
                if named
                else domain.unknown_code_reply(code) + "."
            )
            return await self._which_incident(head, live, action)
        still_open = await self._open_incidents(live)
        if len(still_open) == 1:
            only = still_open[0][0]
            return only.incident_id, only.user_id
        if len(still_open) > 1:
            return _which_reply("Which incident?", still_open, action)
        latest = await self.contacts.latest_page(number)
        if latest is None:
            return domain.NO_RECENT_PAGE_REPLY
        return latest.incident_id, latest.user_id

    async def _which_incident(self, head: str, live: list[LiveCode], action: ReplyAction) -> str:
        still_open = await self._open_incidents(live)
        return _which_reply(head, still_open, action) if still_open else head.rstrip(".")

    async def _open_incidents(self, live: list[LiveCode]) -> list[tuple[LiveCode, str, str]]:
        """The live codes whose incident is not known to be resolved, with its summary and
        its name ("#18"), one per incident (an incident paged to two users sharing the
        number is listed once)."""
        codes = list(_by_incident(live).values())
        mirrors = await asyncio.gather(*(self.store.incident_mirror(c.incident_id) for c in codes))
        return [
            (code, summary, label)
            for code, (status, summary, label) in zip(codes, mirrors, strict=True)
            if status is None or status in _OPEN_STATUSES
        ]

    async def _act(self, action: ReplyAction, incident_id: str, actor: common_pb2.Actor) -> Outcome:
        """Acknowledge or resolve; the answer's incident goes straight into the status
        mirror, so the pages still pending stop now rather than when the event arrives."""
        try:
            if action == ReplyAction.ACK:
                acked = await self.incidents.acknowledge(incident_id, actor)
                incident, changed, words = acked.incident, acked.changed, ACK_WORDS
            else:
                resolved = await self.incidents.resolve(incident_id, actor)
                incident, changed, words = resolved.incident, resolved.changed, RESOLVE_WORDS
        except grpc.aio.AioRpcError as error:
            label = (await self.store.incident_mirror(incident_id))[2]
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return Outcome(f"{label} is already resolved", True)
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return Outcome(f"{label} no longer exists", True)
            log.warning("%s of %s failed: %s", action.value, incident_id, error.code().name)
            return Outcome(f"Could not {action.value} {label} just now; try again", False)
        await self.store.apply_incident(incident)
        return Outcome(f"{words[changed]} {domain.incident_title(incident)}", True)

    # -- voice --------------------------------------------------------------------------

    async def keypress(self, call_sid: str, digits: str, attempt_id: str) -> str:
        """TwiML answering a Gather: 4 acknowledges, 6 resolves, anything else repeats.

        The incident is the one of the call's attempt (named in the signed Gather URL, or
        found by CallSid). A keypress that acts is handled once per CallSid and digits: a
        repeat hangs up and changes nothing."""
        attempt = await self._attempt(attempt_id, call_sid)
        if attempt is None:
            return messages.gather_response_twiml(VOICE_UNKNOWN_CALL)
        if not attempt.incident_id:
            return messages.gather_response_twiml(VOICE_TEST_CALL)
        action = messages.parse_keypress(digits)
        retry_url = f"{self.public_url}/twilio/voice?attempt={attempt.id}"
        if action is None:
            return messages.gather_response_twiml(VOICE_RETRY_TEXT, retry_action_url=retry_url)
        actor = common_pb2.Actor(user_id=attempt.user_id, channel=common_pb2.CHANNEL_VOICE)
        incident_id = attempt.incident_id

        async def act() -> Outcome:
            outcome = await self._act(action, incident_id, actor)
            if not outcome.done:
                return Outcome(
                    messages.gather_response_twiml(VOICE_FAILED, retry_action_url=retry_url),
                    False,
                )
            return Outcome(messages.gather_response_twiml(f"{outcome.reply}. Goodbye."), True)

        return await self._once(
            f"voice:{call_sid}:{digits.strip()[:16]}" if call_sid else "",
            act,
            repeat=messages.gather_response_twiml(VOICE_REPEAT),
        )

    # -- slack --------------------------------------------------------------------------

    async def slack_action(
        self, slack_user_id: str, action: str, attempt_id: str, channel_id: str, ts: str
    ) -> str:
        """A button of a Slack page: act as the tocsin user it was sent to, only if the
        presser is that contact method's Slack user; once per attempt, action and user;
        then the message says what happened (buttons gone)."""
        what = {"ack": ReplyAction.ACK, "resolve": ReplyAction.RESOLVE}.get(action)
        location = domain.locate_attempt(attempt_id)
        attempt = await self.store.attempt(location) if location else None
        if what is None or attempt is None or not attempt.incident_id:
            return "This button names no page tocsin knows."
        if channeltargets.is_target_id(attempt.user_id):
            # A channel's page: anyone in it may act, as the tocsin user they are.
            user_id = await self._slack_user(slack_user_id)
            if user_id is None:
                return (
                    "tocsin does not know who you are: add your Slack member id as a "
                    "`slack` contact method, then press again."
                )
        else:
            method = await self.contacts.contact_method(attempt.user_id, attempt.contact_method_id)
            linked = method is not None and method.type == domain.SLACK
            if not linked or method is None or method.address != slack_user_id.strip().upper():
                log.warning("a Slack button of %s was pressed by another Slack user", attempt.id)
                return "Only the person this page was sent to can act on it here."
            user_id = attempt.user_id
        actor = common_pb2.Actor(user_id=user_id, channel=common_pb2.CHANNEL_SLACK)
        incident_id = attempt.incident_id

        async def act() -> Outcome:
            outcome = await self._act(what, incident_id, actor)
            if outcome.done and self.slack is not None and channel_id and ts:
                try:
                    await self.slack.update(channel_id, ts, outcome.reply)
                except ProviderError as error:
                    log.warning("could not update the Slack message of %s: %s", attempt.id, error)
            return outcome

        return await self._once(
            f"slack:{attempt.id}:{what.value}:{slack_user_id[:32]}",
            act,
            repeat="Already done.",
        )

    async def _slack_user(self, slack_user_id: str) -> str | None:
        """The one tocsin user with a `slack` contact method for this Slack user (None
        when there is none, or more than one: nobody acts on a guess)."""
        address = slack_user_id.strip().upper()
        users: set[str] = set()
        for owner in await self.contacts.owners_of_number(address):
            if channeltargets.is_target_id(owner.user_id):
                continue
            method = await self.contacts.contact_method(owner.user_id, owner.contact_method_id)
            if method is not None and method.type == domain.SLACK and method.address == address:
                users.add(owner.user_id)
        return users.pop() if len(users) == 1 else None

    # -- once per webhook ---------------------------------------------------------------

    async def _once(self, name: str, handle: Callable[[], Awaitable[Outcome]], repeat: str) -> str:
        """Run `handle` unless the webhook `name` was handled before (then answer `repeat`).
        The mark is set first and removed if `handle` could not record its action."""
        if not name:
            return (await handle()).reply
        seen = keys.webhook_seen(name)
        if not await self.store.redis.set(seen, "1", nx=True, px=WEBHOOK_SEEN_TTL_MS):
            log.info("a repeated Twilio webhook (%s) was answered and ignored", name[:64])
            return repeat
        try:
            outcome = await handle()
        except BaseException:
            await self.store.redis.delete(seen)
            raise
        if not outcome.done:
            await self.store.redis.delete(seen)
        return outcome.reply

    # -- delivery status ----------------------------------------------------------------

    async def delivery_status(
        self, provider_id: str, status: str, error_code: int, attempt_id: str
    ) -> bool:
        """Record a status callback on its attempt; False if no attempt is known. The same
        callback again (same sid, status and error) is known and changes nothing."""
        name = f"status:{provider_id or attempt_id}:{status.strip().lower()[:32]}:{error_code}"
        known = True

        async def record() -> Outcome:
            nonlocal known
            known = await self._delivery_status(provider_id, status, error_code, attempt_id)
            return Outcome("", known)

        await self._once(name, record, repeat="")
        return known

    async def _delivery_status(
        self, provider_id: str, status: str, error_code: int, attempt_id: str
    ) -> bool:
        # No read first: the update itself answers None for an attempt it does not know.
        if not attempt_id and provider_id:
            attempt_id = await self.store.attempt_of_provider_id(provider_id) or ""
        location = domain.locate_attempt(attempt_id)
        if location is None:
            return False
        new_status = domain.attempt_status_of(status) or 0
        updated = await self.store.update_attempt(
            location,
            new_status,
            provider_id=provider_id,
            error_code=error_code,
            provider_status=status.strip().lower(),
        )
        if updated is None:
            return False
        record, changed = updated
        if changed and record.status in domain.FINAL_STATUSES and record.incident_id:
            word = status.strip().lower()
            detail = f"error {error_code}" if error_code else ""
            attributes = {
                "user_id": record.user_id,
                "contact_method_id": record.contact_method_id,
                "channel": channel_name(record.type),
                "attempt_id": record.id,
                "status": word,
            }
            if error_code:
                attributes["error_code"] = str(error_code)
                pagemetrics.provider_error(record.type, str(error_code), "callback")
            self.sender.spawn(
                self.incidents.append_timeline(
                    record.incident_id,
                    domain.attempt_timeline_text(
                        record.type, record.user_id, record.contact_method_id, word, detail
                    ),
                    attributes,
                    f"notify/{record.id}/{word}",
                ),
                f"timeline entry for {record.id}",
            )
        return True

    async def _attempt(self, attempt_id: str, provider_id: str) -> notification_pb2.Attempt | None:
        """The attempt named in the webhook URL, else the one with that provider id."""
        if not attempt_id and provider_id:
            attempt_id = await self.store.attempt_of_provider_id(provider_id) or ""
        location = domain.locate_attempt(attempt_id)
        if location is None:
            return None
        return await self.store.attempt(location)


def _by_incident(codes: Iterable[LiveCode]) -> dict[str, LiveCode]:
    """One code per incident (the first, in the order given)."""
    found: dict[str, LiveCode] = {}
    for code in codes:
        found.setdefault(code.incident_id, code)
    return found


def _which_reply(
    head: str, still_open: Sequence[tuple[LiveCode, str, str]], action: ReplyAction
) -> str:
    """`head`, then the open incidents with the reply that acts on each."""
    letter = "r" if action == ReplyAction.RESOLVE else "a"
    listed = [
        f"'{code.code}{letter}' {label}" + (f" {domain.short_summary(summary)}" if summary else "")
        for code, summary, label in still_open[:LISTED_INCIDENTS]
    ]
    more = len(still_open) - len(listed)
    tail = f"; and {more} more (tocsin incidents)" if more > 0 else ""
    return f"{head} Reply with its code: {'; '.join(listed)}{tail}"
