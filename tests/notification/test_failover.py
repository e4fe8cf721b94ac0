"""A second SMS/voice provider (TOCSIN_SMS_FALLBACK_*: SignalWire's Twilio-compatible
API): two fake Twilio servers, the first told to fail. A page goes out through the second
when the first refuses it for a trouble of its own, at most once per attempt per
provider (the SENDING record names the provider), recorded in the timeline; a circuit
breaker skips a provider that keeps failing and tries it again after the cool-down."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from tests.notification.stack import ALICE, BOB, SMS, VOICE, PagingStack, paging_stack
from tocsin.faketwilio import FakeTwilio
from tocsin.faketwilio.server import create_fake_twilio
from tocsin.notification import keys
from tocsin.notification.domain import AttemptLocation
from tocsin.runtime.config import ConfigError, load_config
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import notification_pb2

FALLBACK_SID = "5f2b0a1e-3c4d-4e5f-8a9b-0c1d2e3f4a5b"  # a SignalWire project id
FALLBACK_TOKEN = "fallback-token"
FALLBACK_NUMBER = "+15005550012"
SENT = notification_pb2.ATTEMPT_STATUS_SENT
DELIVERED = notification_pb2.ATTEMPT_STATUS_DELIVERED
FAILED = notification_pb2.ATTEMPT_STATUS_FAILED


class Stacks:
    def __init__(self, paging: PagingStack, fallback: FakeTwilio) -> None:
        self.paging = paging
        self.primary = paging.fake
        self.fallback = fallback


@pytest.fixture
async def two(redis: RedisClient) -> AsyncIterator[Stacks]:
    async with create_fake_twilio(FALLBACK_SID, FALLBACK_TOKEN) as fallback:
        assert fallback.base_url is not None
        env = {
            "TOCSIN_SMS_FALLBACK_ACCOUNT_SID": FALLBACK_SID,
            "TOCSIN_SMS_FALLBACK_AUTH_TOKEN": FALLBACK_TOKEN,
            "TOCSIN_SMS_FALLBACK_FROM_NUMBER": FALLBACK_NUMBER,
            "TOCSIN_SMS_FALLBACK_BASE_URL": fallback.base_url,
            "TOCSIN_SMS_FAILOVER_AFTER": "2",
            "TOCSIN_SMS_FAILOVER_COOLDOWN": "60s",
        }
        async with paging_stack(redis, env) as paging:
            yield Stacks(paging, fallback)
            await fallback.drain()


async def _page(two: Stacks, summary: str, user: str = "alice") -> str:
    incident_id = await two.paging.trigger(summary)
    await two.paging.notify(incident_id, user)
    await two.paging.settle()
    await two.fallback.drain()
    await two.paging.settle()
    return incident_id


async def test_a_page_the_first_provider_refuses_with_a_5xx_goes_out_through_the_second(
    two: Stacks,
) -> None:
    await two.paging.add_user("alice", ALICE, [(SMS, 0)])
    two.primary.fail_next(1, status=503, code=20500)
    incident_id = await _page(two, "disk full on db1")

    assert [r.accepted for r in two.primary.requests] == [False]  # refused, not retried
    [sms] = two.fallback.accepted("sms")
    assert sms.to == ALICE and sms.from_ == FALLBACK_NUMBER
    assert "disk full on db1" in (sms.body or "")
    [attempt] = await two.paging.attempts(incident_id)
    assert list(attempt.providers) == ["twilio", "signalwire"]
    # The fallback's status callbacks, signed with its own token, reach the attempt.
    assert attempt.status == DELIVERED
    timeline = [e.message for e in (await two.paging.incident(incident_id)).timeline]
    assert any("failed over to signalwire" in m and "503" in m for m in timeline), timeline


async def test_an_auth_error_fails_over_but_an_invalid_number_does_not(two: Stacks) -> None:
    await two.paging.add_user("alice", ALICE, [(SMS, 0)])
    two.primary.fail_next(1, status=401, code=20003)
    first = await _page(two, "auth refused")
    [attempt] = await two.paging.attempts(first)
    assert list(attempt.providers) == ["twilio", "signalwire"]
    assert len(two.fallback.accepted("sms")) == 1

    # 21211 says the number is wrong: no provider can help, nothing more is sent.
    two.primary.fail_next(1, status=400, code=21211)
    second = await _page(two, "bad number")
    [attempt] = await two.paging.attempts(second)
    assert attempt.status == FAILED and list(attempt.providers) == ["twilio"]
    assert len(two.fallback.accepted("sms")) == 1


async def test_a_provider_that_keeps_failing_is_skipped_until_its_cool_down_ends(
    two: Stacks,
) -> None:
    await two.paging.add_user("alice", ALICE, [(SMS, 0), (VOICE, 0)])
    two.primary.fail_next(2, status=500, code=20500)  # both pages of the first incident
    first = await _page(two, "first outage page")
    assert {tuple(a.providers) for a in await two.paging.attempts(first)} == {
        ("twilio", "signalwire")
    }
    assert len(two.primary.requests) == 2  # two failures: the breaker opens

    second = await _page(two, "second outage page")
    attempts = await two.paging.attempts(second)
    assert {tuple(a.providers) for a in attempts} == {("signalwire",)}
    assert {a.status for a in attempts} == {DELIVERED}
    assert len(two.primary.requests) == 2  # not asked while its breaker is open
    assert len(two.fallback.accepted("sms")) == 2
    assert len(two.fallback.accepted("call")) == 2

    # After the cool-down one page tries the first provider again; its success closes
    # the breaker, and the pages after it go through the first provider again.
    two.paging.clock.advance(seconds=61)
    await two.paging.set_rules("alice", [(SMS, 0)])
    third = await _page(two, "after the cool-down")
    assert [tuple(a.providers) for a in await two.paging.attempts(third)] == [("twilio",)]
    await two.paging.pager.expect_sms("alice", "after the cool-down")
    await two.paging.set_rules("alice", [(SMS, 0), (VOICE, 0)])
    fourth = await _page(two, "closed again")
    assert {tuple(a.providers) for a in await two.paging.attempts(fourth)} == {("twilio",)}
    await two.paging.pager.expect_sms("alice", "closed again")
    await two.paging.pager.expect_voice("alice")


async def test_an_attempt_is_handed_to_each_provider_at_most_once(two: Stacks) -> None:
    """The record is the guard: once an attempt went to the fallback, no process hands
    it to the fallback again, nor back to the first provider."""
    await two.paging.add_user("alice", ALICE, [(SMS, 0)])
    two.primary.fail_next(1, status=503, code=20500)
    incident_id = await _page(two, "once per provider")
    [attempt] = await two.paging.attempts(incident_id)
    store = two.paging.parts.store
    location = AttemptLocation(attempt.id, incident_id, None)
    assert not await store.fail_over(location, "twilio", "signalwire")  # SENT already
    # Even a SENDING attempt (as a crashed process leaves it) is handed on only once.
    raw = await store.redis.hget(_attempts_key(incident_id), attempt.id)
    assert raw is not None
    record = json.loads(raw)
    record.update(st=notification_pb2.ATTEMPT_STATUS_SENDING, prov="twilio")
    await store.redis.hset(_attempts_key(incident_id), attempt.id, json.dumps(record))
    assert await store.fail_over(location, "twilio", "signalwire")
    assert not await store.fail_over(location, "twilio", "signalwire")
    assert not await store.fail_over(location, "signalwire", "twilio")
    [attempt] = await two.paging.attempts(incident_id)
    assert list(attempt.providers) == ["twilio", "signalwire"]


def _attempts_key(incident_id: str) -> str:
    return keys.incident_attempts(incident_id)


async def test_a_test_page_names_its_provider(two: Stacks) -> None:
    await two.paging.add_user("bob", BOB, [(SMS, 0)])
    two.primary.fail_next(1, status=502, code=20500, kind="sms")
    reply = await two.paging.client.notification.SendTestPage(
        notification_pb2.SendTestPageRequest(user_id="bob")
    )
    by_type = {a.type: a for a in reply.attempts}
    assert list(by_type[SMS].providers) == ["twilio", "signalwire"]
    assert list(by_type[VOICE].providers) == ["twilio"]
    assert len(two.fallback.accepted("sms")) == 1
    await two.paging.settle()
    await two.paging.pager.expect_voice("bob")


def _env(**extra: str) -> dict[str, str]:
    return {
        "TWILIO_ACCOUNT_SID": "AC" + "7e" * 16,
        "TWILIO_AUTH_TOKEN": "t",
        "TWILIO_FROM_NUMBER": "+15005550006",
        **extra,
    }


FULL = {
    "TOCSIN_SMS_FALLBACK_ACCOUNT_SID": FALLBACK_SID,
    "TOCSIN_SMS_FALLBACK_AUTH_TOKEN": "secret-token",
    "TOCSIN_SMS_FALLBACK_FROM_NUMBER": FALLBACK_NUMBER,
    "TOCSIN_SMS_FALLBACK_BASE_URL": "https://example.signalwire.com/api/laml",
}


def test_the_fallback_configuration() -> None:
    config = load_config(_env(**FULL))
    assert config.sms_fallback is not None
    assert config.sms_fallback.name == "signalwire"
    assert config.sms_fallback.base_url == "https://example.signalwire.com/api/laml"
    assert "secret-token" not in repr(config)
    assert config.failover.failures == 3 and config.failover.open_for.total_seconds() == 60
    assert load_config(_env()).sms_fallback is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            _env(TOCSIN_SMS_FALLBACK_ACCOUNT_SID=FALLBACK_SID),
            "TOCSIN_SMS_FALLBACK_AUTH_TOKEN, TOCSIN_SMS_FALLBACK_FROM_NUMBER, "
            "TOCSIN_SMS_FALLBACK_BASE_URL must be set",
        ),
        ({**FULL}, "needs the first one"),
        (
            _env(**{**FULL, "TOCSIN_SMS_FALLBACK_FROM_NUMBER": "12"}),
            "TOCSIN_SMS_FALLBACK_FROM_NUMBER",
        ),
        (
            _env(**{**FULL, "TOCSIN_SMS_FALLBACK_BASE_URL": "ftp://x"}),
            "TOCSIN_SMS_FALLBACK_BASE_URL",
        ),
        (_env(**FULL, TOCSIN_SMS_FALLBACK_NAME="twilio"), "TOCSIN_SMS_FALLBACK_NAME"),
        (_env(TOCSIN_SMS_FAILOVER_AFTER="0"), "TOCSIN_SMS_FAILOVER_AFTER"),
        (_env(TOCSIN_SMS_FAILOVER_COOLDOWN="soon"), "TOCSIN_SMS_FAILOVER_COOLDOWN"),
    ],
)
def test_a_bad_fallback_configuration_is_refused_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env)
    try:
        load_config(env)
    except ConfigError as error:
        assert "secret-token" not in str(error)
