import asyncio
import io
import re
import socket
from collections.abc import AsyncIterator

import pytest

from tocsin.faketwilio import FakeTwilio, create_fake_twilio
from tocsin.notification.messages import voice_twiml
from tocsin.notification.providers import (
    CALL_STATUS_EVENTS,
    BaseUrlHttpClient,
    ConsoleProvider,
    Provider,
    ProviderError,
    SendResult,
    TwilioProvider,
    classify_twilio_error,
    mask_phone,
    parse_retry_after,
    send_with_retry,
)

ACCOUNT_SID = "AC" + "a1" * 16
AUTH_TOKEN = "test-auth-token"
FROM = "+15005550006"
ALICE = "+15005550010"
CALLBACK = "http://127.0.0.1:9/never-called"  # the fake records it; nothing listens


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with create_fake_twilio(ACCOUNT_SID, AUTH_TOKEN) as running:
        yield running


@pytest.fixture
async def provider(fake: FakeTwilio) -> AsyncIterator[TwilioProvider]:
    assert fake.base_url is not None
    twilio = TwilioProvider(ACCOUNT_SID, AUTH_TOKEN, FROM, base_url=fake.base_url)
    yield twilio
    await twilio.aclose()


class SleepRecorder:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


async def test_send_sms_returns_the_message_sid(fake: FakeTwilio, provider: TwilioProvider):
    result = await provider.send_sms(ALICE, "tocsin: disk full", status_callback=None)

    assert re.fullmatch(r"SM[0-9a-f]{32}", result.sid or "")
    assert result.status == "queued"
    [sent] = fake.accepted("sms")
    assert (sent.sid, sent.to, sent.from_, sent.body) == (
        result.sid,
        ALICE,
        FROM,
        "tocsin: disk full",
    )
    assert sent.status_callback is None


async def test_send_sms_passes_the_status_callback(fake: FakeTwilio, provider: TwilioProvider):
    await provider.send_sms(ALICE, "page", status_callback=CALLBACK)
    assert fake.accepted("sms")[0].status_callback == CALLBACK


async def test_place_call_sends_twiml_and_progress_events(
    fake: FakeTwilio, provider: TwilioProvider
):
    twiml = voice_twiml("Payments", "disk full", "https://tocsin.example.com/gather")

    result = await provider.place_call(ALICE, twiml, status_callback=CALLBACK)

    assert re.fullmatch(r"CA[0-9a-f]{32}", result.sid or "")
    [call] = fake.accepted("call")
    assert (call.sid, call.to, call.from_, call.twiml) == (result.sid, ALICE, FROM, twiml)
    assert call.status_callback == CALLBACK
    assert call.status_callback_events == list(CALL_STATUS_EVENTS)
    assert call.params["Timeout"] == ["30"]


async def test_rate_limited_send_is_retried_and_delivered_once(
    fake: FakeTwilio, provider: TwilioProvider
):
    fake.fail_next(2, status=429, code=20429)
    sleep = SleepRecorder()

    result = await send_with_retry(
        lambda: provider.send_sms(ALICE, "page", None), sleep=sleep, jitter=lambda: 1.0
    )

    assert [r.http_status for r in fake.requests] == [429, 429, 201]
    assert [r.sid for r in fake.accepted("sms")] == [result.sid]
    assert sleep.delays == [0.2, 0.4]


async def test_a_throttle_with_retry_after_is_waited_out(
    fake: FakeTwilio, provider: TwilioProvider
):
    fake.fail_next(1, status=429, code=20429, retry_after=3)
    sleep = SleepRecorder()

    result = await send_with_retry(
        lambda: provider.send_sms(ALICE, "page", None), sleep=sleep, jitter=lambda: 1.0
    )

    assert [(r.http_status, r.retry_after) for r in fake.requests] == [(429, 3), (201, None)]
    assert [r.sid for r in fake.accepted("sms")] == [result.sid]
    assert sleep.delays == [3.0]  # not the 0.2 s backoff


async def test_a_retry_after_longer_than_the_backoff_is_left_to_the_caller(
    fake: FakeTwilio, provider: TwilioProvider
):
    fake.fail_next(1, status=503, code=20503, retry_after=30)
    sleep = SleepRecorder()

    with pytest.raises(ProviderError) as caught:
        await send_with_retry(lambda: provider.send_sms(ALICE, "page", None), sleep=sleep)

    assert caught.value.retryable and caught.value.retry_after_s == 30.0
    assert sleep.delays == [] and len(fake.requests) == 1


