"""Shift hand-off notices end to end: real scheduling and notification services, real
Redis (standalone and Cluster), slack-sdk against the local Slack server, a ManualClock.
A notice goes out once per (user, schedule, shift start, kind) however often the timer
fires: twice on two replicas, or again after a worker died mid-firing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from tests.notification.fake_slack import FakeSlack, fake_slack
from tests.notification.stack import SMS, VOICE, PagingStack, paging_stack
from tests.notification.test_background import eventually
from tests.services import LOOPBACK_ANY_PORT
from tocsin.runtime.errors import Conflict
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.service import ServiceDeps
from tocsin.scheduling import server as scheduling_server
from tocsin.scheduling.handoff_timers import ARM_ATTEMPTS, HandoffTimers
from tocsin.scheduling.model import Schedule
from tocsin.scheduling.store import SchedulingStore
from tocsin.v1 import notification_pb2, scheduling_pb2

TOKEN = "xoxb-test-token-1234"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
ALICE_SLACK = "U024BE7LH"
CHANNEL = "C024BE91L"
NOTICE = notification_pb2.ATTEMPT_KIND_NOTICE
SENT = notification_pb2.ATTEMPT_STATUS_SENT
FIRST_SHIFT = datetime(2026, 11, 27, 9, tzinfo=UTC)  # the ManualClock starts at 03:00


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with fake_slack(TOKEN, SIGNING_SECRET) as fake:
        fake.channels.add(CHANNEL)
        yield fake


@pytest.fixture
async def stack(any_redis: RedisClient, slack: FakeSlack) -> AsyncIterator[PagingStack]:
    env = {
        "TOCSIN_SLACK_BOT_TOKEN": TOKEN,
        "TOCSIN_SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "TOCSIN_SLACK_BASE_URL": slack.base_url,
    }
    async with paging_stack(any_redis, env) as paging:
        yield paging
        paging.pager.check_all_expected()


def handoffs(stack: PagingStack) -> HandoffTimers:
    """What a scheduling replica runs (its own store and timer worker, shared Redis)."""
    return HandoffTimers(
        SchedulingStore(stack.redis), stack.redis, stack.clock, lambda: stack.client.notification
    )


async def setup(stack: PagingStack, notices: list[str]) -> None:
    scheduling = stack.client.scheduling
    for user in ("alice", "bob"):
        await scheduling.CreateUser(
            scheduling_pb2.CreateUserRequest(user=scheduling_pb2.User(id=user, name=user.title()))
        )
    await stack.client.notification.CreateContactMethod(
        notification_pb2.CreateContactMethodRequest(
            contact_method=notification_pb2.ContactMethod(
                id="alice-slack",
                user_id="alice",
                type=notification_pb2.CONTACT_METHOD_TYPE_SLACK,
                address=ALICE_SLACK,
            )
        )
    )
    reply = await scheduling.SetHandoffNotices(
        scheduling_pb2.SetHandoffNoticesRequest(user_id="alice", notices=notices)
    )
    assert list(reply.user.handoff_notices) == notices
    await scheduling.CreateSchedule(
        scheduling_pb2.CreateScheduleRequest(
            schedule=scheduling_pb2.Schedule(
                id="primary",
                name="Primary",
                time_zone="UTC",
                announce_slack_channel=CHANNEL.lower(),
                layers=[
                    scheduling_pb2.Layer(
                        name="daily",
                        start="2026-11-27T09:00:00",
                        rotation_length="1d",
                        user_ids=["alice", "bob"],
                    )
                ],
            )
        )
    )


def texts(slack: FakeSlack) -> list[tuple[str, str]]:
    return [(m.channel, m.text) for m in slack.messages]


async def test_start_notice_and_announce_once_across_two_replicas(
    stack: PagingStack, slack: FakeSlack
) -> None:
    await setup(stack, ["start"])
    one, two = handoffs(stack).worker(), handoffs(stack).worker()
    assert await one.run_once() == 0  # armed by CreateSchedule for 09:00, not due
    stack.clock.set(FIRST_SHIFT)
    fired = await asyncio.gather(one.run_once(), two.run_once())
    assert sorted(fired) == [0, 1]
    assert texts(slack) == [
        ("D024BE7LH", "tocsin: your on-call shift on Primary starts now."),
        (CHANNEL, "Primary: now on call: Alice"),
    ]
    assert not slack.messages[0].blocks  # a notice has no Acknowledge button
    # re-armed for the next hand-off, a day later: bob starts (announced), alice ends
    # (she did not ask to be told)
    stack.clock.advance(hours=23)
    assert await one.run_once() == 0
    stack.clock.advance(hours=1)
    assert await two.run_once() == 1
    assert texts(slack)[2:] == [(CHANNEL, "Primary: now on call: Bob")]
    # Each went out as an attempt of its own, listed as a notice under whom it told.
    listed = await stack.client.notification.ListAttempts(
        notification_pb2.ListAttemptsRequest(user_id="alice")
    )
    start_ms = int(FIRST_SHIFT.timestamp() * 1000)
    assert [(a.kind, a.status, a.contact_method_id, a.notice_key) for a in listed.attempts] == [
        (NOTICE, SENT, "alice-slack", f"handoff/primary/alice/{start_ms}/start")
    ]
    listed = await stack.client.notification.ListAttempts(
        notification_pb2.ListAttemptsRequest(user_id=f"slack_channel:{CHANNEL.lower()}")
    )
    assert [(a.kind, a.status) for a in listed.attempts] == [(NOTICE, SENT)] * 2


class ChangedMeanwhile(SchedulingStore):
    """A replica's store that hands out the schedule as it read it while, its `at`-th time
    (counting from 1), an operator's change lands just after the read: the replica goes
    on computing from the old version."""

    def __init__(
        self, stack: PagingStack, at: int | None, change: Callable[[], Awaitable[None]]
    ) -> None:
        """`at` None: after every read."""
        super().__init__(stack.redis)
        self.reads, self.at, self.change = 0, at, change

    async def compiled(self, schedule_id: str) -> Schedule:
        schedule = await super().compiled(schedule_id)
        self.reads += 1
        if self.at is None or self.reads == self.at:
            await self.change()
        return schedule


async def test_a_rearm_never_puts_back_the_moment_of_an_older_schedule(
    stack: PagingStack, slack: FakeSlack
) -> None:
    """Firing at 09:00 computes the next hand-off from version 1 (tomorrow 09:00); before
    it arms, the rotation becomes 12 hours (version 2, armed for 21:00 by the change).
    The firing must not arm version 1's moment over it: bob is announced at 21:00."""
    await setup(stack, ["start"])

    async def twelve_hours() -> None:
        scheduling = stack.client.scheduling
        current = await scheduling.GetSchedule(scheduling_pb2.GetScheduleRequest(id="primary"))
        schedule = current.schedule
        schedule.layers[0].rotation_length = "12h"
        await scheduling.UpdateSchedule(scheduling_pb2.UpdateScheduleRequest(schedule=schedule))

    # reads: 1 = the firing's notices, 2 = its re-arm (computed from version 1)
    store = ChangedMeanwhile(stack, 2, twelve_hours)
    worker = HandoffTimers(store, stack.redis, stack.clock, lambda: stack.client.notification)
    stack.clock.set(FIRST_SHIFT)
    assert await worker.worker().run_once() == 1
    assert store.reads >= 2
    assert texts(slack) == [
        ("D024BE7LH", "tocsin: your on-call shift on Primary starts now."),
        (CHANNEL, "Primary: now on call: Alice"),
    ]
    stack.clock.set(FIRST_SHIFT + timedelta(hours=12))
    assert await handoffs(stack).worker().run_once() == 1
    assert texts(slack)[2:] == [(CHANNEL, "Primary: now on call: Bob")]


