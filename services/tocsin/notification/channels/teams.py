"""Microsoft Teams pages (contact type `teams`): an Adaptive Card POSTed to a Teams
channel's incoming-webhook or Workflows ("Post to a channel when a webhook request is
received") URL, which is the contact method's address.

The card names the incident, its service and summary, and links to the incident's page
in the web console (TOCSIN_PUBLIC_URL/incidents/<id>), where it can be acknowledged.
Teams' webhooks cannot call back, so acting on the page happens elsewhere (SMS, voice,
Slack, the CLI). The URL carries Teams' own signature token: it is never logged (errors
name scheme and host only). One `send` is one POST, classified like any webhook:
2xx delivered, 429/5xx/no connection retried, other 4xx permanent, a timeout unknown.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from tocsin.notification import messages
from tocsin.notification.channels import Message, PageContent
from tocsin.notification.channels.webhook import normalize_url, post_once
from tocsin.notification.providers import SendResult
from tocsin.v1 import notification_pb2

ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"


def card(title: str, text: str, url: str) -> dict[str, Any]:
    """A Teams message holding one Adaptive Card (schema 1.4)."""
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": ADAPTIVE_CARD,
                "contentUrl": None,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": [
                        {
                            "type": "TextBlock",
                            "size": "Large",
                            "weight": "Bolder",
                            "text": title,
                            "wrap": True,
                        },
                        {"type": "TextBlock", "text": text, "wrap": True},
                    ],
                    "actions": [{"type": "Action.OpenUrl", "title": "Open tocsin", "url": url}],
                },
            }
        ],
    }


def render_page(page: PageContent) -> Message:
    summary = messages.clean_text(page.summary) or "(no summary)"
    service = messages.clean_text(page.service) or "unknown service"
    text = f"{summary}\n\nAcknowledge: `tocsin ack {page.number or page.incident_id}`"
    body = card(f"{page.label} {service}", text, page.incident_url)
    return Message(json.dumps(body, separators=(",", ":")))


class TeamsChannel:
    type: int = notification_pb2.CONTACT_METHOD_TYPE_TEAMS
    span_name = "teams.post"
    replies = False
    rate_limited = False
    wants_details = False

    def __init__(self, public_url: str, *, timeout_s: float = 10.0) -> None:
        self.public_url = public_url
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s), follow_redirects=False, trust_env=False
        )

    def normalize_address(self, address: str, field: str) -> str:
        return normalize_url(address, field)

    def render(self, page: PageContent) -> Message:
        return render_page(page)

    def render_test(self, user_name: str) -> Message:
        name = messages.clean_text(user_name) or "you"
        body = card(
            "tocsin test page", f"Teams pages for {name} reach this channel.", self.public_url
        )
        return Message(json.dumps(body, separators=(",", ":")))

    async def send(self, address: str, message: Message, attempt_id: str) -> SendResult:
        headers = {"Content-Type": "application/json", "User-Agent": "tocsin-teams/1"}
        return await post_once(self._http, address, message.body.encode(), headers, attempt_id)

    async def aclose(self) -> None:
        await self._http.aclose()