def test_retry_after_takes_seconds_or_an_http_date():
    from datetime import UTC, datetime

    now = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after("Thu, 03 Dec 2026 09:00:12 GMT", now) == 12.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


async def test_server_error_is_retryable(fake: FakeTwilio, provider: TwilioProvider):
    fake.fail_next(1, status=500, code=20500)
    with pytest.raises(ProviderError) as caught:
        await provider.send_sms(ALICE, "page", None)
    assert caught.value.retryable and not caught.value.permanent
    assert (caught.value.http_status, caught.value.code) == (500, 20500)


async def test_invalid_number_is_permanent_and_not_retried(
    fake: FakeTwilio, provider: TwilioProvider
):
    sleep = SleepRecorder()
    with pytest.raises(ProviderError) as caught:
        await send_with_retry(lambda: provider.send_sms("+15005550001", "page", None), sleep=sleep)

    error = caught.value
    assert error.permanent and not error.retryable
    assert (error.code, error.http_status) == (21211, 400)
    assert "5005550001" not in str(error)  # Twilio's message names the number; ours masks it
    assert len(fake.requests) == 1 and sleep.delays == []


@pytest.mark.parametrize(
    ("to", "code"),
    [("+15005550009", 21614), ("+15005550004", 21610), ("+15005550002", 21612)],
)
async def test_undeliverable_numbers_are_permanent(provider: TwilioProvider, to: str, code: int):
    with pytest.raises(ProviderError) as caught:
        await provider.send_sms(to, "page", None)
    assert caught.value.permanent and caught.value.code == code


async def test_wrong_credentials_are_a_permanent_error(fake: FakeTwilio):
    assert fake.base_url is not None
    wrong: Provider = TwilioProvider(ACCOUNT_SID, "not-the-token", FROM, base_url=fake.base_url)
    try:
        with pytest.raises(ProviderError) as caught:
            await wrong.send_sms(ALICE, "page", None)
    finally:
        await wrong.aclose()
    assert caught.value.permanent
    assert (caught.value.http_status, caught.value.code) == (401, 20003)
    assert fake.accepted() == []