async def test_a_change_racing_a_rearm_is_armed_from_the_newer_version(
    stack: PagingStack, slack: FakeSlack
) -> None:
    """A change's own re-arm that read version 1 just before another change stored
    version 2 (and armed it) computes again rather than arm version 1's moment."""
    await setup(stack, ["start"])
    stack.clock.set(FIRST_SHIFT)
    assert await handoffs(stack).worker().run_once() == 1  # 09:00 went; tomorrow's armed
    fired_at_nine = len(texts(slack))
    stack.clock.set(FIRST_SHIFT + timedelta(hours=1))  # alice on since 09:00

    async def twelve_hours() -> None:
        current = await stack.client.scheduling.GetSchedule(
            scheduling_pb2.GetScheduleRequest(id="primary")
        )
        schedule = current.schedule
        schedule.layers[0].rotation_length = "12h"
        await stack.client.scheduling.UpdateSchedule(
            scheduling_pb2.UpdateScheduleRequest(schedule=schedule)
        )

    replica = HandoffTimers(
        ChangedMeanwhile(stack, 1, twelve_hours),
        stack.redis,
        stack.clock,
        lambda: stack.client.notification,
    )
    await replica.rearm("primary")
    stack.clock.set(FIRST_SHIFT + timedelta(hours=12))
    assert await handoffs(stack).worker().run_once() == 1
    assert texts(slack)[fired_at_nine:] == [(CHANNEL, "Primary: now on call: Bob")]


