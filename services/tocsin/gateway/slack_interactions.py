"""Slack's interactivity endpoint: `POST /slack/interactions` (the app's Request URL).

Every request must carry a valid Slack signature (`X-Slack-Signature` over
`v0:<X-Slack-Request-Timestamp>:<raw body>` with the app's signing secret, the timestamp
within 5 minutes), checked with slack-sdk's `SignatureVerifier`; anything else gets 401
and goes no further. A signed `block_actions` payload whose button is tocsin's
(`ack` / `resolve`, value: the page's attempt id) goes to notification's
HandleSlackAction, which acts as the tocsin user the page was sent to (only when the
presser is that user's Slack user) and updates the message in place. Slack wants an
answer within 3 seconds: 200 with an empty body, whatever the outcome. Without
TOCSIN_SLACK_* the route answers 404 saying so.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qs

import grpc
from slack_sdk.signature import SignatureVerifier
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tocsin.client.client import TocsinClient
from tocsin.runtime.config import Config
from tocsin.v1 import notification_pb2

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
_TIMEOUT_S = 2.5
_FIELD_CHARS = 128
NOT_CONFIGURED = (
    "Slack is not configured on this tocsin: set TOCSIN_SLACK_BOT_TOKEN and "
    "TOCSIN_SLACK_SIGNING_SECRET.\n"
)


def _text(value: Any) -> str:
    return value[:_FIELD_CHARS] if isinstance(value, str) else ""


def _object(payload: dict[str, Any], key: str) -> dict[str, Any]:
    value = payload.get(key)
    return value if isinstance(value, dict) else {}


async def interactions(request: Request) -> Response:
    config: Config = request.app.state.config
    if config.slack is None:
        return PlainTextResponse(NOT_CONFIGURED, status_code=404)
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return PlainTextResponse("too large\n", status_code=413)
    verifier = SignatureVerifier(config.slack.signing_secret)
    if not verifier.is_valid_request(body, dict(request.headers)):
        return PlainTextResponse("bad or missing Slack signature\n", status_code=401)
    try:
        payload = json.loads(parse_qs(body.decode()).get("payload", ["{}"])[0])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return PlainTextResponse("payload is not JSON\n", status_code=400)
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        return Response(status_code=200)
    actions = payload.get("actions") or [{}]
    action = actions[0] if isinstance(actions, list) and isinstance(actions[0], dict) else {}
    user, channel, message = (_object(payload, key) for key in ("user", "channel", "message"))
    client: TocsinClient = request.app.state.client
    try:
        await client.notification.HandleSlackAction(
            notification_pb2.HandleSlackActionRequest(
                slack_user_id=_text(user.get("id")),
                action=_text(action.get("action_id")),
                attempt_id=_text(action.get("value")),
                channel_id=_text(channel.get("id")),
                message_ts=_text(message.get("ts")),
            ),
            timeout=_TIMEOUT_S,
        )
    except grpc.aio.AioRpcError as error:
        log.warning("a Slack button press could not be handled: %s", error.code().name)
        return PlainTextResponse("try again\n", status_code=503)
    return Response(status_code=200)


routes = [Route("/slack/interactions", interactions, methods=["POST"])]