async def test_unreachable_twilio_is_retryable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nobody = TwilioProvider(ACCOUNT_SID, AUTH_TOKEN, FROM, base_url=f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(ProviderError) as caught:
            await nobody.send_sms(ALICE, "page", None)
    finally:
        await nobody.aclose()
    assert caught.value.retryable and not caught.value.permanent


async def test_request_sent_but_unanswered_is_outcome_unknown_and_not_retried():
    """The request reached the server, which hung up: Twilio may have sent the SMS."""
    received: list[bytes] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    rude = TwilioProvider(ACCOUNT_SID, AUTH_TOKEN, FROM, base_url=f"http://127.0.0.1:{port}")
    sleep = SleepRecorder()
    try:
        with pytest.raises(ProviderError) as caught:
            await send_with_retry(lambda: rude.send_sms(ALICE, "page", None), sleep=sleep)
    finally:
        await rude.aclose()
        server.close()
        await server.wait_closed()
    assert caught.value.outcome_unknown
    assert len(received) == 1 and sleep.delays == []
    assert received[0].startswith(f"POST /2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json".encode())


async def test_retries_give_up_after_the_last_attempt():
    attempts: list[int] = []
    sleep = SleepRecorder()

    async def always_busy() -> SendResult:
        attempts.append(1)
        raise ProviderError("busy", permanent=False, retryable=True, http_status=429)

    with pytest.raises(ProviderError, match="busy"):
        await send_with_retry(
            always_busy, attempts=6, base_delay=0.5, max_delay=3.0, sleep=sleep, jitter=lambda: 1.0
        )
    assert len(attempts) == 6
    assert sleep.delays == [0.5, 1.0, 2.0, 3.0, 3.0]


async def test_retry_delays_are_jittered_within_half_to_full_backoff():
    sleep = SleepRecorder()
    failures = iter([True, True, False])

    async def flaky() -> str:
        if next(failures):
            raise ProviderError("busy", permanent=False, retryable=True)
        return "ok"

    assert await send_with_retry(flaky, sleep=sleep, jitter=lambda: 0.0) == "ok"
    assert sleep.delays == [0.1, 0.2]


async def test_send_with_retry_needs_an_attempt():
    async def never() -> None:
        raise AssertionError

    with pytest.raises(ValueError, match="attempts"):
        await send_with_retry(never, attempts=0)


@pytest.mark.parametrize("code", [21211, 21614, 21610, 21612, 21408, 21212, 21606, 21611])
def test_twilio_refusals_are_permanent(code: int):
    error = classify_twilio_error(400, code, "refused")
    assert error.permanent and not error.retryable and error.code == code


@pytest.mark.parametrize(("status", "code"), [(429, 20429), (400, 20429), (500, None), (503, 0)])
def test_throttling_and_server_errors_are_retryable(status: int, code: int | None):
    error = classify_twilio_error(status, code, "try later")
    assert error.retryable and not error.permanent and error.http_status == status


def test_provider_error_cannot_be_both_kinds():
    with pytest.raises(ValueError):
        ProviderError("x", permanent=True, retryable=True)


@pytest.mark.parametrize(
    ("url", "rewritten"),
    [
        (
            "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json",
            "http://127.0.0.1:8080/2010-04-01/Accounts/AC1/Messages.json",
        ),
        (
            "https://api.dublin.ie1.twilio.com/2010-04-01/Calls.json?PageSize=5",
            "http://127.0.0.1:8080/2010-04-01/Calls.json?PageSize=5",
        ),
        ("https://example.com/twilio.com/x", "https://example.com/twilio.com/x"),
        ("https://eviltwilio.com/x", "https://eviltwilio.com/x"),
    ],
)
def test_http_client_swaps_only_twilio_hosts(url: str, rewritten: str):
    client = BaseUrlHttpClient("http://127.0.0.1:8080", timeout_s=1.0, max_connections=1)
    assert client.rewrite(url) == rewritten


def test_http_client_keeps_a_base_path_prefix():
    client = BaseUrlHttpClient("https://proxy.internal/twilio/", timeout_s=1.0, max_connections=1)
    assert (
        client.rewrite("https://api.twilio.com/2010-04-01/Accounts/AC1/Calls.json")
        == "https://proxy.internal/twilio/2010-04-01/Accounts/AC1/Calls.json"
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"from_number": "5005550006"}, "from_number"),
        ({"from_number": "+1415555267"}, "from_number"),
        ({"auth_token": ""}, "auth_token"),
        ({"account_sid": ""}, "account_sid"),
        ({"base_url": "api.twilio.com"}, "base_url"),
    ],
)
def test_twilio_provider_rejects_bad_configuration(kwargs: dict[str, str], field: str):
    arguments = {
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "from_number": FROM,
        "base_url": "https://api.twilio.com",
    } | kwargs
    with pytest.raises(ValueError, match=field):
        TwilioProvider(
            arguments["account_sid"],
            arguments["auth_token"],
            arguments["from_number"],
            base_url=arguments["base_url"],
        )


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+15005550006", "+1******0006"),
        ("+447700900123", "+44******0123"),
        ("+33612345678", "+33*****5678"),
        ("12345", "*****"),
        ("not-a-number", "********mber"),
    ],
)
def test_mask_phone(number: str, masked: str):
    assert mask_phone(number) == masked


async def test_console_provider_prints_one_masked_line_per_page():
    out = io.StringIO()
    console: Provider = ConsoleProvider(out)  # mypy checks both satisfy the protocol
    twiml = voice_twiml("Payments", "disk full\non db1", "https://tocsin.example.com/gather")

    sms = await console.send_sms(ALICE, "tocsin: disk full\non db1", None)
    call = await console.place_call(ALICE, twiml, None)
    await console.aclose()

    lines = out.getvalue().splitlines()
    assert lines == [
        "tocsin page: SMS to +1******0010: tocsin: disk full on db1",
        "tocsin page: voice call to +1******0010: This is tocsin. Alert for Payments: "
        "disk full on db1 | Press 4 to acknowledge, 6 to resolve. | "
        "No response received. Goodbye.",
    ]
    assert "5005550010" not in out.getvalue()
    assert sms == call == SendResult(sid=None, status="sent")
