"""Levels in order during a storm (issue 19): many incidents page the same level-1 user at
once, so notification's per-number send interval puts that user's SMS in a backlog (the
last one minutes late), while the level-2 user's number is free. Every incident's level-2
SMS still comes after its level-1 SMS, a full level delay after it, and every incident
pages each user exactly once: nothing lost, nothing twice.

Every service is real (one event loop, real sockets, real Redis, standalone and Cluster);
time is a ManualClock driven in 5 s steps; the fake Twilio is the only fake. On the old
code the level-2 timers fired at their due time while the level-1 SMS still waited, and
bob's page preceded alice's for every incident past the sixth."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from tests.escalation.stack import FullStack, user
from tests.escalation.test_escalation import people, timeline, trigger
from tests.notification.stack import SMS
from tocsin.escalation.domain import LEVEL_HOLD_MAX_MS
from tocsin.notification.ratelimit import RateLimiter
from tocsin.runtime.events import INCIDENT_SHARDS
from tocsin.v1 import notification_pb2

INCIDENTS = 12
NUMBER_INTERVAL_MS = 10_000
"""One SMS per number per 10 s: the 12th incident's level-1 SMS leaves 110 s late."""
LEVEL_DELAY_MS = 60_000


def backlogged_numbers(stack: FullStack) -> None:
    sender = stack.paging.parts.sender
    sender.limiter = RateLimiter(
        stack.paging.redis,
        stack.paging.clock,
        "+15005550006",
        sends_per_second=0,
        number_interval_ms=NUMBER_INTERVAL_MS,
    )


async def test_in_a_storm_no_incident_pages_its_second_level_before_its_first(
    any_stack: FullStack,
) -> None:
    stack = any_stack
    await people(stack)  # bob and carol: one SMS rule each
    await stack.policy(([user("bob")], 1), ([user("carol")], 1))
    backlogged_numbers(stack)

    incidents = [
        await stack.paging.trigger(f"storm {i:02d}", mirror=False) for i in range(INCIDENTS)
    ]
    await stack.run_until_quiet()
    for _ in range(60):  # five minutes, in 5 s steps
        await stack.tick(seconds=5)
    await stack.tick(minutes=10)

    sms = stack.pager.pages("sms")
    order = [(stack.pager.name_of(r.to), (r.body or "").split("storm ")[1][:2]) for r in sms]
    assert Counter(order) == Counter(
        (who, f"{i:02d}") for who in ("bob", "carol") for i in range(INCIDENTS)
    ), "every incident pages bob and carol exactly once"
    for i in range(INCIDENTS):
        tag = f"{i:02d}"
        assert order.index(("bob", tag)) < order.index(("carol", tag)), (
            f"incident {i}: carol's level-2 SMS went out before bob's level-1 SMS"
        )
    late = 0
    for incident_id in incidents:
        attempts = await stack.paging.attempts(incident_id)
        sent = {
            a.user_id: a.created_at.ToMilliseconds()
            for a in attempts
            if a.status == notification_pb2.ATTEMPT_STATUS_DELIVERED
        }
        assert set(sent) == {"bob", "carol"}, attempts
        # level 2 counts its delay from level 1's page going out
        assert sent["carol"] >= sent["bob"] + LEVEL_DELAY_MS
        escalation = await stack.escalation_of(incident_id)
        fired = {p.user_id: p.at.ToMilliseconds() for p in escalation.pages}
        late += fired["bob"] + LEVEL_DELAY_MS < sent["bob"]
    assert late >= 4, "the backlog was real: bob's SMS left after carol was due"
    for r in sms:  # every page was expected
        await stack.pager.expect_sms(stack.pager.name_of(r.to))


