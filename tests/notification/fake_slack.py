"""A local server that speaks the part of Slack's Web API tocsin uses (`chat.postMessage`,
`chat.update`) as Slack does (Bearer token, `{"ok": ...}` answers, 429 with Retry-After on
demand), and presses buttons the way Slack does: a form-encoded `payload` POSTed to the
app's interactivity URL, signed with the app's signing secret."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
from aiohttp import web


@dataclass
class SlackMessage:
    channel: str
    ts: str
    user: str
    text: str
    blocks: list[dict[str, Any]]
    updates: int = 0

    def button(self, action_id: str) -> dict[str, Any]:
        for block in self.blocks:
            for element in block.get("elements", []):
                if element.get("action_id") == action_id:
                    return dict(element)
        raise AssertionError(f"no {action_id!r} button on {self.text!r}")


@dataclass
class FakeSlack:
    token: str
    signing_secret: str
    base_url: str = ""
    messages: list[SlackMessage] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    channels: set[str] = field(default_factory=set)
    """The workspace's channel ids the bot is in (a post to another: channel_not_found)."""

    def _reply(self, data: dict[str, Any], status: int = 200) -> web.Response:
        headers = {"Retry-After": "1"} if status == 429 else {}
        return web.json_response(data, status=status, headers=headers)

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        self.calls.append(method)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._reply({"ok": False, "error": "invalid_auth"})
        if self.failures:
            status = self.failures.pop(0)
            return self._reply({"ok": False, "error": "ratelimited"}, status)
        args = await request.json()
        if method == "chat.postMessage":
            user = str(args["channel"])
            if user.startswith("C") and user in self.channels:
                # A channel id: the message goes into that channel (no recipient).
                channel, user = user, ""
            elif user.startswith("U"):
                channel = f"D{user[1:]}"  # a user id: the bot's DM with them
            else:
                return self._reply({"ok": False, "error": "channel_not_found"})
            ts = f"{1_800_000_000 + len(self.messages)}.000100"
            message = SlackMessage(
                channel, ts, user, args.get("text", ""), args.get("blocks") or []
            )
            self.messages.append(message)
            return self._reply({"ok": True, "channel": message.channel, "ts": ts})
        if method == "chat.update":
            for message in self.messages:
                if (message.channel, message.ts) == (args["channel"], args["ts"]):
                    message.text, message.blocks = args.get("text", ""), args.get("blocks") or []
                    message.updates += 1
                    return self._reply({"ok": True, "channel": message.channel, "ts": message.ts})
            return self._reply({"ok": False, "error": "message_not_found"})
        return self._reply({"ok": False, "error": "unknown_method"}, 404)

    def signed(self, body: bytes, *, secret: str | None = None) -> dict[str, str]:
        timestamp = str(int(time.time()))
        base = f"v0:{timestamp}:".encode() + body
        key = (secret or self.signing_secret).encode()
        signature = "v0=" + hmac.new(key, base, hashlib.sha256).hexdigest()
        return {
            "X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": signature,
            "Content-Type": "application/x-www-form-urlencoded",
        }

    async def press(
        self,
        url: str,
        message: SlackMessage,
        action_id: str,
        *,
        by: str | None = None,
        secret: str | None = None,
    ) -> int:
        """Press a button of `message` as Slack user `by` (default: its recipient);
        returns the HTTP status tocsin answered. `secret` signs with another secret."""
        button = message.button(action_id)
        payload = {
            "type": "block_actions",
            "user": {"id": by or message.user},
            "channel": {"id": message.channel},
            "message": {"ts": message.ts},
            "actions": [{"action_id": action_id, "value": button["value"]}],
        }
        body = urlencode({"payload": json.dumps(payload)}).encode()
        async with httpx.AsyncClient() as http:
            answer = await http.post(url, content=body, headers=self.signed(body, secret=secret))
        return answer.status_code


@asynccontextmanager
async def fake_slack(token: str, signing_secret: str) -> AsyncIterator[FakeSlack]:
    fake = FakeSlack(token, signing_secret)
    app = web.Application()
    app.router.add_post("/api/{method}", fake._api)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield fake
    finally:
        await runner.cleanup()
