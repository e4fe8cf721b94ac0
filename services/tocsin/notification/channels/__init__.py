"""The channel registry: every way a page leaves tocsin, behind one interface.

Modelled on GoAlert's `notification/nfydest` registry. A channel is one module that
implements `Channel` for one `ContactMethodType`:

- `normalize_address`: the address a contact method of this type may have, normalised
  (E.164 for a phone, lower-cased domain for an email), or `InvalidArgument` naming the
  field; run when a contact method is created or changed (and by `tocsin apply`);
- `render` / `render_test`: what a page for an incident event (or a test page) says on
  this channel, as a `Message` (pure, no I/O);
- `send`: exactly ONE attempt to deliver a rendered message, reporting failure as a
  `ProviderError` classified retryable / permanent / outcome unknown (providers.py).
  The sender calls it only after the attempt was recorded SENDING and its timer
  completed in one Lua script (store.fire), so whatever a channel does, a page is sent at
  most once per attempt; retries happen only for errors the channel calls retryable;
- `replies`: whether an answer to this channel's page names the incident by "the latest
  page to this address" (SMS: "ack" without a code).

`ChannelRegistry` holds one channel per type, built from the configuration
(notification/server.py `channels_from_config`). A contact method whose type no channel
handles is refused when it is created (`contact_method.type`, naming the types that are)
and, should one still be stored, is never sent: its rule is skipped as unreachable and
the user's next rule runs at once.

Adding a channel: a `ContactMethodType` value in protos/tocsin/v1/notification.proto,
one module here implementing `Channel`, its entry in `channels_from_config`, and its
tests. The CLI, `tocsin apply` and `export` read the type names from the proto enum.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from tocsin.notification.providers import SendResult
from tocsin.runtime.errors import FieldViolation
from tocsin.v1 import notification_pb2

__all__ = [
    "Channel",
    "ChannelRegistry",
    "Message",
    "PageContent",
    "channel_name",
]


def channel_name(channel_type: int) -> str:
    """The word for a ContactMethodType in configs, the CLI, spans and rate-limit keys:
    `CONTACT_METHOD_TYPE_SMS` -> `sms`; "unknown" for a value the proto does not name."""
    try:
        name = notification_pb2.ContactMethodType.Name(
            notification_pb2.ContactMethodType.ValueType(channel_type)
        )
    except ValueError:
        return "unknown"
    return name.removeprefix("CONTACT_METHOD_TYPE_").lower()


@dataclass(frozen=True)
class PageContent:
    """What a page is about, for a channel to render."""

    incident_id: str
    service: str
    """The service's name (its id if it has none)."""
    summary: str
    reply_code: str
    """The user's code for this incident ("4" in "4a"); "" on a test page."""
    attempt_id: str
    public_url: str
    """TOCSIN_PUBLIC_URL, for links and callbacks."""
    details: str = ""
    """The incident's details as readable text ("" when none)."""
    number: int = 0
    """The incident's number, what people say ("#18"); 0 when not known."""
    link: str = ""
    """A short signed link to the incident's page (tocsin.client.links), when
    TOCSIN_PUBLIC_URL is set; "" otherwise."""
    created_ms: int = 0
    """When the incident was created (ms; 0 when not known), for the alert -> first page
    metric, so it needs no lookup after the send."""

    @property
    def label(self) -> str:
        """How the page names its incident: "#18" (its id before it had a number)."""
        return f"#{self.number}" if self.number else f"#{self.incident_id}"

    @property
    def incident_url(self) -> str:
        return f"{self.public_url}/incidents/{self.incident_id}"


@dataclass(frozen=True)
class Message:
    """A rendered page. `body` is what every channel has (SMS text, call TwiML, an
    email's plain text); `subject` and `html` are for channels that use them."""

    body: str
    subject: str = ""
    html: str = ""


class Channel(Protocol):
    type: int
    """The ContactMethodType this channel sends."""
    span_name: str
    """The name of the client span around one send (e.g. `twilio.messages.create`)."""
    replies: bool
    """A reply to this channel's page may name the incident by "the latest page to this
    address" (so a SENT page records it)."""
    rate_limited: bool
    """Paced by the Twilio number's send rate and the per-address interval
    (TOCSIN_TWILIO_SENDS_PER_SECOND, TOCSIN_NUMBER_SEND_INTERVAL): the phone channels.
    The others are not paced; their 429s are retried with Retry-After."""
    wants_details: bool
    """The page shows the incident's details (the sender reads the incident for them;
    off for the phone, whose first page must leave in milliseconds)."""

    def normalize_address(self, address: str, field: str) -> str: ...

    def render(self, page: PageContent) -> Message: ...

    def render_test(self, user_name: str) -> Message: ...

    async def send(self, address: str, message: Message, attempt_id: str) -> SendResult: ...

    async def aclose(self) -> None: ...


class ChannelRegistry:
    """One channel per contact method type."""

    def __init__(self, channels: Iterable[Channel]) -> None:
        self._channels: dict[int, Channel] = {}
        for channel in channels:
            if channel.type in self._channels:
                raise ValueError(f"two channels for {channel_name(channel.type)}")
            self._channels[channel.type] = channel

    def find(self, channel_type: int) -> Channel | None:
        return self._channels.get(channel_type)

    @property
    def names(self) -> list[str]:
        return [channel_name(t) for t in sorted(self._channels)]

    def type_violation(self, channel_type: int, field: str) -> FieldViolation | None:
        """The problem with `channel_type` for a contact method, if no channel sends it."""
        if channel_type in self._channels:
            return None
        known = ", ".join(self.names)
        return FieldViolation(
            field, f"must be one of {known}, got {channel_name(channel_type)} ({channel_type})"
        )

    async def aclose(self) -> None:
        for channel in self._channels.values():
            await channel.aclose()
