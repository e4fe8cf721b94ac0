"""Where pages leave tocsin: Twilio (SMS and voice) or, without credentials, the console.

A provider makes exactly ONE attempt per call and reports failures as `ProviderError`,
classified three ways so the caller can keep "no page lost, none sent twice":

- `retryable`: Twilio said the request was not processed (HTTP 429 / code 20429, 5xx)
  or it never left this process (no connection could be made). Safe to send again;
  `send_with_retry` does that with jittered exponential backoff, waiting at least what a
  `Retry-After` header asked (`retry_after_s`); the sender retries longer from the rule's
  timer.
- `permanent`: Twilio refused it for good (any other 4xx: invalid number, opted out,
  no permission...). Sending again cannot help.
- neither (`outcome_unknown`): the request went out but no answer came back (read
  timeout, connection dropped). Twilio may have sent the page; retrying blindly is how
  people get two SMS, so the caller decides (normally: record it, don't resend).

A second provider (TOCSIN_SMS_FALLBACK_*: SignalWire's Twilio-compatible API, or another
Twilio account) makes the phone channels a list of `Route`s, each with a `CircuitBreaker`.
A provider failure (`counts_against_provider`: 5xx, no connection, a timeout, refused
credentials; never a 429, which is our own pace) counts against its breaker; after
`failures` in a row the provider is skipped for `open_for`, then one page tries it again.
An attempt moves to the next provider only after an error that proves the request was
not processed (`fails_over`: 5xx, no connection, 401/403): a timeout may have sent the
page, so that attempt is not sent again anywhere (the breaker still counts it, so the next
pages go to the healthy provider).
"""

from __future__ import annotations

import asyncio
import random
import re
import sys
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol, TextIO, TypeVar
from urllib.parse import urlsplit, urlunsplit
from xml.etree import ElementTree

import aiohttp
import phonenumbers
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from tocsin.notification.messages import clean_text

CALL_STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
RATE_LIMITED_CODE = 20429

_PHONE_LIKE = re.compile(r"\+?\d[\d ().-]{5,}\d")
_RETRY_AFTER: ContextVar[float | None] = ContextVar("twilio_retry_after", default=None)
"""The Retry-After of the last refused request of this task (set by BaseUrlHttpClient,
read by TwilioProvider: Twilio's exceptions do not carry the response headers)."""

T = TypeVar("T")


def mask_phone(number: str) -> str:
    """`+15005550006` -> `+1******0006`: country code and last four digits only."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        visible = number[-4:] if len(number) >= 8 else ""
        return "*" * (len(number) - len(visible)) + visible
    national = phonenumbers.national_significant_number(parsed)
    visible = national[-4:] if len(national) > 6 else ""
    return f"+{parsed.country_code}" + "*" * (len(national) - len(visible)) + visible


def mask_phones_in(text: str) -> str:
    """Mask every phone-number-looking run in free text (e.g. a Twilio error message)."""
    return _PHONE_LIKE.sub(lambda m: mask_phone(re.sub(r"[ ().-]", "", m.group(0))), text)


@dataclass(frozen=True)
class SendResult:
    sid: str | None
    """Twilio's Message (SM...) or Call (CA...) sid; None when nothing was sent remotely."""
    status: str