async def test_a_rearm_outrun_by_changes_gives_up_rather_than_arm_an_old_moment(
    stack: PagingStack, slack: FakeSlack
) -> None:
    """Every time a replica reads the schedule, a rename lands before it arms: it gives up
    (Conflict; a firing is offered again after its lease) and the timer the changes armed
    stays as they armed it."""
    await setup(stack, ["start"])
    renames = 0

    async def rename() -> None:
        nonlocal renames
        renames += 1
        current = await stack.client.scheduling.GetSchedule(
            scheduling_pb2.GetScheduleRequest(id="primary")
        )
        schedule = current.schedule
        schedule.name = f"Primary {renames}"
        await stack.client.scheduling.UpdateSchedule(
            scheduling_pb2.UpdateScheduleRequest(schedule=schedule)
        )

    replica = HandoffTimers(
        ChangedMeanwhile(stack, None, rename),
        stack.redis,
        stack.clock,
        lambda: stack.client.notification,
    )
    with pytest.raises(Conflict):
        await replica.rearm("primary", FIRST_SHIFT + timedelta(days=3))
    assert renames == ARM_ATTEMPTS
    stack.clock.set(FIRST_SHIFT)  # still armed for 09:00 by the renames, not day 3
    assert await handoffs(stack).worker().run_once() == 1
    assert texts(slack)[-1] == (CHANNEL, f"Primary {ARM_ATTEMPTS}: now on call: Alice")


class DiesAfterSending:
    """Notification's client in a process that dies right after its first notice went
    out (the reply is lost with it)."""

    def __init__(self, stack: PagingStack) -> None:
        self.stack = stack

    async def SendNotice(
        self, request: notification_pb2.SendNoticeRequest
    ) -> notification_pb2.SendNoticeResponse:
        await self.stack.client.notification.SendNotice(request)
        raise ConnectionResetError("the process died")


async def test_a_worker_dying_mid_firing_sends_nothing_twice(
    stack: PagingStack, slack: FakeSlack
) -> None:
    await setup(stack, ["start"])
    dying = HandoffTimers(
        SchedulingStore(stack.redis), stack.redis, stack.clock, lambda: DiesAfterSending(stack)
    )
    stack.clock.set(FIRST_SHIFT)
    assert await dying.worker().run_once() == 1
    assert texts(slack) == [("D024BE7LH", "tocsin: your on-call shift on Primary starts now.")]
    restarted = handoffs(stack).worker()
    assert await restarted.run_once() == 0  # still leased to the dead worker
    stack.clock.advance(seconds=31)
    assert await restarted.run_once() == 1  # offered again: alice is not told twice
    assert texts(slack)[1:] == [(CHANNEL, "Primary: now on call: Alice")]
    stack.clock.advance(days=1)
    assert await restarted.run_once() == 1  # and the next hand-off is armed
    assert texts(slack)[2:] == [(CHANNEL, "Primary: now on call: Bob")]


async def test_day_before_notice(stack: PagingStack, slack: FakeSlack) -> None:
    await setup(stack, ["day_before"])
    worker = handoffs(stack).worker()
    stack.clock.set(FIRST_SHIFT)
    assert await worker.run_once() == 1
    assert texts(slack) == [(CHANNEL, "Primary: now on call: Alice")]
    stack.clock.set(FIRST_SHIFT + timedelta(days=1))  # alice is back in a day
    assert await worker.run_once() == 1
    assert texts(slack)[1:] == [
        (
            "D024BE7LH",
            "tocsin: your on-call shift on Primary starts in a day (2026-11-29 09:00 UTC).",
        ),
        (CHANNEL, "Primary: now on call: Bob"),
    ]


async def test_bad_settings_are_refused_naming_the_field(stack: PagingStack) -> None:
    await setup(stack, [])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.client.scheduling.SetHandoffNotices(
            scheduling_pb2.SetHandoffNoticesRequest(user_id="alice", notices=["lunch"])
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "notices[0]" in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.client.scheduling.UpdateSchedule(
            scheduling_pb2.UpdateScheduleRequest(
                schedule=scheduling_pb2.Schedule(
                    id="primary", name="P", time_zone="UTC", announce_slack_channel="#general"
                )
            )
        )
    assert "schedule.announce_slack_channel" in (refused.value.details() or "")


async def test_a_hand_off_missed_while_down_sends_nothing_late(
    stack: PagingStack, slack: FakeSlack
) -> None:
    await setup(stack, ["start", "end"])
    worker = handoffs(stack).worker()
    stack.clock.set(FIRST_SHIFT + timedelta(hours=2))  # down over 09:00
    assert await worker.run_once() == 1
    assert slack.messages == []
    stack.clock.set(FIRST_SHIFT + timedelta(days=1))  # re-armed for the next one
    assert await worker.run_once() == 1
    assert texts(slack) == [
        ("D024BE7LH", "tocsin: your on-call shift on Primary has ended."),
        (CHANNEL, "Primary: now on call: Bob"),
    ]


async def test_schedules_stored_before_get_their_timer_at_start(
    stack: PagingStack, slack: FakeSlack
) -> None:
    await setup(stack, ["start"])
    replica = handoffs(stack)
    assert await replica.timers.cancel("handoff:primary")  # as before this feature
    assert await replica.arm_missing() == 1
    assert await replica.arm_missing() == 0
    stack.clock.set(FIRST_SHIFT)
    assert await replica.worker().run_once() == 1
    assert len(slack.messages) == 2


async def test_the_scheduling_process_arms_and_fires_in_the_background(
    stack: PagingStack, slack: FakeSlack
) -> None:
    await setup(stack, ["start"])
    assert await handoffs(stack).timers.cancel("handoff:primary")  # stored before
    deps = ServiceDeps(stack.config, stack.redis, stack.clock, peers=stack.client)
    running, _ = await scheduling_server.create_server(deps, LOOPBACK_ANY_PORT)
    try:
        due_key = handoffs(stack).timers.keys(0)[3]
        await eventually(lambda: stack.redis.hexists(due_key, "handoff:primary"))
        stack.clock.set(FIRST_SHIFT)

        async def both_sent() -> bool:
            return len(slack.messages) == 2

        await eventually(both_sent)
        assert texts(slack)[1] == (CHANNEL, "Primary: now on call: Alice")
        assert running.workers.problems() == []
    finally:
        await running.stop(0)


async def test_start_and_end_notices_by_sms_once_and_never_a_call(stack: PagingStack) -> None:
    """The phone: a notice is an SMS on each SMS method (no voice call: nobody is woken to
    be told their shift starts), once, however many workers fire."""
    await stack.add_user("carol", "+14155550140", [(SMS, 0), (VOICE, 60)])
    await stack.add_user("dave", "+14155550141", [(SMS, 0)])
    await stack.client.scheduling.SetHandoffNotices(
        scheduling_pb2.SetHandoffNoticesRequest(user_id="carol", notices=["start", "end"])
    )
    await stack.client.scheduling.CreateSchedule(
        scheduling_pb2.CreateScheduleRequest(
            schedule=scheduling_pb2.Schedule(
                id="secondary",
                name="Secondary",
                time_zone="UTC",
                layers=[
                    scheduling_pb2.Layer(
                        name="daily",
                        start="2026-11-27T09:00:00",
                        rotation_length="1d",
                        user_ids=["carol", "dave"],
                    )
                ],
            )
        )
    )
    one, two = handoffs(stack).worker(), handoffs(stack).worker()
    stack.clock.set(FIRST_SHIFT)
    assert sorted(await asyncio.gather(one.run_once(), two.run_once())) == [0, 1]
    await stack.pager.expect_sms("carol", "your on-call shift on Secondary starts now.")
    await stack.pager.expect_no_more_pages()
    stack.clock.advance(days=1)  # carol hands over to dave (who asked for nothing)
    assert await two.run_once() == 1
    await stack.pager.expect_sms("carol", "your on-call shift on Secondary has ended.")
    await stack.pager.expect_no_more_pages()


async def test_a_change_while_a_hand_off_is_due_and_unfired_keeps_it(
    stack: PagingStack, slack: FakeSlack
) -> None:
    """The worker is behind: 09:00 is due and not fired when the schedule is renamed. The
    change's re-arm must not move the timer to the next hand-off after now (tomorrow),
    which would lose 09:00's notices: they go when the worker catches up, by the new name."""
    await setup(stack, ["start"])
    stack.clock.set(FIRST_SHIFT + timedelta(seconds=30))
    scheduling = stack.client.scheduling
    current = await scheduling.GetSchedule(scheduling_pb2.GetScheduleRequest(id="primary"))
    schedule = current.schedule
    schedule.name = "Primary on-call"
    await scheduling.UpdateSchedule(scheduling_pb2.UpdateScheduleRequest(schedule=schedule))
    assert await handoffs(stack).worker().run_once() == 1
    assert texts(slack) == [
        ("D024BE7LH", "tocsin: your on-call shift on Primary on-call starts now."),
        (CHANNEL, "Primary on-call: now on call: Alice"),
    ]
    stack.clock.set(FIRST_SHIFT + timedelta(days=1))  # and the next one is armed
    assert await handoffs(stack).worker().run_once() == 1
    assert texts(slack)[2:] == [(CHANNEL, "Primary on-call: now on call: Bob")]
