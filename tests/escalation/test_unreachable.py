"""A level nobody can answer moves on at once (issue 11, items 3 and 12): a user with no
contact method, no rule, or whose every rule failed counts as unanswered, exactly as a
schedule with nobody on call does, and the timeline says why. Every service is real; time
is a ManualClock; any page the test does not expect fails it."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

from tests.escalation.stack import FullStack, schedule, user
from tests.escalation.test_escalation import people, timeline, trigger
from tests.notification.stack import BOB, SMS, VOICE
from tocsin.escalation.domain import idempotency_key
from tocsin.escalation.store import hop_timer_id
from tocsin.runtime.events import incident_shard
from tocsin.runtime.timers import ClaimedTimer
from tocsin.v1 import escalation_pb2, notification_pb2, scheduling_pb2


async def nobody_to_call(stack: FullStack, user_id: str) -> None:
    """A user who exists (so a policy may name them) but has no contact method."""
    await stack.client.scheduling.CreateUser(
        scheduling_pb2.CreateUserRequest(
            user=scheduling_pb2.User(id=user_id, name=user_id.title(), time_zone="UTC")
        )
    )


async def test_a_level_whose_only_target_has_no_contact_method_moves_on_at_once(
    stack: FullStack,
) -> None:
    await people(stack)
    await nobody_to_call(stack, "zed")
    await stack.policy(([user("zed")], 5), ([user("bob")], 5))

    incident_id = await trigger(stack)

    await stack.pager.expect_sms("bob")  # now, not 5 minutes later
    await stack.pager.expect_no_more_pages()
    lines = await timeline(stack, incident_id)
    assert (
        "Escalation level 1 (loop 1) can reach nobody (zed has no contact method); moving on now"
        in lines
    )
    escalation = await stack.escalation_of(incident_id)
    assert [(p.level, p.user_id) for p in escalation.pages] == [(0, "zed"), (1, "bob")]
    assert escalation.next_fire_at.ToMilliseconds() == stack.paging.clock.now_ms() + 5 * 60_000


async def test_a_user_with_contact_methods_but_no_rules_counts_as_unanswered(
    stack: FullStack,
) -> None:
    await people(stack)
    await stack.paging.add_user("yves", "+15005550013", [])
    await stack.policy(([user("yves")], 5), ([user("bob")], 5))

    incident_id = await trigger(stack)

    await stack.pager.expect_sms("bob")
    lines = await timeline(stack, incident_id)
    assert any("can reach nobody (yves has no notification rules)" in line for line in lines)


async def test_a_level_with_one_reachable_target_waits_its_delay(stack: FullStack) -> None:
    await people(stack)
    await nobody_to_call(stack, "zed")
    await stack.policy(([user("zed"), user("bob")], 5), ([user("carol")], 5))

    incident_id = await trigger(stack)

    await stack.pager.expect_sms("bob")
    await stack.tick(minutes=4, seconds=59)
    await stack.pager.expect_no_more_pages()
    await stack.tick(seconds=1)
    await stack.pager.expect_sms("carol")
    lines = await timeline(stack, incident_id)
    assert "zed has no contact method: nobody was paged" in lines
    assert not any("can reach nobody" in line for line in lines)


async def test_a_policy_of_unreachable_users_only_is_exhausted_at_once(stack: FullStack) -> None:
    await nobody_to_call(stack, "zed")
    await stack.policy(([user("zed")], 5), repeat=1)

    incident_id = await trigger(stack)

    escalation = await stack.escalation_of(incident_id)
    assert escalation.status == escalation_pb2.ESCALATION_STATUS_EXHAUSTED
    assert [(p.level, p.loop) for p in escalation.pages] == [(0, 0), (0, 1)]
    lines = await timeline(stack, incident_id)
    assert sum("can reach nobody" in line for line in lines) == 2
    assert any("exhausted after 2 loop(s)" in line for line in lines)


async def test_a_redone_hop_or_a_repeated_report_moves_the_level_on_once(
    stack: FullStack,
) -> None:
    await people(stack)
    await nobody_to_call(stack, "zed")
    await stack.policy(([user("zed")], 5), ([user("bob")], 5), ([user("carol")], 5))
    incident_id = await trigger(stack)
    await stack.pager.expect_sms("bob")
    engine = stack.escalation.engine
    assert engine is not None

    # level 1's hop delivered again (its lease ran out after the work was done) ...
    hop_id = hop_timer_id(incident_id, 0, 0, 0)
    payload = {"incident": incident_id, "epoch": 0, "pages": [[0, 0, "zed", ""]], "notes": []}
    redone = ClaimedTimer(
        timer_id=hop_id,
        shard=incident_shard(incident_id),
        payload=json.dumps({**payload, "tp": ""}).encode(),
        due_ms=0,
        fence=1,
        lease_deadline_ms=0,
    )
    await engine.on_timer(redone)
    # ... and the report repeated, twice at once
    request = escalation_pb2.ReportUnreachableRequest(
        incident_id=incident_id,
        user_id="zed",
        idempotency_key=idempotency_key(incident_id, 0, 0, 0, "zed"),
        reason="zed has no contact method",
    )
    replies = await asyncio.gather(
        stack.escalation_client.ReportUnreachable(request),
        stack.escalation_client.ReportUnreachable(request),
    )
    await stack.run_until_quiet()

    assert [r.advanced for r in replies] == [False, False]
    await stack.pager.expect_no_more_pages()  # carol's level is not pulled forward
    escalation = await stack.escalation_of(incident_id)
    assert [p.user_id for p in escalation.pages] == ["zed", "bob"]
    lines = await timeline(stack, incident_id)
    assert sum("can reach nobody" in line for line in lines) == 1
    await stack.tick(minutes=5)
    await stack.pager.expect_sms("carol")


async def test_concurrent_reports_for_the_last_target_advance_exactly_once(
    stack: FullStack,
) -> None:
    await people(stack)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))
    incident_id = await trigger(stack)
    await stack.pager.expect_sms("bob")

    request = escalation_pb2.ReportUnreachableRequest(
        incident_id=incident_id,
        user_id="bob",
        idempotency_key=idempotency_key(incident_id, 0, 0, 0, "bob"),
        reason="every notification rule of bob failed",
    )
    replies = await asyncio.gather(
        *(stack.escalation_client.ReportUnreachable(request) for _ in range(3))
    )
    await stack.run_until_quiet()

    assert sorted(r.advanced for r in replies) == [False, False, True]
    await stack.pager.expect_sms("carol")
    await stack.pager.expect_no_more_pages()
    escalation = await stack.escalation_of(incident_id)
    assert [p.user_id for p in escalation.pages] == ["bob", "carol"]


async def test_a_report_for_another_level_or_epoch_changes_nothing(stack: FullStack) -> None:
    await people(stack)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))
    incident_id = await trigger(stack)
    await stack.pager.expect_sms("bob")

    for epoch, level in ((1, 0), (0, 1)):
        reply = await stack.escalation_client.ReportUnreachable(
            escalation_pb2.ReportUnreachableRequest(
                incident_id=incident_id,
                user_id="bob",
                idempotency_key=idempotency_key(incident_id, epoch, level, 0, "bob"),
                reason="stale",
            )
        )
        assert not reply.advanced
    await stack.run_until_quiet()
    await stack.pager.expect_no_more_pages()


def no_quick_retries(stack: FullStack) -> None:
    """Every retry from the rule's timer, so the ManualClock drives them all (the quick
    in-process ones sleep on the clock too, which `run_until_quiet` would wait out)."""
    sender = stack.paging.parts.sender
    sender.options = replace(sender.options, retry_attempts=1)


async def test_a_level_whose_only_rule_fails_for_good_moves_on_at_once(stack: FullStack) -> None:
    await people(stack)
    # Twilio's test number +15005550009 cannot receive SMS (21614); dan has no other rule.
    await stack.paging.add_user("dan", "+15005550009", [(SMS, 0)])
    await stack.policy(([user("dan")], 5), ([user("bob")], 5))

    incident_id = await trigger(stack)

    await stack.pager.expect_sms("bob")  # now, not 5 minutes later
    lines = await timeline(stack, incident_id)
    assert any(
        "can reach nobody (every notification rule of dan failed (last: SMS:" in line
        and "21614" in line
        for line in lines
    )


async def test_a_user_whose_every_rule_fails_for_good_counts_as_unanswered(
    stack: FullStack,
) -> None:
    await people(stack)
    # Twilio's test number +15005550001 takes neither SMS (21211) nor calls (21217).
    await stack.paging.add_user("eve", "+15005550001", [(SMS, 0), (VOICE, 120)])
    await nobody_to_call(stack, "zed")
    await stack.policy(([user("eve"), user("zed")], 5), ([user("bob")], 5))

    incident_id = await trigger(stack)

    await stack.pager.expect_sms("bob")  # both rules failed at once; zed has nothing
    lines = await timeline(stack, incident_id)
    assert any(
        "can reach nobody (every notification rule of eve failed (last: VOICE:" in line
        and "zed has no contact method" in line
        for line in lines
    )


async def test_a_throttle_is_retried_while_the_level_lasts_then_the_next_level_pages(
    stack: FullStack,
) -> None:
    await people(stack)
    no_quick_retries(stack)
    stack.paging.fake.fail_next(1000, status=429, code=20429, to=BOB)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))

    incident_id = await trigger(stack)
    for _ in range(59):
        await stack.tick(seconds=5)
    await stack.pager.expect_no_more_pages()  # bob's SMS is still being retried
    tries = len(stack.paging.fake.requests)
    assert 18 <= tries <= 45  # backoff up to 15 s for 5 minutes, not a hammering
    await stack.tick(seconds=5)

    # the level's own time: the page mattered until then; it failed, and bob has no other
    # rule, so the level can reach nobody and moves on now
    await stack.pager.expect_sms("carol")
    attempts = await stack.paging.attempts(incident_id)
    assert sorted((a.user_id, a.status) for a in attempts) == [
        ("bob", notification_pb2.ATTEMPT_STATUS_FAILED),  # one attempt: the throttled tries
        ("carol", notification_pb2.ATTEMPT_STATUS_DELIVERED),  # were never sent
    ]
    lines = await timeline(stack, incident_id)
    assert any("SMS to bob (bob-sms) refused for now" in line for line in lines)
    assert any("SMS to bob (bob-sms) failed" in line and "429" in line for line in lines)
    assert sum("can reach nobody" in line for line in lines) == 1  # one move
    await stack.tick(minutes=30)
    await stack.pager.expect_no_more_pages()


async def test_a_throttle_that_ends_lets_the_first_page_through_once(stack: FullStack) -> None:
    await people(stack)
    no_quick_retries(stack)
    stack.paging.fake.fail_next(1000, status=429, code=20429, to=BOB)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))
    incident_id = await trigger(stack)
    for _ in range(24):
        await stack.tick(seconds=5)
    stack.paging.fake.clear_failures()  # two minutes in, Twilio takes messages again

    for _ in range(4):
        await stack.tick(seconds=5)

    await stack.pager.expect_sms("bob")
    await stack.pager.expect_no_more_pages()
    [attempt] = await stack.paging.attempts(incident_id)
    assert attempt.status == notification_pb2.ATTEMPT_STATUS_DELIVERED
    # bob's SMS went out in the last 20 s; carol's level comes 5 minutes after that (levels
    # in order), not 5 minutes after bob's level fired
    await stack.tick(minutes=4, seconds=35)
    await stack.pager.expect_no_more_pages()
    await stack.tick(seconds=25)
    await stack.pager.expect_sms("carol")  # nobody answered bob: the next level


async def test_a_schedule_whose_on_call_user_cannot_be_reached_moves_on(stack: FullStack) -> None:
    await people(stack)
    await nobody_to_call(stack, "zed")
    await stack.schedule("primary", ["zed"])
    await stack.policy(([schedule("primary")], 5), ([user("bob")], 5))

    incident_id = await trigger(stack)

    await stack.pager.expect_sms("bob")
    lines = await timeline(stack, incident_id)
    assert "Escalation level 1 (loop 1) paged zed (schedule primary)" in lines
    assert any("can reach nobody (zed has no contact method)" in line for line in lines)
