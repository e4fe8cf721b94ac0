"""A throttled page is not lost (issue 11, item 12): what Twilio refused without
processing it (429 / 20429, 5xx, no connection) is tried again, honouring Retry-After,
for at least a minute, from the rule's own timer once the quick retries are spent; it is
sent once. Only then does the rule count as failed and the next rule run at once."""

from __future__ import annotations

from dataclasses import replace

from tests.notification.stack import ALICE, SMS, VOICE, PagingStack
from tests.notification.test_paging import advance_until
from tocsin.notification import keys as nkeys
from tocsin.notification.domain import retry_deadline
from tocsin.notification.records import TimerPayload
from tocsin.runtime.events import incident_shard
from tocsin.v1 import notification_pb2

DELIVERED = notification_pb2.ATTEMPT_STATUS_DELIVERED
FAILED = notification_pb2.ATTEMPT_STATUS_FAILED


def statuses(stack: PagingStack) -> list[int]:
    return [r.http_status for r in stack.fake.requests]


async def test_five_throttles_then_success_send_the_sms_once(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger()
    stack.fake.fail_next(5, status=429, code=20429)

    await stack.notify(incident_id, "alice")
    await advance_until(stack, lambda: len(stack.fake.requests) == 5, step_s=0.5)
    await stack.settle()  # the quick retries are spent; the rule's timer has it now

    assert statuses(stack) == [429] * 5
    assert await stack.attempts(incident_id) == []  # nothing sent, nothing failed
    fired = await stack.tick(seconds=2)  # the backoff (1-2 s)

    assert fired == 1
    await stack.pager.expect_sms("alice", contains="disk full")
    assert statuses(stack) == [429] * 5 + [201]
    [attempt] = await stack.attempts(incident_id)
    assert (attempt.rule_index, attempt.status) == (0, DELIVERED)
    timeline = [e.message for e in (await stack.incident(incident_id)).timeline]
    assert any("SMS to alice (alice-sms) refused for now" in m for m in timeline)
    assert await stack.tick(minutes=10) == 0
    await stack.pager.expect_no_more_pages()


async def test_retry_after_is_honoured_from_the_timer(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger()
    stack.fake.fail_next(2, status=429, code=20429, retry_after=20)

    await stack.notify(incident_id, "alice")
    await stack.settle()
    assert statuses(stack) == [429]  # 20 s is past the quick retries' ceiling: no sleeping

    assert await stack.tick(seconds=19) == 0
    assert await stack.tick(seconds=1) == 1
    assert statuses(stack) == [429, 429]
    assert await stack.tick(seconds=19) == 0
    assert await stack.tick(seconds=1) == 1

    await stack.pager.expect_sms("alice")
    assert statuses(stack) == [429, 429, 201]
    [attempt] = await stack.attempts(incident_id)
    assert attempt.status == DELIVERED


async def test_a_throttle_past_the_next_level_fails_the_rule_and_the_next_runs_at_once(
    stack: PagingStack,
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0), (VOICE, 120)])
    incident_id = await stack.trigger()
    stack.fake.fail_next(1000, status=503, code=20503, kind="sms", retry_after=30)
    request = notification_pb2.NotifyRequest(
        incident_id=incident_id, user_id="alice", idempotency_key=f"{incident_id}/0/0/0/alice"
    )
    request.next_level_at.FromMilliseconds(stack.clock.now_ms() + 90_000)

    await stack.client.notification.Notify(request)
    await stack.settle()
    for _ in range(3):
        await stack.tick(seconds=30)

    # SMS tried until the next level is due, then the call at once, not at 120 s
    await stack.pager.expect_voice("alice")
    assert statuses(stack) == [503, 503, 503, 503, 201]
    sms, call = await stack.attempts(incident_id)
    assert (sms.status, sms.error_code) == (FAILED, 20503)
    assert (call.rule_index, call.status) == (1, DELIVERED)
    assert await stack.tick(minutes=10) == 0
    await stack.pager.expect_no_more_pages()


async def test_a_throttled_page_of_an_acknowledged_incident_is_not_retried(
    stack: PagingStack,
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger()
    stack.fake.fail_next(1, status=429, code=20429, retry_after=10)
    await stack.notify(incident_id, "alice")
    await stack.settle()

    await stack.client.notification.CancelNotifications(
        notification_pb2.CancelNotificationsRequest(incident_id=incident_id)
    )
    assert await stack.tick(seconds=30) == 0

    assert statuses(stack) == [429]
    await stack.pager.expect_no_more_pages()
    shard = incident_shard(incident_id)
    assert await stack.redis.zcard(nkeys.timer_keys(shard)[0]) == 0


def test_a_retried_rules_timer_payload_round_trips() -> None:
    payload = TimerPayload("7-1", 0, "alice", "alice-sms", SMS, "", slot_ms=5)
    retry = replace(payload, retry_until_ms=61_000, retries=3)
    assert TimerPayload.decode(retry.encode()) == retry
    assert TimerPayload.decode(payload.encode()) == payload


def test_a_throttled_send_is_worth_retrying_until_the_next_rule_or_level() -> None:
    minute = 60_000
    # (first refusal, cycle start, rule delays, rule, next level due) -> deadline
    assert retry_deadline(0, 0, [0], 0, 0, minute) == minute  # nothing known: a minute
    assert retry_deadline(0, 0, [0, 5 * minute], 0, 0, minute) == 5 * minute
    assert retry_deadline(0, 0, [0, 5 * minute], 0, 3 * minute, minute) == 3 * minute
    assert retry_deadline(0, 0, [0, 0], 0, 3 * minute, minute) == minute  # at least a minute
    assert retry_deadline(0, 0, [0, minute], 1, 15 * minute, minute) == 15 * minute
