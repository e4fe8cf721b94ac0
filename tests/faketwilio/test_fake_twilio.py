import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import parse_qsl
from xml.etree import ElementTree

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from tocsin.faketwilio import FakeTwilio, create_fake_twilio, main, serve_asgi
from tocsin.gateway.twilio_webhooks import sms_reply_twiml
from tocsin.notification.messages import voice_twiml

ACCOUNT_SID = "AC" + "0f" * 16
AUTH_TOKEN = "fake-auth-token"
OUR_NUMBER = "+15005550006"
ALICE = "+15005550010"
VALIDATOR = RequestValidator(AUTH_TOKEN)
MESSAGES = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
CALLS = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"


@dataclass
class Received:
    url: str
    form: dict[str, str]
    signature: str

    @property
    def signed_correctly(self) -> bool:
        return bool(VALIDATOR.validate(self.url, self.form, self.signature))


class Receiver:
    """A tiny webhook endpoint, standing in for tocsin's gateway."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.base_url = ""

    async def endpoint(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        self.received.append(
            Received(
                url=str(request.url),
                form=form,
                signature=request.headers.get("x-twilio-signature", ""),
            )
        )
        if request.url.path == "/sms":
            return Response(sms_reply_twiml("Acknowledged"), media_type="application/xml")
        return Response("<Response><Say>Acknowledged.</Say><Hangup/></Response>")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{name}", self.endpoint, methods=["POST"])])

    def statuses(self, key: str) -> list[str]:
        return [r.form[key] for r in self.received]


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with create_fake_twilio(ACCOUNT_SID, AUTH_TOKEN) as running:
        yield running


@pytest.fixture
async def client(fake: FakeTwilio) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=fake.base_url or "", auth=(ACCOUNT_SID, AUTH_TOKEN)
    ) as http:
        yield http


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hooks = Receiver()
    async with serve_asgi(hooks.app()) as base_url:
        hooks.base_url = base_url
        yield hooks


def sms(**overrides: str) -> dict[str, str]:
    return {"To": ALICE, "From": OUR_NUMBER, "Body": "disk full"} | overrides


def call(**overrides: str) -> dict[str, str]:
    twiml = "<Response><Say>disk full</Say></Response>"
    return {"To": ALICE, "From": OUR_NUMBER, "Twiml": twiml} | overrides


async def test_message_create_answers_like_twilio(fake: FakeTwilio, client: httpx.AsyncClient):
    response = await client.post(MESSAGES, data=sms(StatusCallback="https://hooks.example/s"))

    assert response.status_code == 201
    resource = response.json()
    assert re.fullmatch(r"SM[0-9a-f]{32}", resource["sid"])
    assert resource | {"sid": None, "date_created": None, "date_updated": None} == {
        "sid": None,
        "account_sid": ACCOUNT_SID,
        "api_version": "2010-04-01",
        "body": "disk full",
        "date_created": None,
        "date_updated": None,
        "date_sent": None,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": OUR_NUMBER,
        "to": ALICE,
        "messaging_service_sid": None,
        "num_media": "0",
        "num_segments": "1",
        "price": None,
        "price_unit": "USD",
        "status": "queued",
        "subresource_uris": {"media": f"{MESSAGES[:-5]}/{resource['sid']}/Media.json"},
        "uri": f"{MESSAGES[:-5]}/{resource['sid']}.json",
    }
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000", resource["date_created"])
    [record] = fake.requests
    assert (record.kind, record.sid, record.to, record.from_, record.body) == (
        "sms",
        resource["sid"],
        ALICE,
        OUR_NUMBER,
        "disk full",
    )
    assert record.status_callback == "https://hooks.example/s"
    assert record.received_monotonic_ns > 0 and record.received_at.tzinfo is not None


async def test_call_create_keeps_repeated_status_callback_events(
    fake: FakeTwilio, client: httpx.AsyncClient
):
    form = {**call(), "StatusCallbackEvent": ["ringing", "answered"]}
    response = await client.post(CALLS, data=form)

    assert response.status_code == 201
    resource = response.json()
    assert re.fullmatch(r"CA[0-9a-f]{32}", resource["sid"])
    assert (resource["to"], resource["from"], resource["status"]) == (ALICE, OUR_NUMBER, "queued")
    assert resource["to_formatted"] == "(500) 555-0010"
    [record] = fake.accepted("call")
    assert record.status_callback_events == ["ringing", "answered"]
    assert record.twiml == call()["Twiml"]


async def test_wrong_token_is_401(fake: FakeTwilio, client: httpx.AsyncClient):
    response = await client.post(MESSAGES, data=sms(), auth=(ACCOUNT_SID, "wrong"))
    assert response.status_code == 401
    assert response.json() == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }
    assert fake.accepted() == [] and fake.requests[0].http_status == 401


async def test_missing_auth_is_401(fake: FakeTwilio):
    async with httpx.AsyncClient(base_url=fake.base_url or "") as anonymous:
        response = await anonymous.post(MESSAGES, data=sms())
    assert response.status_code == 401


async def test_another_account_in_the_path_is_404(client: httpx.AsyncClient):
    other = MESSAGES.replace(ACCOUNT_SID, "AC" + "9" * 32)
    response = await client.post(other, data=sms())
    assert response.status_code == 404 and response.json()["code"] == 20404


@pytest.mark.parametrize(
    ("path", "form", "code"),
    [
        (MESSAGES, sms(To=""), 21604),
        (MESSAGES, {"To": ALICE, "Body": "x"}, 21603),
        (MESSAGES, sms(Body=""), 21602),
        (MESSAGES, sms(Body="x" * 1601), 21617),
        (MESSAGES, sms(To="+1415555267"), 21211),
        (MESSAGES, sms(To="5005550010"), 21211),
        (MESSAGES, sms(To="+15005550001"), 21211),
        (MESSAGES, sms(To="+15005550002"), 21612),
        (MESSAGES, sms(To="+15005550003"), 21408),
        (MESSAGES, sms(To="+15005550004"), 21610),
        (MESSAGES, sms(To="+15005550009"), 21614),
        (MESSAGES, sms(From="+15005550001"), 21212),
        (MESSAGES, sms(From="+15005550007"), 21606),
        (MESSAGES, sms(From="+15005550008"), 21611),
        (CALLS, call(To=""), 21201),
        (CALLS, call(From=""), 21213),
        (CALLS, call(Twiml=""), 21205),
        (CALLS, call(Twiml="<Response><Say>" + "x" * 4000 + "</Say></Response>"), 20001),
        (CALLS, call(Twiml="<Response><Say>\x1b</Say></Response>"), 12100),
        (CALLS, call(To="+15005550001"), 21217),
        (CALLS, call(To="+15005550004"), 21216),
        (CALLS, call(To="+1415555267"), 21211),
    ],
)
async def test_refuses_what_twilio_refuses(
    fake: FakeTwilio, client: httpx.AsyncClient, path: str, form: dict[str, str], code: int
):
    response = await client.post(path, data=form)

    assert response.status_code == 400
    body = response.json()
    assert (body["code"], body["status"]) == (code, 400)
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}" and body["message"]
    assert fake.accepted() == [] and fake.requests[0].error_code == code


@pytest.mark.parametrize(
    ("path", "form"),
    [
        (MESSAGES, {"To": ALICE, "MessagingServiceSid": "MG" + "1" * 32, "Body": "x"}),
        (MESSAGES, sms(Body="x" * 1600)),
        (CALLS, call(Twiml="", Url="https://tocsin.example/twiml")),
        (CALLS, call(Twiml="<Response><Say>" + "x" * 3968 + "</Say></Response>")),
    ],
)
async def test_accepts_the_alternatives_twilio_accepts(
    client: httpx.AsyncClient, path: str, form: dict[str, str]
):
    response = await client.post(path, data=form)
    assert response.status_code == 201, response.text


async def test_fail_next_refuses_then_recovers(fake: FakeTwilio, client: httpx.AsyncClient):
    fake.fail_next(2, status=429, code=20429)
    fake.fail_next(1, status=500, code=20500, kind="call")

    statuses = [(await client.post(MESSAGES, data=sms())).status_code for _ in range(3)]
    call_response = await client.post(CALLS, data=call())

    assert statuses == [429, 429, 201]
    assert call_response.status_code == 500 and call_response.json()["code"] == 20500
    assert len(fake.accepted("sms")) == 1 and fake.accepted("call") == []


async def test_a_throttle_can_carry_retry_after_and_hit_one_number(client: httpx.AsyncClient):
    other = "+15005550011"
    control = {"count": 1, "status": 429, "code": 20429, "retry_after": 7, "to": ALICE}
    assert (await client.post("/_fake/fail", json=control)).status_code == 200

    elsewhere = await client.post(MESSAGES, data=sms(To=other))
    throttled = await client.post(MESSAGES, data=sms())
    again = await client.post(MESSAGES, data=sms())

    assert elsewhere.status_code == 201 and "retry-after" not in elsewhere.headers
    assert throttled.status_code == 429 and throttled.headers["retry-after"] == "7"
    assert throttled.json()["code"] == 20429
    assert again.status_code == 201


async def test_sms_status_callbacks_are_signed(
    fake: FakeTwilio, client: httpx.AsyncClient, receiver: Receiver
):
    url = f"{receiver.base_url}/status?attempt=a%2F1"
    sid = (await client.post(MESSAGES, data=sms(StatusCallback=url))).json()["sid"]
    await fake.drain()

    assert receiver.statuses("MessageStatus") == ["queued", "sent", "delivered"]
    for hook in receiver.received:
        assert hook.url == url
        assert hook.signed_correctly
        assert not RequestValidator("another-token").validate(hook.url, hook.form, hook.signature)
        assert (hook.form["MessageSid"], hook.form["To"], hook.form["From"]) == (
            sid,
            ALICE,
            OUR_NUMBER,
        )
        assert hook.form["AccountSid"] == ACCOUNT_SID and "ErrorCode" not in hook.form


async def test_sms_outcome_can_be_undelivered(
    fake: FakeTwilio, client: httpx.AsyncClient, receiver: Receiver
):
    fake.set_sms_outcome(ALICE, "undelivered")
    await client.post(MESSAGES, data=sms(StatusCallback=f"{receiver.base_url}/status"))
    await fake.drain()

    assert receiver.statuses("MessageStatus") == ["queued", "sent", "undelivered"]
    assert receiver.received[-1].form["ErrorCode"] == "30003"
    assert all(hook.signed_correctly for hook in receiver.received)


async def test_call_status_callbacks_follow_requested_events(
    fake: FakeTwilio, client: httpx.AsyncClient, receiver: Receiver
):
    events = ["initiated", "ringing", "answered", "completed"]
    form = {**call(StatusCallback=f"{receiver.base_url}/status"), "StatusCallbackEvent": events}
    await client.post(CALLS, data=form)
    await fake.drain()

    assert receiver.statuses("CallStatus") == ["initiated", "ringing", "in-progress", "completed"]
    assert receiver.statuses("SequenceNumber") == ["0", "1", "2", "3"]
    assert receiver.received[-1].form["CallDuration"] == "15"
    assert all(hook.signed_correctly for hook in receiver.received)


async def test_call_outcome_no_answer_and_default_events(
    fake: FakeTwilio, client: httpx.AsyncClient, receiver: Receiver
):
    fake.set_call_outcome(ALICE, "no-answer")
    await client.post(CALLS, data=call(StatusCallback=f"{receiver.base_url}/status"))
    await fake.drain()

    assert receiver.statuses("CallStatus") == ["no-answer"]  # only "completed" by default


def test_outcomes_are_validated():
    fake = FakeTwilio(ACCOUNT_SID, AUTH_TOKEN)
    with pytest.raises(ValueError, match="outcome"):
        fake.set_sms_outcome(ALICE, "lost")
    with pytest.raises(ValueError, match="outcome"):
        fake.set_call_outcome(ALICE, "delivered")
    with pytest.raises(ValueError, match="status"):
        fake.fail_next(1, status=200)


async def test_reply_sms_posts_a_signed_incoming_message(fake: FakeTwilio, receiver: Receiver):
    answer = await fake.reply_sms(
        from_=ALICE, body="4a", to=OUR_NUMBER, webhook_url=f"{receiver.base_url}/sms"
    )

    assert answer.status_code == 200
    message = ElementTree.fromstring(answer.body).find("Message")
    assert message is not None and message.text == "Acknowledged"
    [hook] = receiver.received
    assert hook.signed_correctly
    assert re.fullmatch(r"SM[0-9a-f]{32}", hook.form["MessageSid"])
    assert {k: hook.form[k] for k in ("From", "To", "Body", "AccountSid", "NumMedia")} == {
        "From": ALICE,
        "To": OUR_NUMBER,
        "Body": "4a",
        "AccountSid": ACCOUNT_SID,
        "NumMedia": "0",
    }


async def test_press_digits_posts_a_signed_gather_result(
    fake: FakeTwilio, client: httpx.AsyncClient, receiver: Receiver
):
    action = f"{receiver.base_url}/gather?page=7"
    twiml = voice_twiml("Payments", "disk full", action)
    sid = (await client.post(CALLS, data=call(Twiml=twiml))).json()["sid"]

    answer = await fake.press_digits(sid, "4", action)

    assert answer.status_code == 200 and "Acknowledged." in answer.body
    [hook] = receiver.received
    assert hook.url == action and hook.signed_correctly
    assert {k: hook.form[k] for k in ("Digits", "CallSid", "From", "To", "CallStatus")} == {
        "Digits": "4",
        "CallSid": sid,
        "From": OUR_NUMBER,
        "To": ALICE,
        "CallStatus": "in-progress",
    }


async def test_press_digits_needs_a_call_the_fake_placed(fake: FakeTwilio):
    with pytest.raises(KeyError, match="call_sid"):
        await fake.press_digits("CA" + "0" * 32, "4", "http://127.0.0.1:9/gather")


async def test_unreachable_webhook_is_recorded_not_raised(
    fake: FakeTwilio, client: httpx.AsyncClient
):
    await client.post(MESSAGES, data=sms(StatusCallback="http://127.0.0.1:9/nobody"))
    await fake.drain()
    assert len(fake.webhooks) == 3
    assert all(w.status_code is None and w.error for w in fake.webhooks)


async def test_control_api_drives_the_fake_over_http(
    fake: FakeTwilio, client: httpx.AsyncClient, receiver: Receiver
):
    assert (await client.post("/_fake/fail", json={"count": 1, "kind": "sms"})).status_code == 200
    assert (await client.post(MESSAGES, data=sms())).status_code == 429
    outcome = {"kind": "sms", "number": ALICE, "outcome": "failed"}
    assert (await client.post("/_fake/outcome", json=outcome)).status_code == 200
    created = await client.post(MESSAGES, data=sms(StatusCallback=f"{receiver.base_url}/s"))
    call_sid = (await client.post(CALLS, data=call())).json()["sid"]
    await client.post("/_fake/drain")

    requests = (await client.get("/_fake/requests", params={"kind": "sms"})).json()
    assert [r["http_status"] for r in requests] == [429, 201]
    assert requests[1]["sid"] == created.json()["sid"] and requests[1]["to"] == ALICE
    accepted = (await client.get("/_fake/requests", params={"accepted": "1"})).json()
    assert [r["kind"] for r in accepted] == ["sms", "call"]
    assert receiver.statuses("MessageStatus") == ["queued", "failed"]

    reply = {
        "from": ALICE,
        "to": OUR_NUMBER,
        "body": "4 ack",
        "webhook_url": f"{receiver.base_url}/sms",
    }
    replied = (await client.post("/_fake/reply", json=reply)).json()
    assert replied["status_code"] == 200 and "Acknowledged" in replied["body"]
    press = {"call_sid": call_sid, "digits": "6", "action_url": f"{receiver.base_url}/gather"}
    pressed = (await client.post("/_fake/press", json=press)).json()
    assert pressed["status_code"] == 200
    assert receiver.received[-1].form["Digits"] == "6"
    assert all(hook.signed_correctly for hook in receiver.received)

    webhooks = (await client.get("/_fake/webhooks")).json()
    assert [w["kind"] for w in webhooks] == ["status", "status", "sms", "digits"]
    stats = (await client.get("/_fake/stats")).json()
    assert stats == {"requests": 3, "accepted": {"sms": 1, "call": 1}, "rejected": 1, "webhooks": 4}
    await client.post("/_fake/reset")
    assert (await client.get("/_fake/stats")).json()["requests"] == 0


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/_fake/fail", {"count": "two"}, "count"),
        ("/_fake/fail", {"kind": "fax"}, "kind"),
        ("/_fake/outcome", {"kind": "sms", "number": ALICE}, "outcome"),
        ("/_fake/outcome", {"kind": "sms", "number": ALICE, "outcome": "lost"}, "outcome"),
        ("/_fake/reply", {"from": ALICE, "to": OUR_NUMBER, "body": "4a"}, "webhook_url"),
        ("/_fake/press", {"call_sid": "CA1", "digits": "4", "action_url": "http://x/"}, "call_sid"),
        ("/_fake/fail", [1, 2], "JSON object"),
    ],
)
async def test_control_api_names_the_bad_field(
    client: httpx.AsyncClient, path: str, payload: object, field: str
):
    response = await client.post(path, json=payload)
    assert response.status_code == 400
    assert field in response.json()["error"]


def test_main_requires_credentials_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
    assert main(["--port", "0"]) == 2
    assert "TWILIO_AUTH_TOKEN" in capsys.readouterr().err


async def test_standalone_server_prints_its_url_and_serves():
    env = os.environ | {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tocsin.faketwilio",
        "--port",
        "0",
        env=env,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
        base_url = line.removeprefix("fake twilio listening on ").strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url), line
        async with httpx.AsyncClient(base_url=base_url, auth=(ACCOUNT_SID, AUTH_TOKEN)) as http:
            assert (await http.post(MESSAGES, data=sms())).status_code == 201
            assert (await http.get("/_fake/stats")).json()["accepted"]["sms"] == 1
    finally:
        process.terminate()
        assert await process.wait() in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM
