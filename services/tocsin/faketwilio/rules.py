"""Twilio's input rules for creating Messages and Calls, as the fake enforces them.

Field names, limits and error codes follow Twilio's OpenAPI spec for the 2010-04-01 API
and its error catalogue; the "magic" numbers are the ones Twilio documents for test
credentials (https://www.twilio.com/docs/iam/test-credentials), so code written against
the fake behaves the same against Twilio with test credentials.
"""

from __future__ import annotations

from xml.etree import ElementTree

import phonenumbers

BODY_MAX_CHARS = 1600
TWIML_MAX_CHARS = 4000

MAGIC_SMS_FROM = {
    "+15005550001": (21212, "The 'From' number {} is not a valid phone number."),
    "+15005550007": (21606, "The 'From' phone number {} is not a valid, SMS-capable number."),
    "+15005550008": (21611, "This 'From' number {} has exceeded the maximum queue size."),
}
MAGIC_SMS_TO = {
    "+15005550001": (21211, "The 'To' number {} is not a valid phone number."),
    "+15005550002": (21612, "The 'To' phone number {} is not currently reachable."),
    "+15005550003": (21408, "Permission to send an SMS has not been enabled for {}."),
    "+15005550004": (21610, "Attempt to send to unsubscribed recipient {}."),
    "+15005550009": (21614, "'To' number {} is not a valid mobile number."),
}
MAGIC_CALL_FROM = {
    "+15005550001": (21212, "The 'From' number {} is not a valid phone number."),
}
MAGIC_CALL_TO = {
    "+15005550001": (21217, "Phone number {} does not appear to be valid."),
    "+15005550002": (21214, "'To' phone number {} cannot be reached."),
    "+15005550003": (21215, "Account not authorized to call {}."),
    "+15005550004": (21216, "Account not allowed to call {}."),
}

TWIML_TOO_LONG_CODE = 20001
"""Twilio documents the 4,000-character limit but not its error code; the fake picks one."""
TWIML_PARSE_FAILURE_CODE = 12100


class TwilioApiError(Exception):
    """A refusal, rendered as Twilio's JSON error body."""

    def __init__(
        self, http_status: int, code: int, message: str, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def body(self) -> dict[str, object]:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.http_status,
        }


def first(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def is_e164(number: str) -> bool:
    if not number.startswith("+"):
        return False
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(number, None))
    except phonenumbers.NumberParseException:
        return False


def _check_number(
    number: str, magic: dict[str, tuple[int, str]], invalid_code: int, field: str
) -> None:
    if number in magic:
        code, message = magic[number]
        raise TwilioApiError(400, code, message.format(number))
    if not is_e164(number):
        raise TwilioApiError(
            400, invalid_code, f"The '{field}' number {number} is not a valid phone number."
        )


def check_message(params: dict[str, list[str]]) -> None:
    """Raise TwilioApiError for a Messages.json POST that Twilio would refuse."""
    to, from_ = first(params, "To"), first(params, "From")
    body = first(params, "Body")
    if not to:
        raise TwilioApiError(400, 21604, "A 'To' phone number is required.")
    if not from_ and not first(params, "MessagingServiceSid"):
        raise TwilioApiError(400, 21603, "A 'From' phone number is required.")
    if not body and not first(params, "MediaUrl") and not first(params, "ContentSid"):
        raise TwilioApiError(400, 21602, "Message body is required.")
    if body is not None and len(body) > BODY_MAX_CHARS:
        raise TwilioApiError(
            400, 21617, "The concatenated message body exceeds the 1600 character limit."
        )
    if from_:
        _check_number(from_, MAGIC_SMS_FROM, 21212, "From")
    _check_number(to, MAGIC_SMS_TO, 21211, "To")


def check_call(params: dict[str, list[str]]) -> None:
    """Raise TwilioApiError for a Calls.json POST that Twilio would refuse."""
    to, from_, twiml = first(params, "To"), first(params, "From"), first(params, "Twiml")
    if not to:
        raise TwilioApiError(400, 21201, "No 'To' number is specified")
    if not from_:
        raise TwilioApiError(400, 21213, "No 'From' number is specified")
    if not first(params, "Url") and not twiml and not first(params, "ApplicationSid"):
        raise TwilioApiError(400, 21205, "Url parameter is required.")
    if twiml is not None and not first(params, "Url"):
        if len(twiml) > TWIML_MAX_CHARS:
            raise TwilioApiError(
                400, TWIML_TOO_LONG_CODE, "Twiml exceeds the 4000 character limit."
            )
        try:
            ElementTree.fromstring(twiml)
        except ElementTree.ParseError as exc:
            raise TwilioApiError(400, TWIML_PARSE_FAILURE_CODE, f"Invalid Twiml: {exc}") from None
    _check_number(from_, MAGIC_CALL_FROM, 21212, "From")
    _check_number(to, MAGIC_CALL_TO, 21211, "To")