class ProviderError(Exception):
    """One failed attempt. See the module docstring for the three kinds."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        retryable: bool,
        code: int | None = None,
        http_status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        if permanent and retryable:
            raise ValueError("a ProviderError cannot be both permanent and retryable")
        super().__init__(message)
        self.permanent = permanent
        self.retryable = retryable
        self.code = code
        self.http_status = http_status
        self.retry_after_s = retry_after_s
        """How long the provider asked us to wait before trying again (Retry-After)."""

    @property
    def outcome_unknown(self) -> bool:
        return not self.permanent and not self.retryable


class Provider(Protocol):
    async def send_sms(self, to: str, body: str, status_callback: str | None) -> SendResult: ...

    async def place_call(self, to: str, twiml: str, status_callback: str | None) -> SendResult: ...

    async def aclose(self) -> None: ...


def classify_twilio_error(http_status: int, code: int | None, message: str) -> ProviderError:
    """Twilio's answer (HTTP status + Twilio error code) -> the kind of failure."""
    text = f"Twilio HTTP {http_status}, code {code}: {mask_phones_in(message)}"
    retryable = http_status == 429 or code == RATE_LIMITED_CODE or http_status >= 500
    permanent = not retryable and 400 <= http_status < 500
    return ProviderError(
        text, permanent=permanent, retryable=retryable, code=code, http_status=http_status
    )


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header (delay-seconds or an HTTP date) in seconds; None if absent or
    unreadable (then the caller's own backoff applies)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def classify_exception(exc: BaseException) -> ProviderError:
    """Any failure of one Twilio request -> ProviderError (never leaks a phone number)."""
    if isinstance(exc, TwilioRestException):
        return classify_twilio_error(exc.status, exc.code, exc.msg)
    if isinstance(exc, TwilioServiceException):
        return classify_twilio_error(exc.status, exc.code, exc.title)
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return ProviderError(
            f"could not connect to Twilio: {type(exc).__name__}",
            permanent=False,
            retryable=True,
        )
    return ProviderError(
        f"no answer from Twilio, the request may have been processed: {type(exc).__name__}",
        permanent=False,
        retryable=False,
    )


AUTH_STATUSES = (401, 403)


def fails_over(error: ProviderError) -> bool:
    """The provider did not process the request and its trouble is its own (5xx, no
    connection, our credentials refused): the page may go out through the next one."""
    if error.http_status in AUTH_STATUSES:
        return True
    return error.retryable and error.http_status != 429 and error.code != RATE_LIMITED_CODE


def counts_against_provider(error: ProviderError) -> bool:
    """A failure of the provider rather than of the page (for its circuit breaker): what
    `fails_over`, and a timeout (no answer at all)."""
    return fails_over(error) or error.outcome_unknown


@dataclass
class CircuitBreaker:
    """Consecutive failures of one provider, in this process. Closed: used. After
    `failures` in a row: open (skipped) for `open_for_ms`; then half-open: the next page
    tries it (and the breaker stays open for the others meanwhile); a success closes it."""

    failures: int
    open_for_ms: int
    now_ms: Callable[[], int]
    consecutive: int = 0
    open_until_ms: int = 0

    def ready(self) -> bool:
        """Closed, or open long enough for a trial; changes nothing."""
        return self.consecutive < self.failures or self.now_ms() >= self.open_until_ms

    def allows(self) -> bool:
        """`ready`, and if that is for a trial, the trial is this caller's: the breaker
        stays open for the others until it succeeds or `open_for_ms` pass again."""
        if not self.ready():
            return False
        if self.consecutive >= self.failures:
            self.open_until_ms = self.now_ms() + self.open_for_ms  # one trial at a time
        return True

    def succeeded(self) -> None:
        self.consecutive = 0
        self.open_until_ms = 0

    def failed(self) -> None:
        self.consecutive += 1
        if self.consecutive >= self.failures:
            self.open_until_ms = self.now_ms() + self.open_for_ms


@dataclass
class Route:
    """One provider of the phone channels, by name (`twilio`, `signalwire`, `console`)."""

    name: str
    provider: Provider
    breaker: CircuitBreaker | None = None
    """None for a lone provider (nothing to fail over to)."""

    def ready(self) -> bool:
        return self.breaker is None or self.breaker.ready()


def route_order(routes: list[Route]) -> list[Route]:
    """The providers to try, in order: those whose breaker lets them, then the others
    (a page goes somewhere even when every provider looks down). Only the first's
    half-open trial is taken (it is the one this page tries): taking every ready
    provider's trial while a healthy first one carried the page kept a recovered
    second provider open for ever, its trial spent by pages that never tried it."""
    ready = [r for r in routes if r.ready()]
    order = ready + [r for r in routes if r not in ready]
    if ready and ready[0].breaker is not None:
        ready[0].breaker.allows()
    return order


async def send_with_retry(
    op: Callable[[], Awaitable[T]],
    *,
    attempts: int = 5,
    base_delay: float = 0.2,
    max_delay: float = 5.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    jitter: Callable[[], float] = random.random,
    retry_if: Callable[[ProviderError], bool] = lambda error: True,
) -> T:
    """Run `op` until it succeeds, retrying only `retryable` ProviderErrors.

    Delay before retry n (n = 1, 2, ...) is uniform in [d/2, d] with
    d = min(max_delay, base_delay * 2**(n-1)) ("equal jitter"), and never shorter than
    the error's Retry-After; an error asking for longer than `max_delay`, or one
    `retry_if` declines (another provider will take it), is raised at once
    (the caller may retry later without holding anything meanwhile). Pass a Clock's
    `sleep` so tests never wait.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            return await op()
        except ProviderError as error:
            if not error.retryable or attempt == attempts or not retry_if(error):
                raise
            if error.retry_after_s is not None and error.retry_after_s > max_delay:
                raise
            ceiling = min(max_delay, base_delay * 2 ** (attempt - 1))
            delay = ceiling / 2 + ceiling / 2 * jitter()
            await sleep(max(delay, error.retry_after_s or 0.0))
    raise AssertionError("unreachable")


class ConsoleProvider:
    """Prints one line per page; what `tocsin up` uses when no Twilio credentials are set."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout

    def _print(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()

    async def send_sms(self, to: str, body: str, status_callback: str | None) -> SendResult:
        self._print(f"tocsin page: SMS to {mask_phone(to)}: {clean_text(body)}")
        return SendResult(sid=None, status="sent")

    async def place_call(self, to: str, twiml: str, status_callback: str | None) -> SendResult:
        self._print(f"tocsin page: voice call to {mask_phone(to)}: {_spoken_text(twiml)}")
        return SendResult(sid=None, status="sent")

    async def aclose(self) -> None:
        return None


def _spoken_text(twiml: str) -> str:
    try:
        root = ElementTree.fromstring(twiml)
    except ElementTree.ParseError:
        return "(unparseable TwiML)"
    said = [clean_text(el.text) for el in root.iter("Say") if el.text]
    return " | ".join(dict.fromkeys(said))


class BaseUrlHttpClient(AsyncTwilioHttpClient):
    """Twilio's aiohttp client with `*.twilio.com` swapped for `base_url`.

    Path and query are kept, so a Twilio-compatible server (the fake in tests, a
    staging proxy) sees exactly what Twilio would. One pooled session is created on
    first use (aiohttp needs a running loop) and reused for every request.
    """

    def __init__(self, base_url: str, *, timeout_s: float, max_connections: int) -> None:
        super().__init__(pool_connections=False, timeout=timeout_s)
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an absolute http(s) URL, got {base_url!r}")
        self._scheme, self._netloc = parts.scheme, parts.netloc
        self._path_prefix = parts.path.rstrip("/")
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def rewrite(self, url: str) -> str:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host != "twilio.com" and not host.endswith(".twilio.com"):
            return url
        path = self._path_prefix + parts.path
        return urlunsplit((self._scheme, self._netloc, path, parts.query, parts.fragment))

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the signature Twilio's client calls
        allow_redirects: bool = False,
    ) -> Response:
        if self._session is None:
            # Close idle connections before a typical server (uvicorn: 5 s) does, so a
            # POST is never written into a socket the server is closing.
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=4)
            self._session = aiohttp.ClientSession(connector=connector)
            self.session = self._session
        if auth is not None:
            # aiohttp 3.14 deprecates `auth=` and BasicAuth; same header, built by aiohttp.
            headers = {**(headers or {}), "Authorization": aiohttp.encode_basic_auth(*auth)}
        _RETRY_AFTER.set(None)
        response = await super().request(
            method,
            self.rewrite(url),
            params=params,
            data=data,
            headers=headers,
            auth=None,
            timeout=timeout if timeout is not None else self.timeout,
            allow_redirects=allow_redirects,
        )
        if response.status_code == 429 or response.status_code >= 500:
            _RETRY_AFTER.set(parse_retry_after((response.headers or {}).get("Retry-After")))
        return response