async def test_a_lost_report_holds_the_next_level_only_until_the_bound(
    stack: FullStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """notification's report that bob's page went out never arrives (it died after
    sending, or escalation was away): carol's level goes ahead LEVEL_HOLD_MAX_MS after its
    due time, with a timeline warning; it never stalls."""
    await people(stack)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))

    async def lost(*args: object) -> bool:
        return False

    escalation = stack.paging.parts.sender.escalation
    monkeypatch.setattr(escalation, "report_page_out", lost)
    monkeypatch.setattr(escalation.reports, "queue", lambda *args: None)  # nor with SENT
    incident_id = await trigger(stack)
    await stack.pager.expect_sms("bob")

    await stack.tick(minutes=5)  # due: held, waiting for the report
    await stack.pager.expect_no_more_pages()
    hold_s = LEVEL_HOLD_MAX_MS // 1000
    await stack.tick(seconds=hold_s - 1)
    await stack.pager.expect_no_more_pages()
    await stack.tick(seconds=1)
    await stack.pager.expect_sms("carol")
    lines = await timeline(stack, incident_id)
    assert any("were not reported sent" in line for line in lines)
    await stack.tick(minutes=30)
    await stack.pager.expect_no_more_pages()


class ProcessKilled(BaseException):
    """Stands for SIGKILL: nothing after it runs, no `except Exception` catches it."""


async def test_a_first_page_whose_sender_died_is_reported_by_the_sweep(
    stack: FullStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """notification dies after Twilio took bob's SMS, before recording or reporting it:
    the sweep that marks the attempt UNKNOWN (3 minutes on) reports it out, so carol's
    level comes 5 minutes after that, not only when the hold runs out."""
    await people(stack)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))
    provider = getattr(stack.paging.parts.sender.channels.find(SMS), "provider")  # noqa: B009
    real_send = provider.send_sms

    async def dies_after_request(to: str, body: str, callback: str | None) -> object:
        await real_send(to, body, None)
        raise ProcessKilled

    monkeypatch.setattr(provider, "send_sms", dies_after_request)
    incident_id = await trigger(stack)
    await stack.pager.expect_sms("bob")
    monkeypatch.undo()

    await stack.tick(minutes=3)
    pager = stack.paging.parts.pager
    assert await pager.sweep(range(INCIDENT_SHARDS), tests=False) == 1
    await stack.run_until_quiet()
    [attempt] = await stack.paging.attempts(incident_id)
    assert attempt.status == notification_pb2.ATTEMPT_STATUS_UNKNOWN

    await stack.tick(minutes=4, seconds=59)  # 7:59: held (due at 5:00, out at 3:00)
    await stack.pager.expect_no_more_pages()
    await stack.tick(seconds=1)
    await stack.pager.expect_sms("carol")
    lines = await timeline(stack, incident_id)
    assert not any("were not reported sent" in line for line in lines)


async def test_a_report_that_loses_its_write_reads_again_and_still_releases_the_level(
    any_stack: FullStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report of bob's page, to a process that did not fire the level, reads the
    escalation with its own record (one round trip); when another writer changes the
    escalation before the report's compare-and-set, the report reads it again and still
    counts carol's delay from bob's page: it does not wait for the hold's bound (nor
    fail: five lost writes raise Conflict)."""
    stack = any_stack  # standalone and Cluster: the report's transaction is one slot's
    await people(stack)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))
    engine = stack.escalation.engine
    assert engine is not None
    # as if another replica had fired the level: no fast path (test_report_fast_path.py)
    monkeypatch.setattr(engine, "_remember_awaiting", lambda state, traceparent: None)
    store = engine.store
    record_out = store.record_out
    raced: list[int] = []

    async def racing_record_out(incident_id: str, *args: Any) -> Any:
        reported, state, traceparent = await record_out(incident_id, *args)
        assert state is not None
        bumped = replace(state, version=state.version + 1)
        assert await store.write(bumped, state.version, traceparent=traceparent)
        raced.append(bumped.version)
        return reported, state, traceparent  # the report holds the older version

    monkeypatch.setattr(store, "record_out", racing_record_out)
    incident_id = await trigger(stack)
    await stack.pager.expect_sms("bob")
    assert raced, "bob's page was reported"

    await stack.tick(minutes=5)
    await stack.pager.expect_sms("carol")
    escalation = await stack.escalation_of(incident_id)
    assert [p.user_id for p in escalation.pages] == ["bob", "carol"]
    lines = await timeline(stack, incident_id)
    assert not any("were not reported sent" in line for line in lines)
