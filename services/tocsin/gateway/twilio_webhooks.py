"""Twilio's webhooks: incoming SMS, voice keypresses and delivery status callbacks.

`POST /twilio/sms`, `POST /twilio/voice` (a Gather's action) and `POST /twilio/status`.
Every request must carry a valid `X-Twilio-Signature`: HMAC-SHA1 with the auth token over
the URL Twilio requested plus the POST parameters. Behind a proxy that URL is the public
one, so it is rebuilt from TOCSIN_PUBLIC_URL + path + query, never from the Host header
(which an attacker controls). Anything unsigned or mis-signed gets 403 and goes no
further. Without Twilio credentials the routes answer 404 saying so.

The form is parsed with the standard library, keeping repeated keys, because the
signature covers every value of a repeated parameter.
"""

from __future__ import annotations

import logging
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

from tocsin.client.client import TocsinClient
from tocsin.notification.messages import sms_reply_twiml
from tocsin.runtime.config import Config
from tocsin.v1 import notification_pb2

log = logging.getLogger(__name__)

TWIML = "application/xml"
NOT_CONFIGURED = (
    "Twilio is not configured on this tocsin: set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and "
    "TWILIO_FROM_NUMBER (and TOCSIN_PUBLIC_URL to the URL Twilio calls).\n"
)
_TIMEOUT_S = 10.0


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


async def _signed_form(request: Request) -> FormData:
    """The form of a request whose Twilio signature is valid (else _Refused)."""
    config: Config = request.app.state.config
    if config.twilio is None:
        raise _Refused(PlainTextResponse(NOT_CONFIGURED, status_code=404))
    body = (await request.body()).decode("utf-8", "replace")
    pairs: list[tuple[str, str | UploadFile]] = list(parse_qsl(body, keep_blank_values=True))
    form = FormData(pairs)
    query = request.url.query
    url = config.public_url + request.url.path + (f"?{query}" if query else "")
    signature = request.headers.get(SIGNATURE_HEADER, "")
    algorithm = get_signature_algorithm(request.headers.get(SIGNATURE_SETTINGS_HEADER))
    validator = RequestValidator(config.twilio.auth_token)
    if not signature or not validator.validate(url, form, signature, algorithm):
        log.warning("refused a Twilio webhook to %s with a bad signature", request.url.path)
        raise _Refused(PlainTextResponse("invalid Twilio signature\n", status_code=403))
    return form


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
                from_number=str(form.get("From", "")),
                to_number=str(form.get("To", "")),
                body=str(form.get("Body", "")),
                message_sid=str(form.get("MessageSid", "")),
            ),
            timeout=_TIMEOUT_S,
        )
    except _Refused as refused:
        return refused.response
    except grpc.aio.AioRpcError as error:
        return _unavailable(error)
    return Response(sms_reply_twiml(reply.reply or None), media_type=TWIML)


async def voice_keypress(request: Request) -> Response:
    try:
        form = await _signed_form(request)
        reply = await _client(request).notification.HandleVoiceKeypress(
            notification_pb2.HandleVoiceKeypressRequest(
                call_sid=str(form.get("CallSid", "")),
                digits=str(form.get("Digits", "")),
                attempt_id=request.query_params.get("attempt", ""),
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
        error_code = str(form.get("ErrorCode", "") or "0")
        await _client(request).notification.HandleDeliveryStatus(
            notification_pb2.HandleDeliveryStatusRequest(
                provider_id=str(form.get("MessageSid") or form.get("CallSid") or ""),
                status=str(form.get("MessageStatus") or form.get("CallStatus") or ""),
                error_code=int(error_code) if error_code.isdigit() else 0,
                attempt_id=request.query_params.get("attempt", ""),
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
