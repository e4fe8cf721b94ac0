"""The fake Twilio's state and test controls, independent of the HTTP layer.

`FakeTwilio.handle_create()` is what a POST to Messages.json / Calls.json does: check
auth, maybe fail on demand, validate like Twilio, record, answer 201 with the resource,
and afterwards post signed status callbacks. The controls (`fail_next`, `set_*_outcome`,
`reply_sms`, `press_digits`) are what a test or a load generator drives.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Literal

import httpx
import phonenumbers
from twilio.request_validator import RequestValidator

from tocsin.faketwilio.rules import TwilioApiError, check_call, check_message, first
from tocsin.notification.messages import sms_segments

API_VERSION = "2010-04-01"
Kind = Literal["sms", "call"]

SMS_OUTCOMES = {"delivered": None, "undelivered": 30003, "failed": 30008}
"""Final SMS status -> the ErrorCode its callback carries."""
CALL_OUTCOMES = ("completed", "busy", "no-answer", "failed")
_CALL_EVENT_OF_STATUS = {"initiated": "initiated", "ringing": "ringing", "in-progress": "answered"}


@dataclass
class RecordedRequest:
    """One POST to Messages.json or Calls.json, accepted or not."""

    kind: Kind
    account_sid: str
    params: dict[str, list[str]]
    http_status: int
    received_monotonic_ns: int
    received_at: datetime
    sid: str | None = None
    error_code: int | None = None
    retry_after: int | None = None
    """Seconds in the Retry-After header of a refusal (an injected throttle), if any."""

    @property
    def accepted(self) -> bool:
        return self.http_status == 201

    @property
    def to(self) -> str | None:
        return first(self.params, "To")

    @property
    def from_(self) -> str | None:
        return first(self.params, "From")

    @property
    def body(self) -> str | None:
        return first(self.params, "Body")

    @property
    def twiml(self) -> str | None:
        return first(self.params, "Twiml")

    @property
    def status_callback(self) -> str | None:
        return first(self.params, "StatusCallback")

    @property
    def status_callback_events(self) -> list[str]:
        return self.params.get("StatusCallbackEvent", [])

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "sid": self.sid,
            "http_status": self.http_status,
            "error_code": self.error_code,
            "retry_after": self.retry_after,
            "account_sid": self.account_sid,
            "to": self.to,
            "from": self.from_,
            "body": self.body,
            "twiml": self.twiml,
            "status_callback": self.status_callback,
            "status_callback_events": self.status_callback_events,
            "received_monotonic_ns": self.received_monotonic_ns,
            "received_at": self.received_at.isoformat(),
        }


@dataclass
class PostedWebhook:
    """One signed request the fake sent: a status callback, an SMS reply or a keypress."""

    kind: Literal["status", "sms", "digits"]
    url: str
    params: dict[str, str]
    signature: str
    status_code: int | None = None
    response_text: str = ""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WebhookReply:
    status_code: int
    body: str


@dataclass
class _Failure:
    http_status: int
    code: int
    kind: Kind | None
    retry_after: int | None = None
    to: str | None = None


def _rfc2822(moment: datetime) -> str:
    return format_datetime(moment)


def _formatted(number: str) -> str:
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return number
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)


def _new_sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


class FakeTwilio:
    """A Twilio that runs in the test: records, refuses, calls back, replies."""

    def __init__(self, account_sid: str, auth_token: str, *, callback_delay_s: float = 0.0) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.callback_delay_s = callback_delay_s
        self.base_url: str | None = None
        """Set by the server once it listens."""
        self.requests: list[RecordedRequest] = []
        self.webhooks: list[PostedWebhook] = []
        self._validator = RequestValidator(auth_token)
        self._failures: deque[_Failure] = deque()
        self._sms_outcomes: dict[str, str] = {}
        self._call_outcomes: dict[str, str] = {}
        self._calls: dict[str, RecordedRequest] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None

    # -- inspection ---------------------------------------------------------------

    def accepted(self, kind: Kind | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if r.accepted and (kind is None or r.kind == kind)]

    def stats(self) -> dict[str, Any]:
        return {
            "requests": len(self.requests),
            "accepted": {k: len(self.accepted(k)) for k in ("sms", "call")},
            "rejected": sum(1 for r in self.requests if not r.accepted),
            "webhooks": len(self.webhooks),
        }

    def reset(self) -> None:
        self.requests.clear()
        self.webhooks.clear()
        self._failures.clear()
        self._sms_outcomes.clear()
        self._call_outcomes.clear()
        self._calls.clear()

    # -- controls -----------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 429,
        code: int = 20429,
        kind: Kind | None = None,
        retry_after: int | None = None,
        to: str | None = None,
    ) -> None:
        """Refuse the next `n` authenticated creates (of `kind`, or any; to the number
        `to`, or any) with this error, with a `Retry-After: <seconds>` header when
        `retry_after` is given."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status, got {status}")
        if retry_after is not None and retry_after < 0:
            raise ValueError(f"retry_after must be >= 0, got {retry_after}")
        self._failures.extend(_Failure(status, code, kind, retry_after, to) for _ in range(n))

    def clear_failures(self) -> int:
        """Drop the refusals `fail_next` still owes (a throttle that ends); how many."""
        owed = len(self._failures)
        self._failures.clear()
        return owed

    def set_sms_outcome(self, number: str, outcome: str) -> None:
        if outcome not in SMS_OUTCOMES:
            raise ValueError(f"outcome must be one of {sorted(SMS_OUTCOMES)}, got {outcome!r}")
        self._sms_outcomes[number] = outcome

    def set_call_outcome(self, number: str, outcome: str) -> None:
        if outcome not in CALL_OUTCOMES:
            raise ValueError(f"outcome must be one of {list(CALL_OUTCOMES)}, got {outcome!r}")
        self._call_outcomes[number] = outcome

    async def reply_sms(self, *, from_: str, body: str, to: str, webhook_url: str) -> WebhookReply:
        """Post an incoming-message webhook, as when a user texts `to` (our number)."""
        sid = _new_sid("SM")
        params = {
            "MessageSid": sid,
            "SmsSid": sid,
            "SmsMessageSid": sid,
            "AccountSid": self.account_sid,
            "From": from_,
            "To": to,
            "Body": body,
            "NumMedia": "0",
            "NumSegments": str(sms_segments(body)),
            "SmsStatus": "received",
            "ApiVersion": API_VERSION,
        }
        posted = await self._post("sms", webhook_url, params)
        return WebhookReply(posted.status_code or 0, posted.response_text)

    async def press_digits(self, call_sid: str, digits: str, action_url: str) -> WebhookReply:
        """Post a Gather result for a call this fake placed, as when the callee presses keys."""
        call = self._calls.get(call_sid)
        if call is None:
            raise KeyError(f"call_sid {call_sid!r} is not a call this fake placed")
        params = {
            **self._call_fields(call, "in-progress"),
            "Digits": digits,
            "FinishedOnKey": "",
            "msg": "Gather End",
        }
        posted = await self._post("digits", action_url, params)
        return WebhookReply(posted.status_code or 0, posted.response_text)

    async def drain(self) -> None:
        """Wait until every scheduled status callback has been posted."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- the API ------------------------------------------------------------------

    def check_auth(self, path_account_sid: str, authorization: str | None) -> None:
        user, password = _basic_credentials(authorization)
        if not (
            hmac.compare_digest(user, self.account_sid)
            and hmac.compare_digest(password, self.auth_token)
        ):
            raise TwilioApiError(401, 20003, "Authenticate")
        if path_account_sid != user:
            raise TwilioApiError(
                404,
                20404,
                f"The requested resource /{API_VERSION}/Accounts/{path_account_sid} was not found",
            )

    def handle_create(
        self,
        kind: Kind,
        path_account_sid: str,
        authorization: str | None,
        params: dict[str, list[str]],
    ) -> tuple[RecordedRequest, dict[str, Any]]:
        """One create request -> (its record, JSON body); `record.http_status` is the status.

        Call `schedule_callbacks(record)` once the response has been sent.
        """
        record = RecordedRequest(
            kind=kind,
            account_sid=path_account_sid,
            params=params,
            http_status=0,
            received_monotonic_ns=time.monotonic_ns(),
            received_at=datetime.now(UTC),
        )
        self.requests.append(record)
        try:
            self.check_auth(path_account_sid, authorization)
            self._maybe_fail(kind, first(params, "To"))
            (check_message if kind == "sms" else check_call)(params)
        except TwilioApiError as error:
            record.http_status, record.error_code = error.http_status, error.code
            record.retry_after = error.retry_after
            return record, error.body()
        record.http_status = 201
        record.sid = _new_sid("SM" if kind == "sms" else "CA")
        if kind == "call":
            self._calls[record.sid] = record
        return record, self._resource(record)

    def schedule_callbacks(self, record: RecordedRequest) -> None:
        """Start posting status callbacks for an accepted request (after its 201 is sent)."""
        if not record.accepted or not record.status_callback:
            return
        coro = self._sms_callbacks(record) if record.kind == "sms" else self._call_callbacks(record)
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _maybe_fail(self, kind: Kind, to: str | None) -> None:
        failure = next(
            (f for f in self._failures if f.kind in (None, kind) and f.to in (None, to)), None
        )
        if failure is None:
            return
        self._failures.remove(failure)
        message = "Too Many Requests" if failure.http_status == 429 else "Injected failure"
        raise TwilioApiError(failure.http_status, failure.code, message, failure.retry_after)

    def _resource(self, record: RecordedRequest) -> dict[str, Any]:
        assert record.sid is not None
        now = _rfc2822(record.received_at)
        collection = "Messages" if record.kind == "sms" else "Calls"
        base = f"/{API_VERSION}/Accounts/{record.account_sid}/{collection}/{record.sid}"
        common = {
            "sid": record.sid,
            "account_sid": record.account_sid,
            "api_version": API_VERSION,
            "date_created": now,
            "date_updated": now,
            "direction": "outbound-api",
            "from": record.from_,
            "to": record.to,
            "price": None,
            "price_unit": "USD",
            "status": "queued",
            "uri": base + ".json",
        }
        if record.kind == "sms":
            body = record.body or ""
            return {
                **common,
                "body": body,
                "date_sent": None,
                "error_code": None,
                "error_message": None,
                "messaging_service_sid": first(record.params, "MessagingServiceSid"),
                "num_media": "0",
                "num_segments": str(sms_segments(body)),
                "subresource_uris": {"media": base + "/Media.json"},
            }
        return {
            **common,
            "parent_call_sid": None,
            "to_formatted": _formatted(record.to or ""),
            "from_formatted": _formatted(record.from_ or ""),
            "phone_number_sid": None,
            "start_time": None,
            "end_time": None,
            "duration": None,
            "answered_by": None,
            "forwarded_from": None,
            "group_sid": None,
            "caller_name": None,
            "queue_time": "0",
            "trunk_sid": None,
            "subresource_uris": {
                "notifications": base + "/Notifications.json",
                "recordings": base + "/Recordings.json",
                "events": base + "/Events.json",
            },
        }

    # -- webhooks -----------------------------------------------------------------

    async def _sms_callbacks(self, record: RecordedRequest) -> None:
        assert record.sid and record.status_callback and record.to
        outcome = self._sms_outcomes.get(record.to, "delivered")
        statuses = ["queued", "failed"] if outcome == "failed" else ["queued", "sent", outcome]
        for status in statuses:
            await asyncio.sleep(self.callback_delay_s)
            params = {
                "AccountSid": record.account_sid,
                "ApiVersion": API_VERSION,
                "From": record.from_ or "",
                "To": record.to,
                "MessageSid": record.sid,
                "SmsSid": record.sid,
                "MessageStatus": status,
                "SmsStatus": status,
            }
            error_code = SMS_OUTCOMES.get(status)
            if error_code is not None:
                params["ErrorCode"] = str(error_code)
            await self._post("status", record.status_callback, params)

    async def _call_callbacks(self, record: RecordedRequest) -> None:
        assert record.sid and record.status_callback and record.to
        outcome = self._call_outcomes.get(record.to, "completed")
        statuses = {
            "completed": ["initiated", "ringing", "in-progress", "completed"],
            "no-answer": ["initiated", "ringing", "no-answer"],
            "busy": ["initiated", "busy"],
            "failed": ["failed"],
        }[outcome]
        wanted = set(record.status_callback_events or ["completed"])
        sequence = 0
        for status in statuses:
            event = _CALL_EVENT_OF_STATUS.get(status, "completed")
            if event not in wanted:
                continue
            await asyncio.sleep(self.callback_delay_s)
            params = {
                **self._call_fields(record, status),
                "SequenceNumber": str(sequence),
                "Timestamp": _rfc2822(datetime.now(UTC)),
                "CallbackSource": "call-progress-events",
            }
            if event == "completed":
                duration = "15" if status == "completed" else "0"
                params |= {"CallDuration": duration, "Duration": "1"}
            sequence += 1
            await self._post("status", record.status_callback, params)

    def _call_fields(self, call: RecordedRequest, status: str) -> dict[str, str]:
        assert call.sid is not None
        return {
            "AccountSid": call.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": call.sid,
            "CallStatus": status,
            "Direction": "outbound-api",
            "From": call.from_ or "",
            "To": call.to or "",
            "Caller": call.from_ or "",
            "Called": call.to or "",
        }

    async def _post(
        self, kind: Literal["status", "sms", "digits"], url: str, params: dict[str, str]
    ) -> PostedWebhook:
        signature = self._validator.compute_signature(url, params)
        posted = PostedWebhook(kind=kind, url=url, params=params, signature=signature)
        self.webhooks.append(posted)
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=10.0)
        headers = {
            "X-Twilio-Signature": signature,
            "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
            "User-Agent": "TwilioProxy/1.1",
        }
        try:
            response = await self._http.post(url, data=params, headers=headers)
        except httpx.HTTPError as exc:
            posted.error = f"{type(exc).__name__}: {exc}"
        else:
            posted.status_code, posted.response_text = response.status_code, response.text
        return posted


def _basic_credentials(authorization: str | None) -> tuple[str, str]:
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    user, _, password = decoded.partition(":")
    return user, password
