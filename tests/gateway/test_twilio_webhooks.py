"""Twilio's webhooks at the gateway: only signed requests get through, to the right place."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from xml.etree import ElementTree

import httpx
import pytest
from twilio.request_validator import RequestValidator

from tests.harness import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER
from tests.notification.stack import ALICE, SMS, PagingStack, paging_stack
from tests.services import client_for
from tocsin.gateway.app import create_app
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.config import load_config
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import incidents_pb2

PUBLIC_URL = "https://tocsin.example.com"
TWILIO_ENV = {
    "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
    "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
    "TWILIO_FROM_NUMBER": FROM_NUMBER,
    "TOCSIN_PUBLIC_URL": PUBLIC_URL,
}


def signature(url: str, params: Sequence[tuple[str, str]], token: str = AUTH_TOKEN) -> str:
    class Form(dict[str, list[str]]):
        def getlist(self, key: str) -> list[str]:
            return self[key]

    form = Form()
    for key, value in params:
        form.setdefault(key, []).append(value)
    return str(RequestValidator(token).compute_signature(url, form))


@pytest.fixture
async def offline_gateway() -> AsyncIterator[httpx.AsyncClient]:
    """The gateway behind a proxy at PUBLIC_URL, with no notification service behind it."""
    client = client_for()  # every service at the discard port
    app = create_app(load_config(TWILIO_ENV), client, ManualClock())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://10.0.0.7:8080"
    ) as http:
        yield http
    await client.close()


@pytest.mark.parametrize("path", ["/twilio/sms", "/twilio/voice", "/twilio/status"])
async def test_requests_without_a_valid_signature_are_refused(
    offline_gateway: httpx.AsyncClient, path: str
) -> None:
    params = [("From", ALICE), ("Body", "1a"), ("MessageSid", "SM1")]
    forged = {
        "no signature": {},
        "wrong token": {"X-Twilio-Signature": signature(PUBLIC_URL + path, params, "guess")},
        "signed for another host": {
            "X-Twilio-Signature": signature("http://10.0.0.7:8080" + path, params)
        },
    }
    for headers in forged.values():
        response = await offline_gateway.post(path, data=dict(params), headers=headers)
        assert response.status_code == 403
        assert "invalid Twilio signature" in response.text


async def test_the_signature_covers_the_query_and_every_repeated_value(
    offline_gateway: httpx.AsyncClient,
) -> None:
    url = f"{PUBLIC_URL}/twilio/status?attempt=16-1-0"
    params = [("CallSid", "CA1"), ("CallStatus", "completed"), ("Event", "a"), ("Event", "b")]
    only_first = signature(url, params[:3])

    refused = await offline_gateway.post(
        "/twilio/status?attempt=16-1-0", content=_form(params), headers=_headers(only_first)
    )
    other_query = await offline_gateway.post(
        "/twilio/status?attempt=99-1-0",
        content=_form(params),
        headers=_headers(signature(url, params)),
    )
    signed = await offline_gateway.post(
        "/twilio/status?attempt=16-1-0",
        content=_form(params),
        headers=_headers(signature(url, params)),
    )

    assert (refused.status_code, other_query.status_code) == (403, 403)
    assert signed.status_code == 503  # through the check; nothing listens behind it
    assert "notification service unavailable" in signed.text


def _form(params: Sequence[tuple[str, str]]) -> str:
    return str(httpx.QueryParams(list(params)))


def _headers(sig: str) -> dict[str, str]:
    return {"X-Twilio-Signature": sig, "Content-Type": "application/x-www-form-urlencoded"}


async def test_without_twilio_the_routes_say_it_is_not_configured() -> None:
    client = client_for()
    app = create_app(load_config({}), client, ManualClock())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8080"
    ) as http:
        response = await http.post("/twilio/sms", data={"From": ALICE, "Body": "1a"})
    await client.close()

    assert response.status_code == 404
    assert "Twilio is not configured" in response.text and "TWILIO_ACCOUNT_SID" in response.text


@pytest.fixture
async def stack(redis: RedisClient) -> AsyncIterator[PagingStack]:
    async with paging_stack(redis) as paging:
        yield paging
        paging.pager.check_all_expected()


async def test_a_signed_reply_is_answered_with_twiml(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger("disk full on db1")
    await stack.notify(incident_id, "alice")
    await stack.pager.expect_sms("alice")
    assert stack.pager.sms_webhook_url is not None

    answer = await stack.fake.reply_sms(
        from_=ALICE, body="ack", to=FROM_NUMBER, webhook_url=stack.pager.sms_webhook_url
    )
    stranger = await stack.fake.reply_sms(
        from_="+15005550099", body="ack", to=FROM_NUMBER, webhook_url=stack.pager.sms_webhook_url
    )

    assert answer.status_code == 200
    message = ElementTree.fromstring(answer.body).find("Message")
    assert message is not None and message.text == f"Acknowledged #{incident_id}: disk full on db1"
    assert (stranger.status_code, ElementTree.fromstring(stranger.body).findall("*")) == (200, [])
    status = await stack.client.incidents.GetIncident(
        incidents_pb2.GetIncidentRequest(incident_id=incident_id)
    )
    assert status.incident.status == incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED


async def test_a_forged_reply_acknowledges_nothing(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger()
    await stack.notify(incident_id, "alice")
    await stack.pager.expect_sms("alice")
    assert stack.pager.sms_webhook_url is not None
    public_url = stack.config.public_url
    assert stack.pager.sms_webhook_url.startswith(public_url)

    async with httpx.AsyncClient() as http:
        response = await http.post(
            stack.pager.sms_webhook_url,
            data={"From": ALICE, "To": FROM_NUMBER, "Body": "ack"},
            headers={"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"},
        )

    assert response.status_code == 403
    status = await stack.client.incidents.GetIncident(
        incidents_pb2.GetIncidentRequest(incident_id=incident_id)
    )
    assert status.incident.status == incidents_pb2.INCIDENT_STATUS_TRIGGERED
