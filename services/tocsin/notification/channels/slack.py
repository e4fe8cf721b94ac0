"""Slack pages (contact type `slack`, address a Slack user id): a direct message from
the tocsin bot with **Acknowledge** and **Resolve** buttons, through the official
`slack-sdk` (`chat.postMessage`; `TOCSIN_SLACK_BASE_URL` points it elsewhere for tests).

A button carries the page's attempt id. Slack posts the press to
`TOCSIN_PUBLIC_URL/slack/interactions`, where the gateway verifies Slack's request
signature (anything else: 401) and notification acts as the tocsin user the page went to,
and only if the presser is the Slack user of that contact method (the link between a
Slack user and a tocsin user is the contact method itself); then the message is updated
in place (`chat.update`): the buttons replaced by what happened.

One `send` is one `chat.postMessage`: HTTP 429 (`ratelimited`, with Retry-After), 5xx and
no connection are retryable; an error Slack answered (`user_not_found`, `invalid_auth`,
...) is permanent; a timeout is an unknown outcome (not resent). The token never appears
in logs or errors.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from tocsin.notification import messages
from tocsin.notification.channels import Message, PageContent
from tocsin.notification.providers import ProviderError, SendResult
from tocsin.runtime.config import SlackConfig
from tocsin.runtime.errors import InvalidArgument
from tocsin.v1 import notification_pb2

ACK_ACTION = "ack"
RESOLVE_ACTION = "resolve"
_USER_ID = re.compile(r"[UW][A-Z0-9]{2,20}")


def normalize_slack_user(address: str, field: str) -> str:
    text = address.strip().upper()
    if not _USER_ID.fullmatch(text):
        raise InvalidArgument.one(field, "must be a Slack user id like U024BE7LH")
    return text


def page_blocks(text: str, attempt_id: str) -> list[dict[str, Any]]:
    """The message: the page's text and the two buttons (their value: the attempt)."""
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {
            "type": "actions",
            "block_id": "tocsin_page",
            "elements": [
                {
                    "type": "button",
                    "action_id": ACK_ACTION,
                    "style": "primary",
                    "text": {"type": "plain_text", "text": "Acknowledge"},
                    "value": attempt_id,
                },
                {
                    "type": "button",
                    "action_id": RESOLVE_ACTION,
                    "text": {"type": "plain_text", "text": "Resolve"},
                    "value": attempt_id,
                },
            ],
        },
    ]


def _escape(text: str) -> str:
    """Slack's mrkdwn needs &, < and > escaped (they start links and mentions)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_page(page: PageContent) -> Message:
    summary = _escape(messages.clean_text(page.summary) or "(no summary)")
    service = _escape(messages.clean_text(page.service) or "unknown service")
    return Message(f":rotating_light: *{page.label} {service}*: {summary}")


def classify_slack_error(exc: BaseException) -> ProviderError:
    if isinstance(exc, SlackApiError):
        status = exc.response.status_code
        error = str(exc.response.get("error", "")) if exc.response.data else ""
        retryable = status == 429 or status >= 500
        retry_after = exc.response.headers.get("Retry-After") if retryable else None
        return ProviderError(
            f"Slack HTTP {status}: {error or 'error'}",
            permanent=not retryable,
            retryable=retryable,
            http_status=status,
            code=status,
            retry_after_s=float(retry_after) if retry_after and retry_after.isdigit() else None,
        )
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return ProviderError(
            f"could not connect to Slack: {type(exc).__name__}", permanent=False, retryable=True
        )
    return ProviderError(
        f"no answer from Slack, the message may have been posted: {type(exc).__name__}",
        permanent=False,
        retryable=False,
    )


class SlackChannel:
    type: int = notification_pb2.CONTACT_METHOD_TYPE_SLACK
    span_name = "slack.chat.postMessage"
    replies = False
    rate_limited = False
    wants_details = False

    def __init__(self, config: SlackConfig, *, timeout_s: int = 10) -> None:
        self.client = AsyncWebClient(
            token=config.bot_token, base_url=f"{config.base_url}/api/", timeout=timeout_s
        )

    def normalize_address(self, address: str, field: str) -> str:
        return normalize_slack_user(address, field)

    def render(self, page: PageContent) -> Message:
        return render_page(page)

    def render_test(self, user_name: str) -> Message:
        name = _escape(messages.clean_text(user_name) or "you")
        return Message(f"tocsin test page for {name}: Slack pages reach you here.")

    async def send(self, address: str, message: Message, attempt_id: str) -> SendResult:
        blocks = (
            page_blocks(message.body, attempt_id)
            if not attempt_id.startswith(("test-", "status-", "notice-"))
            else None
        )
        try:
            response = await self.client.chat_postMessage(
                channel=address, text=message.body, blocks=blocks
            )
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            raise classify_slack_error(exc) from None
        return SendResult(
            sid=f"{response.get('channel', '')}:{response.get('ts', '')}", status="sent"
        )

    async def update(self, channel_id: str, ts: str, text: str) -> None:
        """Replace a page's message (and its buttons) with `text`."""
        safe = _escape(text)
        try:
            await self.client.chat_update(
                channel=channel_id,
                ts=ts,
                text=safe,
                blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": safe}}],
            )
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            raise classify_slack_error(exc) from None

    async def aclose(self) -> None:
        session = getattr(self.client, "session", None)
        if session is not None:
            await session.close()
