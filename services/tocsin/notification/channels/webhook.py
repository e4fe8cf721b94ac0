"""Outgoing webhooks (contact type `webhook`): the page as JSON, POSTed to the contact
method's URL and signed with HMAC-SHA256, so a receiver can tell it came from tocsin.

Signature (documented in the README, verified by `verify_signature`):

    X-Tocsin-Timestamp: <unix seconds when this request was sent>
    X-Tocsin-Signature: v1=<hex HMAC-SHA256(TOCSIN_WEBHOOK_SECRET, "<timestamp>.<body>")>
    X-Tocsin-Event-Id:  <the attempt id, also "event_id" in the body>

A receiver recomputes the HMAC over the timestamp, a dot and the raw body, compares in
constant time, and refuses a timestamp more than 5 minutes from its clock (a captured
request cannot be replayed later); the event id is stable across retries, for
de-duplication.

One `send` is one request, classified like Twilio's: no connection, 429 and 5xx (the
receiver did not process it) are retried by the sender with backoff (honouring
Retry-After); another 4xx fails the attempt for good; a timeout or broken connection
after the request went out is an unknown outcome and is not resent. The channel exists
only with TOCSIN_WEBHOOK_SECRET set: an unsigned webhook is never sent, and a `webhook`
contact method is refused without it. Neither the secret nor the URL (which may carry a
token) appears in logs or errors: only its scheme and host.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

from tocsin.client.targets import is_loopback_host
from tocsin.notification import messages
from tocsin.notification.channels import Message, PageContent
from tocsin.notification.providers import ProviderError, SendResult, parse_retry_after
from tocsin.runtime.errors import InvalidArgument
from tocsin.v1 import notification_pb2

# httpx logs every request's full URL at INFO (httpcore its steps at DEBUG); a webhook
# URL may carry a token, so only their warnings are let through.
for _noisy in ("httpx", "httpcore"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

SIGNATURE_HEADER = "X-Tocsin-Signature"
TIMESTAMP_HEADER = "X-Tocsin-Timestamp"
EVENT_ID_HEADER = "X-Tocsin-Event-Id"
TOLERANCE_S = 300
MAX_URL_CHARS = 2048


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Tocsin-Signature value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    tolerance_s: int = TOLERANCE_S,
) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, sent, body), signature)


def normalize_url(address: str, field: str, *, allow_http: bool = False) -> str:
    """An absolute https URL (http only to loopback, or anywhere with `allow_http`: a
    webhook subscription's explicit allow_insecure_http), or InvalidArgument naming
    `field` (the URL is not repeated: it may carry a token)."""
    text = address.strip()
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        host, parts = "", urlsplit("")
    if len(text) > MAX_URL_CHARS or not host or any(c.isspace() for c in text):
        raise InvalidArgument.one(field, "must be an absolute https:// URL")
    if parts.scheme == "https" or (
        parts.scheme == "http" and (allow_http or is_loopback_host(host))
    ):
        return text
    raise InvalidArgument.one(field, "must be an https:// URL (http:// only to loopback)")


def safe_url(url: str) -> str:
    """Scheme and host only, for a log line."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}"


def _details(text: str) -> object:
    """The alert's details as an object ({} when none; the text if it was cut)."""
    if not text:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def render_page(page: PageContent) -> Message:
    body = {
        "event_id": page.attempt_id,
        "type": "incident.page",
        "incident": {
            "id": page.incident_id,
            "number": page.number,
            "service": messages.clean_text(page.service),
            "summary": messages.clean_text(page.summary),
            "details": _details(page.details),
        },
        "reply_code": page.reply_code,
        "tocsin_url": page.public_url,
    }
    return Message(json.dumps(body, separators=(",", ":"), sort_keys=True))


def render_test(user_name: str) -> Message:
    body = {"type": "test", "user": messages.clean_text(user_name)}
    return Message(json.dumps(body, separators=(",", ":"), sort_keys=True))


async def post_once(
    http: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], sid: str
) -> SendResult:
    """One POST, its failure classified (see the module docstring); the URL appears in
    errors only as scheme and host."""
    where = safe_url(url)
    try:
        response = await http.post(url, content=body, headers=headers)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise ProviderError(
            f"could not connect to {where}: {type(exc).__name__}",
            permanent=False,
            retryable=True,
        ) from None
    except httpx.HTTPError as exc:
        raise ProviderError(
            f"no answer from {where}, it may have been delivered: {type(exc).__name__}",
            permanent=False,
            retryable=False,
        ) from None
    status = response.status_code
    if 200 <= status < 300:
        return SendResult(sid=sid, status="delivered")
    retryable = status == 429 or status >= 500
    raise ProviderError(
        f"{where} answered HTTP {status}",
        permanent=not retryable,
        retryable=retryable,
        code=status,
        http_status=status,
        retry_after_s=parse_retry_after(response.headers.get("Retry-After")) if retryable else None,
    )


class WebhookChannel:
    """Signed JSON POSTs through one pooled HTTP client."""

    type: int = notification_pb2.CONTACT_METHOD_TYPE_WEBHOOK
    span_name = "webhook.post"
    replies = False
    rate_limited = False
    wants_details = True

    def __init__(
        self,
        secret: str,
        *,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ValueError("a webhook secret is required")
        self._secret = secret
        self._clock = clock
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s), follow_redirects=False, trust_env=False
        )

    def normalize_address(self, address: str, field: str) -> str:
        return normalize_url(address, field)

    def render(self, page: PageContent) -> Message:
        return render_page(page)

    def render_test(self, user_name: str) -> Message:
        return render_test(user_name)

    async def send(self, address: str, message: Message, attempt_id: str) -> SendResult:
        body = message.body.encode()
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "tocsin-webhook/1",
            EVENT_ID_HEADER: attempt_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        return await post_once(self._http, address, body, headers, attempt_id)

    async def aclose(self) -> None:
        await self._http.aclose()
