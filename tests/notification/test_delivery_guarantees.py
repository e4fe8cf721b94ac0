"""Never twice for the same rule, never dropped: crashes mid-send and rate limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import RedisCluster

from tests.harness import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER
from tests.notification.stack import ALICE, BOB, SMS, VOICE, PagingStack, paging_stack
from tocsin.faketwilio import FakeTwilio
from tocsin.notification import pagemetrics
from tocsin.notification.providers import SendResult, TwilioProvider
from tocsin.notification.server import build_parts, provider_from_config
from tocsin.runtime.events import INCIDENT_SHARDS
from tocsin.runtime.outbox import REQUEST_FIELD
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.report_outbox import STREAM_KEY as REPORTS_STREAM
from tocsin.runtime.service import ServiceDeps
from tocsin.v1 import escalation_pb2, notification_pb2

UNKNOWN = notification_pb2.ATTEMPT_STATUS_UNKNOWN
DELIVERED = notification_pb2.ATTEMPT_STATUS_DELIVERED


class ProcessKilled(BaseException):
    """Stands for SIGKILL: nothing after it runs, no `except Exception` catches it."""


class DiesAfterRequest(TwilioProvider):
    """Twilio got the request; the process died before it read the answer. Twilio's status
    callbacks for it are lost too (say the gateway went down with it)."""

    async def send_sms(self, to: str, body: str, status_callback: str | None) -> SendResult:
        await super().send_sms(to, body, None)
        raise ProcessKilled


@pytest.fixture
async def dying(redis: RedisClient) -> AsyncIterator[PagingStack]:
    def provider(fake: FakeTwilio) -> TwilioProvider:
        assert fake.base_url is not None
        return DiesAfterRequest(ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, base_url=fake.base_url)

    async with paging_stack(redis, provider=provider) as stack:
        yield stack
        stack.pager.check_all_expected()


@pytest.mark.parametrize(
    "service_id",
    [
        "",  # the rule's timer is claimed by Notify's script, recorded SENDING by fire.lua
        "payments-api",  # recorded SENDING by Notify's script itself (Sender.ready_now)
    ],
)
async def test_a_process_killed_mid_send_never_sends_that_attempt_twice(
    dying: PagingStack, service_id: str
) -> None:
    await dying.add_user("alice", ALICE, [(SMS, 0), (VOICE, 600)])
    incident_id = await dying.trigger()
    await dying.notify(incident_id, "alice", service_id=service_id)
    await dying.pager.expect_sms("alice")
    [attempt] = await dying.attempts(incident_id)
    assert attempt.status == notification_pb2.ATTEMPT_STATUS_SENDING

    # A new process (another replica, or this one restarted) with nothing in memory.
    deps = ServiceDeps(dying.config, dying.redis, dying.clock)
    fresh = build_parts(deps, provider_from_config(dying.config), lambda: range(INCIDENT_SHARDS))
    try:
        assert await fresh.worker.run_once() == 0
        assert await fresh.pager.sweep(range(INCIDENT_SHARDS), tests=True) == 0  # too soon
        dying.clock.advance(minutes=3)
        assert await fresh.worker.run_once() == 0
        assert await fresh.pager.sweep(range(INCIDENT_SHARDS), tests=True) == 1
        assert await fresh.pager.sweep(range(INCIDENT_SHARDS), tests=True) == 0
        await fresh.sender.idle()

        assert len(dying.fake.requests) == 1
        [attempt] = await dying.attempts(incident_id)
        assert attempt.status == UNKNOWN
        timeline = [e.message for e in (await dying.incident(incident_id)).timeline]
        assert any("outcome unknown" in m and "not resent" in m for m in timeline)
        await dying.pager.expect_no_more_pages()
        # The later rule still runs: the person is not left unpaged.
        dying.clock.advance(minutes=7)
        assert await fresh.worker.run_once() == 1
        await fresh.sender.idle()
        await dying.pager.expect_voice("alice")
    finally:
        await fresh.provider.aclose()


async def test_a_status_callback_tells_what_a_dead_process_never_heard(
    redis: RedisClient,
) -> None:
    class DiesButTwilioCallsBack(TwilioProvider):
        async def send_sms(self, to: str, body: str, status_callback: str | None) -> SendResult:
            await super().send_sms(to, body, status_callback)
            raise ProcessKilled

    def provider(fake: FakeTwilio) -> TwilioProvider:
        assert fake.base_url is not None
        return DiesButTwilioCallsBack(ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, fake.base_url)

    async with paging_stack(redis, provider=provider) as stack:
        await stack.add_user("alice", ALICE, [(SMS, 0)])
        incident_id = await stack.trigger()
        await stack.notify(incident_id, "alice")
        await stack.pager.expect_sms("alice")
        stack.clock.advance(minutes=3)
        assert await stack.parts.pager.sweep(range(INCIDENT_SHARDS), tests=True) == 0

        [attempt] = await stack.attempts(incident_id)
        assert (attempt.status, attempt.provider_id) == (DELIVERED, stack.fake.accepted()[0].sid)
        await stack.pager.expect_no_more_pages()


@pytest.fixture
async def limited(redis: RedisClient) -> AsyncIterator[PagingStack]:
    env = {"TOCSIN_NUMBER_SEND_INTERVAL": "10s", "TOCSIN_TWILIO_SENDS_PER_SECOND": "0.5"}
    async with paging_stack(redis, env) as stack:
        yield stack
        stack.pager.check_all_expected()


async def test_pages_to_one_number_queue_behind_the_rate_limit_and_none_drops(
    limited: PagingStack,
) -> None:
    await limited.add_user("alice", ALICE, [(SMS, 0)])
    storm = [await limited.trigger(f"alert {n}") for n in range(3)]

    for incident_id in storm:
        await limited.notify(incident_id, "alice")
        # Its page reserves its slot in the background (the fast path): let it, so the
        # three take their slots in the order of their Notify, as they would seconds apart.
        await limited.settle()

    await limited.pager.expect_sms("alice", contains="alert 0")
    await limited.pager.expect_no_more_pages()
    assert await limited.tick(seconds=9) == 0
    assert await limited.tick(seconds=1) == 1
    await limited.pager.expect_sms("alice", contains="alert 1")
    await limited.pager.expect_no_more_pages()
    assert await limited.tick(seconds=10) == 1
    await limited.pager.expect_sms("alice", contains="alert 2")
    for incident_id in storm:
        [attempt] = await limited.attempts(incident_id)
        assert attempt.status == DELIVERED


async def test_the_sender_rate_spaces_pages_to_different_people(limited: PagingStack) -> None:
    await limited.add_user("alice", ALICE, [(SMS, 0)])
    await limited.add_user("bob", BOB, [(SMS, 0)])
    incident_id = await limited.trigger()

    await limited.notify(incident_id, "alice")
    await limited.settle()  # alice's page takes its slot first (see above)
    await limited.notify(incident_id, "bob")

    await limited.pager.expect_sms("alice")
    await limited.pager.expect_no_more_pages()
    assert await limited.tick(seconds=2) == 1  # 0.5 per second: one every 2 seconds
    await limited.pager.expect_sms("bob")


@pytest.mark.parametrize("service_id", ["", "payments-api"])
async def test_no_lookup_happens_between_recording_sending_and_the_provider_call(
    stack: PagingStack, monkeypatch: pytest.MonkeyPatch, service_id: str
) -> None:
    """A process dying between SENDING and the provider's call loses the page (the sweep
    marks it UNKNOWN, never resends): the incident and service lookups a page needs must
    all happen before SENDING is recorded, so that window holds no waiting at all."""
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger(mirror=False)  # the summary must be asked for
    seen: list[tuple[str, list[int]]] = []
    peer = stack.parts.sender.incidents
    for name in ("get_incident", "service_name"):
        original = getattr(peer, name)

        async def spy(
            *args: object, _original: Any = original, _name: str = name, **kwargs: object
        ) -> object:
            statuses = [int(a.status) for a in await stack.attempts(incident_id)]
            seen.append((_name, statuses))
            return await _original(*args, **kwargs)

        monkeypatch.setattr(peer, name, spy)

    await stack.notify(incident_id, "alice", service_id=service_id)
    await stack.pager.expect_sms("alice", "disk full on db1")
    await stack.settle()
    assert {name for name, _ in seen} == {"get_incident", "service_name"}
    sending = notification_pb2.ATTEMPT_STATUS_SENDING
    assert all(sending not in statuses for _, statuses in seen), seen
    [attempt] = await stack.attempts(incident_id)
    assert attempt.status != notification_pb2.ATTEMPT_STATUS_SENDING


async def test_the_first_page_metric_reads_the_creation_time_from_the_mirror(
    stack: PagingStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alert -> first page is recorded from the creation time the status mirror holds: a
    page of a mirrored incident makes no call to the incidents service at all (it was one
    GetIncident per incident, after every first page). Only the first page records."""
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    await stack.add_user("bob", BOB, [(SMS, 0)])
    incident_id = await stack.trigger()  # mirrored: its event carries created_at
    created_ms = (await stack.incident(incident_id)).created_at.ToMilliseconds()
    lookups: list[str] = []
    peer = stack.parts.sender.incidents

    async def no_lookup(incident: str, **kwargs: object) -> None:
        lookups.append(incident)
        return None

    monkeypatch.setattr(peer, "get_incident", no_lookup)
    recorded: list[float] = []
    monkeypatch.setattr(
        pagemetrics.FIRST_PAGE_LATENCY, "record", lambda value, *a, **k: recorded.append(value)
    )
    sent_at_ms = stack.clock.now_ms()

    await stack.notify(incident_id, "alice")
    await stack.pager.expect_sms("alice", "disk full on db1")
    await stack.notify(incident_id, "bob")
    await stack.pager.expect_sms("bob", "disk full on db1")
    await stack.settle()

    assert lookups == []
    assert recorded == [(sent_at_ms - created_ms) / 1000]


