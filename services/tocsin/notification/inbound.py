"""What comes back from Twilio: SMS replies, keypresses and delivery status callbacks.

The gateway has already checked each webhook's signature. A reply is read with
messages.parse_sms_reply and turned into an Acknowledge or Resolve on the incidents
service, with the replying user as the actor; the answer says what happened in words a
half-awake person understands ("Acknowledged #123: disk full on db1"). A number tocsin
does not know gets no answer at all, so nobody can probe who is on call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc

from tocsin.notification import domain, messages
from tocsin.notification.contacts import ContactStore
from tocsin.notification.messages import ReplyAction
from tocsin.notification.peers import IncidentsPeer
from tocsin.notification.providers import mask_phone
from tocsin.notification.sender import Sender
from tocsin.notification.store import PagingStore
from tocsin.v1 import common_pb2, notification_pb2

log = logging.getLogger(__name__)

VOICE_RETRY_TEXT = "Sorry, that is not an option."
VOICE_UNKNOWN_CALL = "Sorry, this call is not linked to a page. Goodbye."
VOICE_TEST_CALL = "This was a test call. Goodbye."
VOICE_FAILED = "Sorry, tocsin could not record that."
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
    ) -> None:
        self.store = store
        self.contacts = contacts
        self.incidents = incidents
        self.sender = sender
        self.public_url = public_url

    # -- SMS ----------------------------------------------------------------------------

    async def incoming_sms(self, from_number: str, body: str) -> str:
        """The answer to an SMS from `from_number` ('' = send no answer)."""
        try:
            number = domain.normalize_phone(from_number, "from_number")
        except domain.InvalidArgument:
            return ""
        owners = await self.contacts.owners_of_number(number)
        if not owners:
            log.info("SMS from unknown number %s ignored", mask_phone(number))
            return ""
        reply = messages.parse_sms_reply(body)
        if reply is None:
            return domain.help_reply()
        if reply.action == ReplyAction.HELP:
            return domain.help_reply()
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
            return ""  # Twilio answers STOP / START itself
        target = await self._target(number, [o.user_id for o in owners], reply.code)
        if isinstance(target, str):
            return target
        incident_id, user_id = target
        actor = common_pb2.Actor(user_id=user_id, channel=common_pb2.CHANNEL_SMS)
        return (await self._act(reply.action, incident_id, actor)).reply

    async def _target(
        self, number: str, users: list[str], code: str | None
    ) -> tuple[str, str] | str:
        """(incident, user) a reply is about, or the answer explaining why there is none."""
        if code is None:
            latest = await self.contacts.latest_page(number)
            if latest is None:
                return domain.NO_RECENT_PAGE_REPLY
            return latest.incident_id, latest.user_id
        for user_id in users:
            incident_id = await self.contacts.incident_of_code(user_id, code)
            if incident_id is not None:
                return incident_id, user_id
        return domain.unknown_code_reply(code)

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
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return Outcome(f"#{incident_id} is already resolved", True)
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return Outcome(f"#{incident_id} no longer exists", True)
            log.warning("%s of %s failed: %s", action.value, incident_id, error.code().name)
            return Outcome(f"Could not {action.value} #{incident_id} just now; try again", False)
        await self.store.apply_incident(incident)
        return Outcome(f"{words[changed]} {domain.incident_title(incident)}", True)

    # -- voice --------------------------------------------------------------------------

    async def keypress(self, call_sid: str, digits: str, attempt_id: str) -> str:
        """TwiML answering a Gather: 4 acknowledges, 6 resolves, anything else repeats."""
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
        outcome = await self._act(action, attempt.incident_id, actor)
        if not outcome.done:
            return messages.gather_response_twiml(VOICE_FAILED, retry_action_url=retry_url)
        return messages.gather_response_twiml(f"{outcome.reply}. Goodbye.")

    # -- delivery status ----------------------------------------------------------------

    async def delivery_status(
        self, provider_id: str, status: str, error_code: int, attempt_id: str
    ) -> bool:
        """Record a status callback on its attempt; False if no attempt is known."""
        attempt = await self._attempt(attempt_id, provider_id)
        if attempt is None:
            return False
        location = domain.locate_attempt(attempt.id)
        assert location is not None
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
                "channel": domain.CHANNEL_NAMES.get(record.type, ""),
                "attempt_id": record.id,
                "status": word,
            }
            if error_code:
                attributes["error_code"] = str(error_code)
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
