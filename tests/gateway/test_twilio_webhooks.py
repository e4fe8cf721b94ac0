"""Twilio's webhooks at the gateway: only signed requests get through, to the right place."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from urllib.parse import parse_qsl
from xml.etree import ElementTree

import httpx
import pytest
from twilio.request_validator import RequestValidator

from tests.harness import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, gather_actions, spoken_text
from tests.notification.stack import ALICE, BOB, SMS, VOICE, PagingStack, paging_stack
from tests.services import client_for
from tocsin.faketwilio.fake import PostedWebhook
from tocsin.gateway.app import create_app
from tocsin.gateway.twilio_webhooks import sms_reply_twiml
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.config import load_config
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import common_pb2, incidents_pb2, notification_pb2

DELIVERED = notification_pb2.ATTEMPT_STATUS_DELIVERED

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
    assert (
        message is not None
        and message.text == f"Acknowledged {await _label(stack, incident_id)}: disk full on db1"
    )
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


async def _replay(posted: PostedWebhook) -> httpx.Response:
    """Send a captured signed webhook again, byte for byte as Twilio signed it."""
    async with httpx.AsyncClient() as http:
        return await http.post(
            posted.url, data=posted.params, headers={"X-Twilio-Signature": posted.signature}
        )


def _last(stack: PagingStack, kind: str) -> PostedWebhook:
    return [w for w in stack.fake.webhooks if w.kind == kind][-1]


async def _label(stack: PagingStack, incident_id: str) -> str:
    """How answers name the incident: its number, "#18"."""
    reply = await stack.client.incidents.GetIncident(
        incidents_pb2.GetIncidentRequest(incident_id=incident_id)
    )
    return f"#{reply.incident.number}"


async def _status(stack: PagingStack, incident_id: str) -> int:
    reply = await stack.client.incidents.GetIncident(
        incidents_pb2.GetIncidentRequest(incident_id=incident_id)
    )
    return int(reply.incident.status)


async def test_a_replayed_sms_reply_changes_nothing(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    first = await stack.trigger("disk full on db1")
    await stack.notify(first, "alice")
    await stack.pager.expect_sms("alice")
    assert await stack.pager.reply_sms("alice", "resolve") == (
        f"Resolved {await _label(stack, first)}: disk full on db1"
    )
    captured = _last(stack, "sms")
    await stack.drain_events()
    newer = await stack.trigger("api latency high")
    await stack.notify(newer, "alice")
    await stack.pager.expect_sms("alice")

    replayed = await _replay(captured)

    assert replayed.status_code == 200
    assert ElementTree.fromstring(replayed.text).findall("*") == []  # no answer
    assert await _status(stack, newer) == incidents_pb2.INCIDENT_STATUS_TRIGGERED
    # A new message (a new MessageSid) with the same words still acts.
    assert await stack.pager.reply_sms("alice", "resolve") == (
        f"Resolved {await _label(stack, newer)}: api latency high"
    )


async def test_a_replayed_keypress_changes_nothing(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(VOICE, 0)])
    await stack.add_user("bob", BOB, [])
    incident_id = await stack.trigger("disk full on db1")
    await stack.notify(incident_id, "alice")
    call = await stack.pager.expect_voice("alice")
    assert f"Acknowledged {await _label(stack, incident_id)}" in " ".join(
        spoken_text(await stack.pager.press(call, "4"))
    )
    captured = _last(stack, "digits")
    await stack.client.incidents.Reassign(  # triggered again, for bob
        incidents_pb2.ReassignRequest(
            incident_id=incident_id,
            assignment=incidents_pb2.Assignment(user_id="bob"),
            actor=common_pb2.Actor(channel=common_pb2.CHANNEL_CLI, display="ops"),
        )
    )

    replayed = await _replay(captured)

    assert replayed.status_code == 200
    assert spoken_text(replayed.text) == ["Goodbye."]
    assert await _status(stack, incident_id) == incidents_pb2.INCIDENT_STATUS_TRIGGERED


async def test_a_replayed_status_callback_changes_nothing(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger()
    await stack.notify(incident_id, "alice")
    await stack.pager.expect_sms("alice")
    await stack.settle()
    sent = next(
        w for w in stack.fake.webhooks if w.kind == "status" and w.params["MessageStatus"] == "sent"
    )
    [before] = await stack.attempts(incident_id)
    assert (before.status, before.provider_status) == (DELIVERED, "delivered")

    replayed = await _replay(sent)

    assert replayed.status_code == 204
    [after] = await stack.attempts(incident_id)
    assert (after.status, after.provider_status) == (DELIVERED, "delivered")


@pytest.mark.parametrize("error_code", ["9" * 30, "30008x", "-1", "²", " "])
async def test_an_odd_error_code_is_ignored_not_a_500(stack: PagingStack, error_code: str) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger()
    await stack.notify(incident_id, "alice")
    sms = await stack.pager.expect_sms("alice")
    await stack.settle()
    assert sms.status_callback is not None and sms.sid is not None
    params = [("MessageSid", sms.sid), ("MessageStatus", "undelivered"), ("ErrorCode", error_code)]
    async with httpx.AsyncClient() as http:
        response = await http.post(
            sms.status_callback,
            content=_form(params),
            headers=_headers(signature(sms.status_callback, params)),
        )

    assert response.status_code == 204
    [attempt] = await stack.attempts(incident_id)
    assert (attempt.provider_status, attempt.error_code) == ("undelivered", 0)


async def test_odd_values_in_every_twilio_webhook_are_answered_not_a_500(
    stack: PagingStack,
) -> None:
    await stack.add_user("alice", ALICE, [(VOICE, 0)])
    incident_id = await stack.trigger()
    await stack.notify(incident_id, "alice")
    call = await stack.pager.expect_voice("alice")
    assert call.sid is not None
    action = gather_actions(call.twiml or "")[0]
    sms_url = f"{stack.config.public_url}/twilio/sms"
    sid = f"CallSid={call.sid}"
    odd = [
        (sms_url, f"From={ALICE}&Body={'1a' * 20_000}&MessageSid=SM{'9' * 300}"),
        (sms_url, "From=%ED%A0%BD%FF&Body=%00ack%ED%A0%BD&MessageSid=SMx&NumMedia=" + "9" * 40),
        (action, f"{sid}&Digits={'4' * 500}&CallDuration={'9' * 40}&SequenceNumber=-x"),
        (action, f"{sid}&Digits=%00%ED%A0%BD"),
    ]
    async with httpx.AsyncClient() as http:
        for url, body in odd:
            signed = signature(url, parse_qsl(body, keep_blank_values=True))
            response = await http.post(url, content=body, headers=_headers(signed))
            assert response.status_code == 200, (url, response.text)
            ElementTree.fromstring(response.text)  # well-formed TwiML
        too_big = f"From={ALICE}&Body={'x' * 70_000}"
        signed = signature(sms_url, parse_qsl(too_big))
        response = await http.post(sms_url, content=too_big, headers=_headers(signed))
        assert response.status_code == 413
    assert await _status(stack, incident_id) == incidents_pb2.INCIDENT_STATUS_TRIGGERED


def test_the_sms_answer_is_well_formed_twiml_whatever_the_text() -> None:
    assert ElementTree.fromstring(sms_reply_twiml("")).findall("Message") == []
    root = ElementTree.fromstring(sms_reply_twiml("Incident 4 acknowledged\x00\x1b"))
    assert [m.text for m in root.findall("Message")] == ["Incident 4 acknowledged"]
