"""Signed outgoing webhooks (contact type `webhook`) end to end: real services, real
Redis (standalone and Cluster), and a real HTTP receiver the test starts (aiohttp) that
verifies every signature the way the README tells receivers to."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from aiohttp import web
from google.protobuf.duration_pb2 import Duration

from tests.notification.stack import ALICE, SMS, PagingStack, paging_stack
from tests.notification.test_settings import violations
from tocsin.notification.channels.webhook import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
    verify_signature,
)
from tocsin.runtime.config import ConfigError, load_config
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import notification_pb2 as pb

WEBHOOK = pb.CONTACT_METHOD_TYPE_WEBHOOK
SECRET = "whsec-0123456789abcdef-not-for-production"


@dataclass
class Receiver:
    url: str = ""
    answers: list[int] = field(default_factory=list)
    """Statuses for the next requests instead of 200."""
    requests: list[dict[str, object]] = field(default_factory=list)
    """Every request: its status answered, whether the signature verified, the body."""

    def delivered(self) -> list[dict[str, object]]:
        return [r for r in self.requests if r["status"] == 200]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    received = Receiver()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        verified = verify_signature(
            SECRET,
            request.headers.get(TIMESTAMP_HEADER, ""),
            body,
            request.headers.get(SIGNATURE_HEADER, ""),
        )
        status = received.answers.pop(0) if received.answers else 200
        received.requests.append(
            {
                "status": status,
                "verified": verified,
                "event_id": request.headers.get(EVENT_ID_HEADER),
                "body": json.loads(body),
                "path": request.path_qs,
            }
        )
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hooks/{token}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    received.url = f"http://127.0.0.1:{port}/hooks/tok-1234?key=abc"
    yield received
    await runner.cleanup()


@pytest.fixture
async def stack(any_redis: RedisClient) -> AsyncIterator[PagingStack]:
    async with paging_stack(any_redis, {"TOCSIN_WEBHOOK_SECRET": SECRET}) as paging:
        yield paging
        paging.pager.check_all_expected()


async def add_webhook_user(stack: PagingStack, url: str, rules: list[tuple[str, int]]) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 600)])
    await stack.client.notification.CreateContactMethod(
        pb.CreateContactMethodRequest(
            contact_method=pb.ContactMethod(
                id="alice-hook", user_id="alice", type=WEBHOOK, address=url
            )
        )
    )
    await stack.client.notification.SetNotificationRules(
        pb.SetNotificationRulesRequest(
            user_id="alice",
            rules=[
                pb.NotificationRule(contact_method_id=m, delay=Duration(seconds=s))
                for m, s in rules
            ],
        )
    )


async def advance_until(stack: PagingStack, done: object) -> None:
    assert callable(done)
    for _ in range(200):
        if done():
            return
        stack.clock.advance(seconds=1)
        await asyncio.sleep(0.01)
    raise AssertionError("condition never met")


async def test_a_page_reaches_the_receiver_signed_once_after_two_500s(
    stack: PagingStack, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await add_webhook_user(stack, receiver.url, [("alice-hook", 0), ("alice-sms", 300)])
    incident_id = await stack.trigger("disk full on db1")
    receiver.answers += [500, 500]

    await stack.notify(incident_id, "alice")
    await advance_until(stack, lambda: bool(receiver.delivered()))
    await stack.settle()

    assert [r["status"] for r in receiver.requests] == [500, 500, 200]
    assert all(r["verified"] for r in receiver.requests)
    [attempt] = [a for a in await stack.attempts(incident_id) if a.type == WEBHOOK]
    assert attempt.status == pb.ATTEMPT_STATUS_SENT
    # One event id across the retries, in the header and the body: dedup is trivial.
    assert {r["event_id"] for r in receiver.requests} == {attempt.id}
    body = receiver.delivered()[0]["body"]
    assert body == {
        "event_id": attempt.id,
        "type": "incident.page",
        "incident": {
            "id": incident_id,
            "number": (await stack.incident(incident_id)).number,
            "service": "Payments API",
            "summary": "disk full on db1",
            "details": {},
        },
        "reply_code": attempt.reply_code,
        "tocsin_url": stack.config.public_url,
    }
    assert receiver.requests[0]["path"] == "/hooks/tok-1234?key=abc"
    # Neither the secret nor the URL's token reaches a log line.
    ours = [r for r in caplog.records if not r.name.startswith("aiohttp")]  # the receiver's
    logged = "\n".join(r.getMessage() for r in ours)
    assert SECRET not in logged
    assert "tok-1234" not in logged
    await stack.pager.expect_no_more_pages()  # the SMS rule has not come due


async def test_a_4xx_fails_the_attempt_and_the_next_rule_runs_at_once(
    stack: PagingStack, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    await add_webhook_user(stack, receiver.url, [("alice-hook", 0), ("alice-sms", 300)])
    incident_id = await stack.trigger()
    receiver.answers.append(410)

    await stack.notify(incident_id, "alice")
    await stack.pager.expect_sms("alice", "disk full on db1")

    assert [r["status"] for r in receiver.requests] == [410]
    [attempt] = [a for a in await stack.attempts(incident_id) if a.type == WEBHOOK]
    assert attempt.status == pb.ATTEMPT_STATUS_FAILED and attempt.error_code == 410
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("tocsin"))
    assert "http://127.0.0.1 answered HTTP 410" in logged and "tok-1234" not in logged


async def test_webhook_urls_are_checked_and_never_repeated_in_errors(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    for bad in ("ftp://example.com/x", "http://example.com/hook?token=s3cr3t", "not a url"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.client.notification.CreateContactMethod(
                pb.CreateContactMethodRequest(
                    contact_method=pb.ContactMethod(
                        id="alice-hook", user_id="alice", type=WEBHOOK, address=bad
                    )
                )
            )
        assert violations(refused.value) == ["contact_method.address"]
        assert "s3cr3t" not in (refused.value.details() or "")


async def test_without_a_secret_there_is_no_webhook_channel(redis: RedisClient) -> None:
    async with paging_stack(redis) as stack:
        await stack.add_user("alice", ALICE, [(SMS, 0)])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.client.notification.CreateContactMethod(
                pb.CreateContactMethodRequest(
                    contact_method=pb.ContactMethod(
                        id="alice-hook",
                        user_id="alice",
                        type=WEBHOOK,
                        address="https://example.com/hook",
                    )
                )
            )
        assert violations(refused.value) == ["contact_method.type"]
        assert "must be one of sms, voice, email, teams, got webhook" in (
            refused.value.details() or ""
        )


def test_a_receiver_refuses_a_bad_or_old_signature() -> None:
    body = b'{"event_id":"1-0-0"}'
    good = sign(SECRET, 1_800_000_000, body)
    assert verify_signature(SECRET, "1800000000", body, good, now=1_800_000_100)
    assert not verify_signature(SECRET, "1800000000", body + b" ", good, now=1_800_000_100)
    assert not verify_signature("another-secret-entirely", "1800000000", body, good, now=1.8e9)
    assert not verify_signature(SECRET, "1800000000", body, good, now=1_800_000_301)  # replay
    assert not verify_signature(SECRET, "soon", body, good)


def test_the_secret_is_checked_at_start_and_never_shown() -> None:
    with pytest.raises(ConfigError, match="TOCSIN_WEBHOOK_SECRET must be at least 16"):
        load_config({"TOCSIN_WEBHOOK_SECRET": "short"})
    config = load_config({"TOCSIN_WEBHOOK_SECRET": SECRET})
    assert config.webhook_secret == SECRET and SECRET not in repr(config)