async def test_notifys_script_records_the_first_page_sending_and_it_goes_at_once(
    stack: PagingStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Escalation's Notify names the incident's service: a rule due now whose page needs
    nothing more (a send slot free, no rate limit, the service's name known) is recorded
    SENDING by the script that starts the cycle, so it reaches the provider with no
    fire.lua of its own; a repeated Notify (same key) sends nothing, and every send slot
    taken for it is given back."""
    await stack.add_user("alice", ALICE, [(SMS, 0), (VOICE, 600)])
    incident_id = await stack.trigger("queue backlog on kafka")  # mirrored first
    number = (await stack.incident(incident_id)).number
    fired: list[str] = []
    store = stack.parts.sender.store
    original = store.fire

    async def spy(timer: Any, *args: Any, **kwargs: Any) -> Any:
        fired.append(timer.timer_id)
        return await original(timer, *args, **kwargs)

    monkeypatch.setattr(store, "fire", spy)

    await stack.notify(incident_id, "alice", service_id="payments-api")
    await stack.notify(incident_id, "alice", service_id="payments-api")  # a retry
    sms = await stack.pager.expect_sms("alice")
    await stack.settle()

    assert sms.body is not None
    assert sms.body.startswith(f"tocsin #{number}: [Payments API] queue backlog on kafka")
    assert fired == []  # the SMS rule was fired by Notify's script
    [attempt] = await stack.attempts(incident_id)
    assert attempt.status in (notification_pb2.ATTEMPT_STATUS_SENT, DELIVERED)
    assert stack.parts.sender._in_flight.held == 0
    # The later rule still fires from its timer, the usual way.
    assert await stack.tick(seconds=600) == 1
    await stack.pager.expect_voice("alice")
    assert len(fired) == 1


@pytest.fixture
async def any_stack(any_redis: RedisClient) -> AsyncIterator[PagingStack]:
    async with paging_stack(any_redis) as stack:
        yield stack
        stack.pager.check_all_expected()


async def queued_reports(stack: PagingStack) -> list[tuple[str, str, str, int]]:
    """The page-out reports on the report outbox: (incident, user, key, out ms)."""
    entries: Any = await stack.redis.xrange(REPORTS_STREAM)
    reports = [
        escalation_pb2.ReportPageOutRequest.FromString(fields[REQUEST_FIELD])
        for _, fields in entries
    ]
    return [
        (r.incident_id, r.user_id, r.idempotency_key, r.out_at.ToMilliseconds()) for r in reports
    ]


async def test_the_first_page_reports_out_with_the_key_its_timer_carries(
    any_stack: PagingStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Notify that names the next level's time is awaited: once its first page went out
    escalation is told with the Notify's key, which the rule's timer carries (the cycle
    is not read for it), on the report outbox; on one Redis server in the round trip that
    records SENT (no background report), on a Cluster right after it. A Notify that names
    none is not reported at all."""
    stack = any_stack
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    await stack.add_user("bob", BOB, [(SMS, 0)])
    awaited = await stack.trigger("disk full on db1")
    lone = await stack.trigger("disk full on db2")
    sender = stack.parts.sender
    reads: list[str] = []
    background: list[str] = []

    async def awaited_key(incident_id: str, cycle_id: str) -> str | None:
        reads.append(cycle_id)
        return None

    report_page_out = sender.escalation.report_page_out

    async def reported_after(incident_id: str, user_id: str, key: str, out_ms: int) -> bool:
        background.append(user_id)
        return await report_page_out(incident_id, user_id, key, out_ms)

    monkeypatch.setattr(sender.store, "awaited_key", awaited_key)
    monkeypatch.setattr(sender.escalation, "report_page_out", reported_after)
    key = f"{awaited}/0/0/0/alice"
    request = notification_pb2.NotifyRequest(
        incident_id=awaited, user_id="alice", idempotency_key=key, service_id="payments-api"
    )
    request.next_level_at.FromMilliseconds(stack.clock.now_ms() + 300_000)
    await stack.client.notification.Notify(request)
    await stack.notify(lone, "bob")
    await stack.pager.expect_sms("alice")
    await stack.pager.expect_sms("bob")
    await stack.settle()

    assert await queued_reports(stack) == [(awaited, "alice", key, stack.clock.now_ms())]
    assert reads == []
    with_sent = not isinstance(stack.redis, RedisCluster)
    assert background == ([] if with_sent else ["alice"])


async def test_a_status_callback_for_no_known_attempt_changes_nothing(
    stack: PagingStack,
) -> None:
    """A delivery status for an attempt id that names nothing (a page long expired, or
    forged past the signature by a bug) is answered `known: false` and writes nothing;
    one for a real attempt is recorded (the callback's update finds the attempt itself,
    with no read before it)."""
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger()
    await stack.notify(incident_id, "alice")
    await stack.pager.expect_sms("alice")
    await stack.settle()
    [attempt] = await stack.attempts(incident_id)

    async def callback(attempt_id: str, status: str) -> bool:
        reply = await stack.client.notification.HandleDeliveryStatus(
            notification_pb2.HandleDeliveryStatusRequest(
                provider_id=attempt.provider_id, status=status, attempt_id=attempt_id
            )
        )
        return reply.known

    assert not await callback(f"{incident_id}-99-0", "undelivered")
    assert [a.status for a in await stack.attempts(incident_id)] == [attempt.status]
    assert await callback(attempt.id, "undelivered")
    [failed] = await stack.attempts(incident_id)
    assert failed.status == notification_pb2.ATTEMPT_STATUS_FAILED


async def test_with_rate_limits_notify_reserves_the_slot_and_records_the_page_at_once(
    limited: PagingStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With rate limits on (the product's default), escalation's Notify reserves the first
    page's slot before the cycle's script, which records the page SENDING when the slot
    is now (no fire.lua of its own); a slot later than now re-arms the rule for it, with
    no second reservation, and it goes then, once."""
    await limited.add_user("alice", ALICE, [(SMS, 0)])
    first = await limited.trigger("alert 0")
    second = await limited.trigger("alert 1")
    sender = limited.parts.sender
    fired: list[str] = []
    reserved: list[str] = []
    fire, reserve = sender.store.fire, sender.limiter.reserve

    async def spy_fire(timer: Any, *args: Any, **kwargs: Any) -> Any:
        fired.append(timer.timer_id)
        return await fire(timer, *args, **kwargs)

    async def spy_reserve(channel: int, number: str) -> int:
        reserved.append(number)
        return await reserve(channel, number)

    monkeypatch.setattr(sender.store, "fire", spy_fire)
    monkeypatch.setattr(sender.limiter, "reserve", spy_reserve)

    await limited.notify(first, "alice", service_id="payments-api")
    await limited.pager.expect_sms("alice", contains="alert 0")
    await limited.settle()
    assert fired == [] and len(reserved) == 1
    await limited.notify(second, "alice", service_id="payments-api")
    await limited.settle()
    await limited.pager.expect_no_more_pages()  # its slot is 10 s on
    assert await limited.tick(seconds=10) == 1
    await limited.pager.expect_sms("alice", contains="alert 1")
    assert len(reserved) == 2  # one per page: the re-armed one reserved nothing again
    for incident_id in (first, second):
        [attempt] = await limited.attempts(incident_id)
        assert attempt.status == DELIVERED


async def test_a_notify_cancelled_after_its_script_ran_still_sends_the_page(
    stack: PagingStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Notify's script records the first page SENDING; if the call is then cancelled (its
    caller's deadline passed, its batch call was cancelled) before the reply is handled,
    the page is still sent, not left SENDING to be swept UNKNOWN and never sent."""
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger()  # mirrored: the script records the page SENDING
    store = stack.parts.pager.store
    start_cycle = store.start_cycle
    ran, go_on = asyncio.Event(), asyncio.Event()

    async def reply_still_on_its_way(*args: Any, **kwargs: Any) -> Any:
        started = await start_cycle(*args, **kwargs)
        ran.set()
        await go_on.wait()
        return started

    monkeypatch.setattr(store, "start_cycle", reply_still_on_its_way)
    call = asyncio.create_task(
        stack.parts.pager.notify(
            incident_id, "alice", f"{incident_id}/0/0/0/alice", "", service_id="payments-api"
        )
    )
    await ran.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    go_on.set()

    await stack.pager.expect_sms("alice")
    await stack.settle()
    [attempt] = await stack.attempts(incident_id)
    assert attempt.status in (notification_pb2.ATTEMPT_STATUS_SENT, DELIVERED)
    assert stack.parts.sender._in_flight.held == 0