def _classified(exc: BaseException) -> ProviderError:
    error = classify_exception(exc)
    if error.retryable:
        error.retry_after_s = _RETRY_AFTER.get()
    return error


class TwilioProvider:
    """SMS and voice through the official `twilio` package (async API, one HTTP pool)."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        from_number: str,
        base_url: str = "https://api.twilio.com",
        *,
        request_timeout_s: float = 10.0,
        ring_timeout_s: int = 30,
        max_connections: int = 100,
    ) -> None:
        for field, value in (("account_sid", account_sid), ("auth_token", auth_token)):
            if not value:
                raise ValueError(f"{field} is required for the Twilio provider")
        try:
            valid_from = phonenumbers.is_valid_number(phonenumbers.parse(from_number, None))
        except phonenumbers.NumberParseException:
            valid_from = False
        if not valid_from:
            raise ValueError(f"from_number must be an E.164 phone number, got {from_number!r}")
        self._from = from_number
        self._ring_timeout_s = ring_timeout_s
        self._http = BaseUrlHttpClient(
            base_url, timeout_s=request_timeout_s, max_connections=max_connections
        )
        self._client = Client(account_sid, auth_token, http_client=self._http)

    async def send_sms(self, to: str, body: str, status_callback: str | None) -> SendResult:
        _RETRY_AFTER.set(None)
        try:
            message = await self._client.messages.create_async(
                to=to, from_=self._from, body=body, status_callback=status_callback
            )
        except (TwilioException, aiohttp.ClientError, TimeoutError) as exc:
            # `from None`: Twilio's own message names the phone number in clear.
            raise _classified(exc) from None
        return SendResult(sid=message.sid, status=str(message.status))

    async def place_call(self, to: str, twiml: str, status_callback: str | None) -> SendResult:
        _RETRY_AFTER.set(None)
        try:
            call = await self._client.calls.create_async(
                to=to,
                from_=self._from,
                twiml=twiml,
                status_callback=status_callback,
                status_callback_event=list(CALL_STATUS_EVENTS) if status_callback else None,
                timeout=self._ring_timeout_s,
            )
        except (TwilioException, aiohttp.ClientError, TimeoutError) as exc:
            raise _classified(exc) from None
        return SendResult(sid=call.sid, status=str(call.status))

    async def aclose(self) -> None:
        await self._http.close()
