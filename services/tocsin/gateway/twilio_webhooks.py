"""Twilio's webhooks: incoming SMS, voice keypresses and delivery status callbacks.

`POST /twilio/sms`, `POST /twilio/voice` (a Gather's action) and `POST /twilio/status`.
Every request must carry a valid `X-Twilio-Signature`: HMAC-SHA1 with the auth token over
the URL Twilio requested plus the POST parameters. Behind a proxy that URL is the public
one, so it is rebuilt from TOCSIN_PUBLIC_URL + path + query, never from the Host header
(which an attacker controls). Anything unsigned or mis-signed gets 403 and goes no
further. Without Twilio credentials the routes answer 404 saying so.

The form is parsed with the standard library, keeping repeated keys, because the
signature covers every value of a repeated parameter.

A signed request is still read defensively: whatever a field holds, the answer is never
a 500. Text fields are cut to a length no genuine Twilio value reaches, an `ErrorCode`
that is not a number tocsin can carry (non-numeric, or past int32) is dropped with a
warning (its length only; no phone number is ever logged), and bodies over
MAX_BODY_BYTES get 413 before any parsing. Each webhook is acted on once (its Sid; see
notification/inbound.py): a replay is answered and changes nothing.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from urllib.parse import parse_qsl

import grpc
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from twilio.request_validator import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)
from twilio.twiml.messaging_response import MessagingResponse

from tocsin.client.client import TocsinClient
from tocsin.runtime.config import Config
from tocsin.v1 import notification_pb2

log = logging.getLogger(__name__)

TWIML = "application/xml"
NOT_CONFIGURED = (
    "Twilio is not configured on this tocsin: set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and "
    "TWILIO_FROM_NUMBER (and TOCSIN_PUBLIC_URL to the URL Twilio calls).\n"
)
_TIMEOUT_S = 10.0
MAX_BODY_BYTES = 64 * 1024
"""Twilio's webhooks are a few hundred bytes (an SMS body is at most 1,600 characters)."""
MAX_FIELD_CHARS = {"Body": 4096, "Digits": 64}
"""What a field is cut to before it is passed on; any other field gets _OTHER_FIELD_CHARS."""
_OTHER_FIELD_CHARS = 128
_ERROR_CODE = re.compile(r"[0-9]{1,9}")
"""An ErrorCode the contract (int32) can carry: Twilio's are five digits."""


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


async def _signed_form(request: Request) -> FormData:
    """The form of a request whose Twilio signature is valid (else _Refused)."""
    config: Config = request.app.state.config
    if config.twilio is None:
        raise _Refused(PlainTextResponse(NOT_CONFIGURED, status_code=404))
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _Refused(_too_large())
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise _Refused(_too_large())
    body = raw.decode("utf-8", "replace")
    pairs: list[tuple[str, str | UploadFile]] = list(parse_qsl(body, keep_blank_values=True))
    form = FormData(pairs)
    query = request.url.query
    url = config.public_url + request.url.path + (f"?{query}" if query else "")
    signature = request.headers.get(SIGNATURE_HEADER, "")
    algorithm = get_signature_algorithm(request.headers.get(SIGNATURE_SETTINGS_HEADER))
    # The fallback provider (TOCSIN_SMS_FALLBACK_*) signs its callbacks and replies with
    # its own token.
    tokens = [config.twilio.auth_token]
    if config.sms_fallback is not None:
        tokens.append(config.sms_fallback.auth_token)
    if not signature or not any(
        RequestValidator(token).validate(url, form, signature, algorithm) for token in tokens
    ):
        log.warning("refused a Twilio webhook to %s with a bad signature", request.url.path)
        raise _Refused(PlainTextResponse("invalid Twilio signature\n", status_code=403))
    return form


def _too_large() -> Response:
    return PlainTextResponse(f"body over {MAX_BODY_BYTES} bytes\n", status_code=413)


def _field(form: FormData, *names: str) -> str:
    """The first non-empty of `names` in the form, cut to its field's bound."""
    for name in names:
        value = form.get(name)
        if isinstance(value, str) and value:
            return value[: MAX_FIELD_CHARS.get(name, _OTHER_FIELD_CHARS)]
    return ""


def error_code_of(form: FormData) -> int:
    """Twilio's ErrorCode as a number, 0 when absent or not one tocsin can carry."""
    value = _field(form, "ErrorCode").strip()
    if not value:
        return 0
    if not _ERROR_CODE.fullmatch(value):
        log.warning("ignored an unparsable Twilio ErrorCode (%d characters)", len(value))
        return 0
    return int(value)


def sms_reply_twiml(text: str) -> str:
    """The TwiML answer to an incoming SMS: one message with `text`, or none when empty.
    Control characters are dropped: TwiML is XML, where most of them cannot appear."""
    response = MessagingResponse()
    printable = "".join(
        " " if unicodedata.category(ch).startswith("C") else ch for ch in text
    ).strip()
    if printable:
        response.message(printable)
    return str(response.to_xml())


def _client(request: Request) -> TocsinClient:
    client: TocsinClient = request.app.state.client
    return client


def _unavailable(error: grpc.aio.AioRpcError) -> Response:
    log.warning("notification service call failed: %s", error.code().name)
    return PlainTextResponse("notification service unavailable\n", status_code=503)


async def incoming_sms(request: Request) -> Response:
    try:
        form = await _signed_form(request)
        reply = await _client(request).notification.HandleIncomingSms(
            notification_pb2.HandleIncomingSmsRequest(
                from_number=_field(form, "From"),
                to_number=_field(form, "To"),
                body=_field(form, "Body"),
                message_sid=_field(form, "MessageSid", "SmsSid"),
            ),
            timeout=_TIMEOUT_S,
        )
    except _Refused as refused:
        return refused.response
    except grpc.aio.AioRpcError as error:
        return _unavailable(error)
    return Response(sms_reply_twiml(reply.reply), media_type=TWIML)


async def voice_keypress(request: Request) -> Response:
    try:
        form = await _signed_form(request)
        reply = await _client(request).notification.HandleVoiceKeypress(
            notification_pb2.HandleVoiceKeypressRequest(
                call_sid=_field(form, "CallSid"),
                digits=_field(form, "Digits"),
                attempt_id=request.query_params.get("attempt", "")[:_OTHER_FIELD_CHARS],
            ),
            timeout=_TIMEOUT_S,
        )
    except _Refused as refused:
        return refused.response
    except grpc.aio.AioRpcError as error:
        return _unavailable(error)
    return Response(reply.twiml, media_type=TWIML)


async def delivery_status(request: Request) -> Response:
    try:
        form = await _signed_form(request)
        await _client(
            request
        ).delivery_status(  # batched with the others waiting
            notification_pb2.HandleDeliveryStatusRequest(
                provider_id=_field(form, "MessageSid", "CallSid"),
                status=_field(form, "MessageStatus", "CallStatus"),
                error_code=error_code_of(form),
                attempt_id=request.query_params.get("attempt", "")[:_OTHER_FIELD_CHARS],
            ),
            timeout=_TIMEOUT_S,
        )
    except _Refused as refused:
        return refused.response
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return PlainTextResponse(f"{error.details()}\n", status_code=400)
        return _unavailable(error)
    return Response(status_code=204)


routes = [
    Route("/twilio/sms", incoming_sms, methods=["POST"]),
    Route("/twilio/voice", voice_keypress, methods=["POST"]),
    Route("/twilio/status", delivery_status, methods=["POST"]),
]
