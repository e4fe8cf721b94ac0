"""Notices (SendNotice) go out as pages do: through the channel registry's send, one
attempt each recorded before the provider is called and listed (as notices, under their
user, never in an incident's list), Twilio's status callbacks applied to them, behind the
Twilio rate limits, and at most once per notice key however many callers race.

Real notification, scheduling and incidents services, the real gateway for Twilio's
callbacks, the fake Twilio over HTTP, real Redis (standalone and Cluster), a ManualClock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.notification.stack import ALICE, SMS, VOICE, PagingStack, paging_stack
from tests.notification.test_background import eventually
from tocsin.runtime.events import INCIDENT_SHARDS
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import notification_pb2 as pb

NOTICE = pb.ATTEMPT_KIND_NOTICE


def notice(
    user: str, key: str, text: str = "tocsin: your on-call shift starts now."
) -> pb.SendNoticeRequest:
    return pb.SendNoticeRequest(user_id=user, text=text, idempotency_key=key)


async def user_attempts(stack: PagingStack, user: str) -> list[pb.Attempt]:
    reply = await stack.client.notification.ListAttempts(pb.ListAttemptsRequest(user_id=user))
    return list(reply.attempts)


@pytest.fixture
async def stack(any_redis: RedisClient) -> AsyncIterator[PagingStack]:
    async with paging_stack(any_redis) as paging:
        yield paging
        paging.pager.check_all_expected()


async def test_a_notice_is_an_attempt_listed_as_a_notice_and_tracked_like_a_page(
    stack: PagingStack,
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0), (VOICE, 60)])
    incident_id = await stack.trigger()
    await stack.notify(incident_id, "alice")
    await stack.pager.expect_sms("alice", "disk full on db1")

    reply = await stack.client.notification.SendNotice(notice("alice", "handoff/k1"))
    assert (reply.first, reply.sent) == (True, 1)
    await stack.pager.expect_sms("alice", "your on-call shift starts now")  # SMS, no call
    await stack.pager.expect_no_more_pages()

    [attempt] = await user_attempts(stack, "alice")
    sms = stack.fake.accepted("sms")[-1]
    assert attempt.kind == NOTICE
    assert attempt.notice_key == "handoff/k1"
    assert (attempt.contact_method_id, attempt.type) == ("alice-sms", SMS)
    assert attempt.provider_id == sms.sid
    assert list(attempt.providers) == ["twilio"]
    # Twilio's delivery callback reached the notice's attempt, as it reaches a page's.
    assert attempt.status == pb.ATTEMPT_STATUS_DELIVERED
    assert not attempt.incident_id
    # The incident's list holds its page only, marked as one.
    kinds = [a.kind for a in await stack.attempts(incident_id)]
    assert kinds == [pb.ATTEMPT_KIND_PAGE]


async def test_racing_callers_send_a_notice_once(stack: PagingStack) -> None:
    """Two workers fire the same hand-off at the same moment: one SMS, one attempt."""
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    replies = await asyncio.gather(
        *(stack.client.notification.SendNotice(notice("alice", "handoff/k2")) for _ in range(2))
    )
    assert sorted((r.first, r.sent) for r in replies) == [(False, 0), (True, 1)]
    await stack.pager.expect_sms("alice", "starts now")
    await stack.pager.expect_no_more_pages()
    again = await stack.client.notification.SendNotice(notice("alice", "handoff/k2"))
    assert not again.first
    attempts = await user_attempts(stack, "alice")
    assert [(a.kind, a.notice_key) for a in attempts] == [(NOTICE, "handoff/k2")]
    await stack.pager.expect_no_more_pages()


async def test_listing_a_users_attempts_checks_the_request(stack: PagingStack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.client.notification.ListAttempts(
            pb.ListAttemptsRequest(user_id="alice", incident_id="12")
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_id" in (refused.value.details() or "")


@pytest.fixture
async def limited(any_redis: RedisClient) -> AsyncIterator[PagingStack]:
    env = {"TOCSIN_NUMBER_SEND_INTERVAL": "10s", "TOCSIN_TWILIO_SENDS_PER_SECOND": "0.5"}
    async with paging_stack(any_redis, env) as paging:
        yield paging
        paging.pager.check_all_expected()


async def test_a_notice_waits_for_the_numbers_rate_limit_slot(limited: PagingStack) -> None:
    """A page has just gone to alice's phone: a notice to it waits out the number's
    interval (10 s) rather than land in the same second, and is then sent."""
    await limited.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await limited.trigger()
    await limited.notify(incident_id, "alice")
    await limited.settle()
    await limited.pager.expect_sms("alice", "disk full on db1")

    async def send() -> pb.SendNoticeResponse:
        return await limited.client.notification.SendNotice(notice("alice", "handoff/k3"))

    sending = asyncio.create_task(send())

    async def recorded() -> bool:
        return bool(await user_attempts(limited, "alice"))

    await eventually(recorded)  # recorded SENDING, then it waits for its slot on the clock
    await limited.pager.expect_no_more_pages()
    assert not sending.done()
    [attempt] = await user_attempts(limited, "alice")
    assert (attempt.kind, attempt.status) == (NOTICE, pb.ATTEMPT_STATUS_SENDING)
    limited.clock.advance(seconds=9)
    await asyncio.sleep(0.1)
    await limited.pager.expect_no_more_pages()
    limited.clock.advance(seconds=1)
    reply = await asyncio.wait_for(sending, 10)
    assert (reply.first, reply.sent) == (True, 1)
    await limited.pager.expect_sms("alice", "starts now")


@pytest.fixture
async def slow_number(any_redis: RedisClient) -> AsyncIterator[PagingStack]:
    env = {"TOCSIN_NUMBER_SEND_INTERVAL": "5m"}  # longer than the sweep's 2 minutes
    async with paging_stack(any_redis, env) as paging:
        yield paging
        paging.pager.check_all_expected()


async def test_a_notice_waiting_longer_than_the_sweep_is_not_taken_for_a_dead_sender(
    slow_number: PagingStack,
) -> None:
    """A notice recorded SENDING waits 5 minutes for the number's slot: the sweep, which
    marks attempts SENDING for over 2 minutes UNKNOWN (their sender died), counts from the
    slot, so after 3 minutes the notice is still SENDING, and then it is sent."""
    stack = slow_number
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger()
    await stack.notify(incident_id, "alice")
    await stack.settle()
    await stack.pager.expect_sms("alice", "disk full on db1")

    async def send() -> pb.SendNoticeResponse:
        return await stack.client.notification.SendNotice(notice("alice", "handoff/slow"))

    sending = asyncio.create_task(send())

    async def recorded() -> bool:
        return bool(await user_attempts(stack, "alice"))

    await eventually(recorded)
    await asyncio.sleep(0.1)  # past the slot's record (no timer involved)
    stack.clock.advance(minutes=3)
    assert await stack.parts.pager.sweep(range(INCIDENT_SHARDS), tests=True) == 0
    [attempt] = await user_attempts(stack, "alice")
    assert attempt.status == pb.ATTEMPT_STATUS_SENDING
    await stack.pager.expect_no_more_pages()
    stack.clock.advance(minutes=2)  # the slot
    reply = await asyncio.wait_for(sending, 10)
    assert (reply.first, reply.sent) == (True, 1)
    await stack.pager.expect_sms("alice", "starts now")
    [attempt] = await user_attempts(stack, "alice")  # the fake's callback may have come
    assert attempt.status in (pb.ATTEMPT_STATUS_SENT, pb.ATTEMPT_STATUS_DELIVERED)


async def test_a_notice_begun_goes_out_even_when_its_caller_gives_up(
    stack: PagingStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller's deadline passes while the notice's SMS is on its way (a slow
    provider): the call ends, the send does not. Once begun, the key is taken, so a notice
    cancelled with its call was lost for good: the caller's retry answers "not first"."""
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    sender = stack.parts.sender
    original = sender.deliver_outside_incident
    slow = asyncio.Event()
    reached = asyncio.Event()

    async def slow_provider(*args: object, **kwargs: object) -> object:
        reached.set()
        await slow.wait()
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sender, "deliver_outside_incident", slow_provider)
    call = asyncio.ensure_future(
        stack.client.notification.SendNotice(notice("alice", "handoff/k9"), timeout=0.5)
    )
    async with asyncio.timeout(10):
        await reached.wait()
    with pytest.raises(grpc.aio.AioRpcError) as gave_up:
        await call
    assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.sleep(0.1)  # the server has seen the cancellation
    slow.set()
    await stack.settle()

    await stack.pager.expect_sms("alice", "starts now")
    again = await stack.client.notification.SendNotice(notice("alice", "handoff/k9"))
    assert (again.first, again.sent) == (False, 0)
    [attempt] = await user_attempts(stack, "alice")
    assert attempt.status in (pb.ATTEMPT_STATUS_SENT, pb.ATTEMPT_STATUS_DELIVERED)
