"""SMS and voice: the two channels of a phone number, through one `Provider` (Twilio, or
the console when no credentials are set; providers.py), or a list of them (`routes`:
Twilio, then the TOCSIN_SMS_FALLBACK_* provider, each with its circuit breaker; the
sender picks the route and records it before the call, see sender.py).

The providers are shared by both channels and owned by the notification server, which
closes them; the channels only borrow them. A status callback (`/twilio/status`) is asked for
when `status_callbacks` is on, so Twilio reports delivery back to the attempt.
"""

from __future__ import annotations

from urllib.parse import urlencode

from tocsin.notification import messages
from tocsin.notification.channels import Message, PageContent
from tocsin.notification.domain import normalize_phone
from tocsin.notification.providers import Provider, Route, SendResult
from tocsin.v1 import notification_pb2


def twilio_url(public_url: str, route: str, attempt_id: str) -> str:
    return f"{public_url}/twilio/{route}?{urlencode({'attempt': attempt_id})}"


class _PhoneChannel:
    wants_details = False
    rate_limited = True

    def __init__(
        self,
        provider: Provider,
        public_url: str,
        *,
        status_callbacks: bool,
        routes: list[Route] | None = None,
    ) -> None:
        self.provider = provider
        self.routes = routes or [Route("twilio", provider)]
        """The providers in the order of preference (the first is `provider`)."""
        self.public_url = public_url
        self.status_callbacks = status_callbacks

    async def send(self, address: str, message: Message, attempt_id: str) -> SendResult:
        return await self.send_via(self.routes[0], address, message, attempt_id)

    async def send_via(
        self, route: Route, address: str, message: Message, attempt_id: str
    ) -> SendResult:
        raise NotImplementedError

    def normalize_address(self, address: str, field: str) -> str:
        return normalize_phone(address, field)

    def _callback(self, attempt_id: str) -> str | None:
        if not self.status_callbacks:
            return None
        return twilio_url(self.public_url, "status", attempt_id)

    async def aclose(self) -> None:
        """Nothing: the provider belongs to the server (shared by SMS and voice)."""


class SmsChannel(_PhoneChannel):
    type: int = notification_pb2.CONTACT_METHOD_TYPE_SMS
    span_name = "twilio.messages.create"
    replies = True

    def render(self, page: PageContent) -> Message:
        return Message(
            messages.sms_body(
                page.service, page.summary, page.reply_code, number=page.number, link=page.link
            )
        )

    def render_test(self, user_name: str) -> Message:
        return Message(messages.test_sms_body(user_name))

    async def send_via(
        self, route: Route, address: str, message: Message, attempt_id: str
    ) -> SendResult:
        return await route.provider.send_sms(address, message.body, self._callback(attempt_id))


class VoiceChannel(_PhoneChannel):
    type: int = notification_pb2.CONTACT_METHOD_TYPE_VOICE
    span_name = "twilio.calls.create"
    replies = False

    def render(self, page: PageContent) -> Message:
        gather = twilio_url(page.public_url, "voice", page.attempt_id)
        return Message(
            messages.voice_twiml(
                page.service, page.summary, gather, number=page.number, link=page.link
            )
        )

    def render_test(self, user_name: str) -> Message:
        return Message(messages.test_voice_twiml(user_name))

    async def send_via(
        self, route: Route, address: str, message: Message, attempt_id: str
    ) -> SendResult:
        return await route.provider.place_call(address, message.body, self._callback(attempt_id))
