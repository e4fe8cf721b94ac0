"""Sender fairness (issue 19): one service's storm of pages does not hold back another
service's first page. The sender handles at most `max_pages_in_flight` pages at once;
the rest queue per service (the Notify's service_id) and are taken round robin, so a
canary on a quiet service waits for the pages in hand, not for the storm's queue."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.harness import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER
from tests.notification.stack import ALICE, BOB, SMS, paging_stack
from tocsin.faketwilio import FakeTwilio
from tocsin.notification.fairslots import FairSlots
from tocsin.notification.providers import SendResult, TwilioProvider
from tocsin.notification.records import TimerPayload
from tocsin.notification.sender import SenderOptions
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.timers import ClaimedTimer
from tocsin.v1 import incidents_pb2, notification_pb2

IN_FLIGHT = SenderOptions.max_pages_in_flight
STORM = 3 * IN_FLIGHT


class GatedProvider(TwilioProvider):
    """Twilio that answers only once the gate opens; records who was sent to, in order."""

    def __init__(self, fake: FakeTwilio) -> None:
        assert fake.base_url is not None
        super().__init__(ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, base_url=fake.base_url)
        self.gate = asyncio.Event()
        self.waiting = 0
        self.order: list[str] = []

    async def send_sms(self, to: str, body: str, status_callback: str | None) -> SendResult:
        self.waiting += 1
        await self.gate.wait()
        self.order.append(to)
        return await super().send_sms(to, body, status_callback)


async def test_a_storm_of_pages_does_not_hold_back_another_services_first_page(
    redis: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    providers: list[GatedProvider] = []

    def provider(fake: FakeTwilio) -> GatedProvider:
        providers.append(GatedProvider(fake))
        return providers[-1]

    async with paging_stack(redis, provider=provider) as stack:
        [gated] = providers
        await stack.add_user("alice", ALICE, [(SMS, 0)])
        await stack.add_user("bob", BOB, [(SMS, 0)])
        await stack.client.incidents.CreateService(
            incidents_pb2.CreateServiceRequest(
                service=incidents_pb2.Service(
                    id="quiet-api", name="Quiet API", escalation_policy_id="quiet"
                )
            )
        )

        async def notify(service_id: str, summary: str, user_id: str) -> None:
            reply = await stack.client.incidents.Trigger(
                incidents_pb2.TriggerRequest(
                    service_id=service_id, summary=summary, dedup_key=summary
                )
            )
            incident_id = reply.incident.id
            await stack.client.notification.Notify(
                notification_pb2.NotifyRequest(
                    incident_id=incident_id,
                    user_id=user_id,
                    idempotency_key=f"{incident_id}/0/0/0/{user_id}",
                    service_id=service_id,
                )
            )

        sender = stack.parts.sender
        started: list[str] = []  # whose page was granted a send slot, in order
        fire = sender._fire

        async def recording_fire(timer: ClaimedTimer, *args: Any, **kwargs: Any) -> None:
            started.append(TimerPayload.decode(timer.payload).user_id)
            await fire(timer, *args, **kwargs)

        monkeypatch.setattr(sender, "_fire", recording_fire)
        for i in range(STORM):
            await notify("payments-api", f"storm {i}", "alice")
        for _ in range(500):  # the pages in hand reach the provider; the rest queue
            if gated.waiting >= IN_FLIGHT:
                break
            await asyncio.sleep(0.01)
        assert gated.waiting == IN_FLIGHT
        await notify("quiet-api", "canary", "bob")
        await stack.drain_events()
        gated.gate.set()
        await stack.settle()

        assert len(gated.order) == STORM + 1
        # bob's page is the second granted a send slot once the pages in hand finish (one
        # of the storm's queue went first); without per-service queues, after all STORM
        assert started.index("bob") == IN_FLIGHT + 1
        # and its SMS does not wait for the storm's queue (it may still reach Twilio after
        # some pages granted later: its service's name is looked up once, theirs cached)
        assert gated.order.index(BOB) < STORM
        assert sorted(str(m.to) for m in stack.fake.accepted("sms")) == sorted(
            [ALICE] * STORM + [BOB]
        )


async def test_fair_slots_take_keys_in_turn_and_keep_each_keys_order() -> None:
    slots = FairSlots(1)
    granted: list[str] = []
    release = asyncio.Event()

    async def holder(key: str, name: str) -> None:
        async with slots.slot(key):
            granted.append(name)
            await release.wait()

    first = asyncio.create_task(holder("storm", "s0"))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(holder("storm", f"s{i}")) for i in range(1, 5)]
    waiters += [asyncio.create_task(holder("quiet", f"q{i}")) for i in range(2)]
    await asyncio.sleep(0)
    assert (slots.held, slots.waiting("storm"), slots.waiting("quiet")) == (1, 4, 2)
    release.set()
    await asyncio.gather(first, *waiters)
    assert granted == ["s0", "s1", "q0", "s2", "q1", "s3", "s4"]
    assert (slots.held, slots.waiting()) == (0, 0)


async def test_a_cancelled_waiter_takes_no_slot() -> None:
    slots = FairSlots(1)
    await slots.acquire("a")
    cancelled = asyncio.create_task(slots.acquire("b"))
    later = asyncio.create_task(slots.acquire("c"))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert slots.waiting() == 1
    slots.release()
    await later  # the slot went to the next waiter, not to the cancelled one
    assert slots.held == 1
    slots.release()
    assert (slots.held, slots.waiting()) == (0, 0)


async def test_a_slot_is_taken_without_waiting_only_when_free_and_nobody_queues() -> None:
    slots = FairSlots(2)
    assert slots.try_acquire() and slots.held == 1
    holder = asyncio.create_task(slots.acquire("storm"))
    await holder
    assert slots.held == 2
    assert not slots.try_acquire() and slots.held == 2  # full
    queued = asyncio.create_task(slots.acquire("storm"))
    await asyncio.sleep(0)
    slots.release()  # passed on to the waiter, not freed
    await queued
    assert slots.held == 2 and not slots.try_acquire()
    slots.release()
    assert slots.try_acquire()  # a free slot and no waiter
