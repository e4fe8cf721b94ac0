"""Who is on call, remembered: escalation asks scheduling once per schedule and shift,
and every change to the schedule, every hand-off and a schedule deleted and created
again under the same id are seen by the very next page, as if it had asked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tests.escalation.stack import FullStack, full_stack, schedule, user
from tests.notification.stack import ALICE, BOB, SMS
from tocsin.runtime.oncall import REVISION_FIELD, OnCallCache, schedule_key
from tocsin.runtime.redis import RedisClient
from tocsin.scheduling.servicer import SchedulingServicer
from tocsin.scheduling.store import SchedulingStore
from tocsin.v1 import incidents_pb2, scheduling_pb2

CAROL = "+15005550012"


class Asked:
    """Counts WhoIsOnCall calls that reached scheduling."""

    def __init__(self) -> None:
        self.count = 0


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> Asked:
    counter = Asked()
    original: Callable[..., Any] = SchedulingServicer.WhoIsOnCall

    async def counting(self: SchedulingServicer, request: Any, context: Any) -> Any:
        counter.count += 1
        return await original(self, request, context)

    monkeypatch.setattr(SchedulingServicer, "WhoIsOnCall", counting)
    return counter


async def rotation_stack(redis: RedisClient) -> AsyncIterator[FullStack]:
    """alice, bob and carol (SMS); `primary` rotates alice and bob weekly; the policy
    pages `primary`, then carol after 5 minutes; fails on any unexpected page."""
    async with full_stack(redis) as stack:
        await stack.paging.add_user("alice", ALICE, [(SMS, 0)])
        await stack.paging.add_user("bob", BOB, [(SMS, 0)])
        await stack.paging.add_user("carol", CAROL, [(SMS, 0)])
        # weekly from Sunday 2026-11-01: alice, bob, alice, bob; the clock starts Friday
        # 2026-11-27 03:00 UTC, in bob's week, which hands off to alice on the 29th.
        await stack.schedule("primary", ["alice", "bob"])
        await stack.policy(([schedule("primary")], 5), ([user("carol")], 30))
        yield stack
        await stack.run_until_quiet()
        stack.pager.check_all_expected()


@pytest.fixture
async def cached(redis: RedisClient, asked: Asked) -> AsyncIterator[FullStack]:
    async for stack in rotation_stack(redis):
        yield stack


@pytest.fixture
async def any_cached(any_redis: RedisClient, asked: Asked) -> AsyncIterator[FullStack]:
    async for stack in rotation_stack(any_redis):
        yield stack


async def page(stack: FullStack, summary: str) -> str:
    incident_id = await stack.paging.trigger(summary, mirror=False)
    await stack.run_until_quiet()
    return incident_id


async def resolve(stack: FullStack, incident_id: str) -> None:
    await stack.client.incidents.Resolve(incidents_pb2.ResolveRequest(incident_id=incident_id))
    await stack.run_until_quiet()


async def paged_once(stack: FullStack, who: str, summary: str) -> None:
    """An alert that pages `who` (level 1), then is resolved."""
    incident_id = await page(stack, summary)
    await stack.pager.expect_sms(who, summary)
    await resolve(stack, incident_id)


def ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


async def test_the_next_page_from_a_schedule_asks_scheduling_no_more(
    any_cached: FullStack, asked: Asked
) -> None:
    stack = any_cached  # the revision is read beside the policy: standalone and Cluster
    await paged_once(stack, "bob", "disk full on db1")
    assert asked.count == 1
    await paged_once(stack, "bob", "api 500s")
    assert asked.count == 1  # the remembered answer: same revision, same shift


async def test_an_override_added_after_a_page_is_seen_by_the_next_one(
    any_cached: FullStack, asked: Asked
) -> None:
    stack = any_cached
    first = await page(stack, "disk full on db1")
    await stack.pager.expect_sms("bob")
    now = stack.paging.clock.now()
    await stack.client.scheduling.CreateOverride(
        scheduling_pb2.CreateOverrideRequest(
            schedule_id="primary",
            override=scheduling_pb2.Override(
                user_id="carol",
                start=ts(now - timedelta(minutes=1)),
                end=ts(now + timedelta(hours=2)),
            ),
        )
    )
    second = await page(stack, "api 500s")
    await stack.pager.expect_sms("carol", "api 500s")
    assert asked.count == 2
    await resolve(stack, first)
    await resolve(stack, second)


async def test_a_later_level_sees_a_change_made_while_the_incident_was_open(
    cached: FullStack, asked: Asked
) -> None:
    stack = cached
    await stack.policy(([user("carol")], 5), ([schedule("primary")], 30), replace=True)
    first = await page(stack, "disk full on db1")
    await stack.pager.expect_sms("carol")
    await stack.tick(minutes=5)
    await stack.pager.expect_sms("bob")  # level 2, asked
    await resolve(stack, first)
    second = await page(stack, "api 500s")
    await stack.pager.expect_sms("carol", "api 500s")
    current = await stack.client.scheduling.GetSchedule(
        scheduling_pb2.GetScheduleRequest(id="primary")
    )
    changed = current.schedule
    changed.layers[0].user_ids[:] = ["carol", "alice"]  # this week: alice
    await stack.client.scheduling.UpdateSchedule(
        scheduling_pb2.UpdateScheduleRequest(schedule=changed)
    )
    await stack.tick(minutes=5)
    await stack.pager.expect_sms("alice", "api 500s")  # not bob, whom it remembered
    assert asked.count == 2
    await resolve(stack, second)


async def test_the_hand_off_ends_the_remembered_answer(cached: FullStack, asked: Asked) -> None:
    stack = cached
    await paged_once(stack, "bob", "disk full on db1")
    stack.paging.clock.set(datetime(2026, 11, 28, 23, 59, 59, 999_000, tzinfo=UTC))
    await paged_once(stack, "bob", "api 500s")  # the last millisecond of bob's week
    assert asked.count == 1
    stack.paging.clock.set(datetime(2026, 11, 29, 0, 0, tzinfo=UTC))
    await paged_once(stack, "alice", "queue stuck")
    assert asked.count == 2


async def test_a_schedule_deleted_and_created_again_is_asked_afresh(
    cached: FullStack, asked: Asked
) -> None:
    stack = cached
    await paged_once(stack, "bob", "disk full on db1")
    before = await stack.paging.redis.hget(schedule_key("primary"), REVISION_FIELD)
    await stack.client.scheduling.DeleteSchedule(scheduling_pb2.DeleteScheduleRequest(id="primary"))
    await stack.schedule("primary", ["carol"])  # version 1 again; a new revision
    after = await stack.paging.redis.hget(schedule_key("primary"), REVISION_FIELD)
    assert before is not None and after is not None and after != before
    await paged_once(stack, "carol", "api 500s")
    assert asked.count == 2


async def test_a_schedule_without_a_revision_is_always_asked_until_stamped(
    cached: FullStack, asked: Asked
) -> None:
    stack = cached
    await stack.paging.redis.hdel(schedule_key("primary"), REVISION_FIELD)  # stored long ago
    for summary in ("disk full on db1", "api 500s"):
        await paged_once(stack, "bob", summary)
    assert asked.count == 2
    servicer_store = SchedulingStore(stack.paging.redis)  # what scheduling runs at start
    assert await servicer_store.stamp_revisions() == 1
    assert await servicer_store.stamp_revisions() == 0
    for summary in ("queue stuck", "cert expiring"):
        await paged_once(stack, "bob", summary)
    assert asked.count == 3


def test_the_cache_holds_an_answer_only_inside_its_shift_and_revision() -> None:
    cache = OnCallCache(size=2)
    cache.remember("primary", b"7", "bob", 1_000, 2_000)
    assert cache.lookup("primary", b"7", 1_000) == "bob"
    assert cache.lookup("primary", b"7", 1_999) == "bob"
    assert cache.lookup("primary", b"7", 2_000) is None  # the hand-off
    assert cache.lookup("primary", b"7", 999) is None
    assert cache.lookup("primary", b"8", 1_500) is None  # written since
    assert cache.lookup("primary", None, 1_500) is None  # deleted, or not stamped
    cache.remember("primary", None, "bob", 1_000, 2_000)  # asked without a revision
    assert cache.lookup("primary", b"7", 1_500) is None
    cache.remember("a", b"1", "x", 0, 10)
    cache.remember("b", b"1", "y", 0, 10)
    cache.remember("c", b"1", "z", 0, 10)
    assert cache.lookup("a", b"1", 5) is None  # least recently used, out
    assert cache.lookup("c", b"1", 5) == "z"
