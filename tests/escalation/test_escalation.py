"""Escalation, as the on-call engineer lives it: the right person paged at the right
moment, exactly once per level, and nothing after an acknowledgement. Every service is
real; time is a ManualClock; any page the test does not expect fails it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import grpc
import pytest
from redis.asyncio import RedisCluster

from tests.escalation.stack import FullStack, schedule, user
from tests.notification.stack import ALICE, BOB, SMS, VOICE
from tocsin.escalation.store import level_timer_id
from tocsin.notification.servicer import MAX_CONCURRENT_CALLS, NotificationServicer
from tocsin.runtime import page_outbox
from tocsin.runtime.events import incident_shard, shard_streams
from tocsin.v1 import escalation_pb2, incidents_pb2, notification_pb2

CAROL = "+15005550012"


async def people(stack: FullStack) -> None:
    await stack.paging.add_user("alice", ALICE, [(SMS, 0), (VOICE, 60)])
    await stack.paging.add_user("bob", BOB, [(SMS, 0)])
    await stack.paging.add_user("carol", CAROL, [(SMS, 0)])


async def trigger(stack: FullStack, summary: str = "disk full on db1") -> str:
    incident_id = await stack.paging.trigger(summary, mirror=False)
    await stack.run_until_quiet()
    return incident_id


async def timeline(stack: FullStack, incident_id: str) -> list[str]:
    incident = await stack.paging.incident(incident_id)
    return [entry.message for entry in incident.timeline]


async def test_levels_page_in_turn_until_an_sms_reply_acknowledges(any_stack: FullStack) -> None:
    stack = any_stack  # on the standalone server, then on the Redis Cluster
    await people(stack)
    await stack.schedule("primary", ["alice"])
    await stack.policy(([schedule("primary")], 5), ([user("bob")], 10))
    incident_id = await trigger(stack)

    await stack.pager.expect_sms("alice", "disk full on db1")
    await stack.tick(minutes=1)
    await stack.pager.expect_voice("alice", "disk full on db1")
    await stack.tick(minutes=3, seconds=59)
    await stack.pager.expect_no_more_pages()
    await stack.tick(seconds=1)
    bob_sms = await stack.pager.expect_sms("bob", "disk full on db1")

    assert bob_sms.body is not None
    code = bob_sms.body.split("reply '")[1].split("a'")[0]
    answer = await stack.pager.reply_sms("bob", f"{code}a")
    number = (await stack.paging.incident(incident_id)).number
    assert number > 0
    assert answer.startswith(f"Acknowledged #{number}: disk full on db1")
    await stack.tick(minutes=60)
    await stack.pager.expect_no_more_pages()

    escalation = await stack.escalation_of(incident_id)
    assert escalation.status == escalation_pb2.ESCALATION_STATUS_STOPPED
    assert [(p.level, p.user_id) for p in escalation.pages] == [(0, "alice"), (1, "bob")]
    lines = await timeline(stack, incident_id)
    assert "Escalation level 1 (loop 1) paged alice (schedule primary)" in lines
    assert "Escalation level 2 (loop 1) paged bob" in lines


async def test_repeat_loops_then_exhausts_and_says_so(stack: FullStack) -> None:
    await people(stack)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5), repeat=1)
    incident_id = await trigger(stack)
    for _ in range(2):
        await stack.pager.expect_sms("bob")
        await stack.tick(minutes=5)
        await stack.pager.expect_sms("carol")
        await stack.tick(minutes=5)
    await stack.tick(minutes=60)
    await stack.pager.expect_no_more_pages()
    escalation = await stack.escalation_of(incident_id)
    assert escalation.status == escalation_pb2.ESCALATION_STATUS_EXHAUSTED
    assert [(p.level, p.loop) for p in escalation.pages] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    lines = await timeline(stack, incident_id)
    assert any("exhausted after 2 loop(s)" in line for line in lines)


async def test_resolve_stops_everything_including_pending_rules(stack: FullStack) -> None:
    await people(stack)
    await stack.policy(([user("alice")], 5), ([user("bob")], 5))
    incident_id = await trigger(stack)
    await stack.pager.expect_sms("alice")
    await stack.client.incidents.Resolve(incidents_pb2.ResolveRequest(incident_id=incident_id))
    await stack.run_until_quiet()
    await stack.tick(minutes=30)
    await stack.pager.expect_no_more_pages()


async def test_a_schedule_with_nobody_on_call_moves_on_at_once_and_says_why(
    stack: FullStack,
) -> None:
    await people(stack)
    await stack.schedule("nights", ["alice"], start="2030-01-01T00:00")  # nobody until 2030
    await stack.policy(([schedule("nights")], 5), ([user("bob")], 5))
    incident_id = await trigger(stack)
    await stack.pager.expect_sms("bob")
    lines = await timeline(stack, incident_id)
    assert any("Schedule nights had nobody on call" in line for line in lines)
    assert "Escalation level 1 (loop 1) paged nobody" in lines


async def test_repeated_alerts_page_nobody_again(stack: FullStack) -> None:
    await people(stack)
    await stack.policy(([user("bob")], 5))
    first = await trigger(stack)
    for _ in range(3):
        again = await trigger(stack)  # same dedup key
        assert again == first
    await stack.pager.expect_sms("bob")
    await stack.pager.expect_no_more_pages()


async def test_manual_escalation_pages_the_next_level_now(stack: FullStack) -> None:
    await people(stack)
    await stack.policy(([user("bob")], 30), ([user("carol")], 30))
    incident_id = await trigger(stack)
    await stack.pager.expect_sms("bob")
    await stack.escalation_client.Escalate(escalation_pb2.EscalateRequest(incident_id=incident_id))
    await stack.run_until_quiet()
    await stack.pager.expect_sms("carol")
    await stack.client.incidents.Acknowledge(
        incidents_pb2.AcknowledgeRequest(incident_id=incident_id)
    )
    await stack.run_until_quiet()
    with pytest.raises(grpc.aio.AioRpcError) as stopped:
        await stack.escalation_client.Escalate(
            escalation_pb2.EscalateRequest(incident_id=incident_id)
        )
    assert stopped.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_duplicate_or_stale_level_timer_pages_nobody(stack: FullStack) -> None:
    await people(stack)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))
    incident_id = await trigger(stack)
    await stack.pager.expect_sms("bob")
    stack.paging.clock.advance(minutes=5)
    timers = stack.escalation.engine.store.timers  # type: ignore[union-attr]
    shard = incident_shard(incident_id)
    claimed = await timers.claim(level_timer_id(incident_id), shard, 60_000)
    # version 2 fired bob's level; 3 is bob's page reported out (the delay counts from it)
    assert claimed is not None and json.loads(claimed.payload)["v"] == 3
    engine = stack.escalation.engine
    assert engine is not None
    # the same timer handed to two workers at once: one level, one page
    await asyncio.gather(engine.on_timer(claimed), engine.on_timer(claimed))
    await stack.run_until_quiet()
    await stack.pager.expect_sms("carol")
    await stack.tick(minutes=60)
    await stack.pager.expect_no_more_pages()
    assert [p.user_id for p in (await stack.escalation_of(incident_id)).pages] == ["bob", "carol"]


async def test_a_crash_after_the_level_advanced_loses_no_page_and_writes_its_notes_once(
    any_stack: FullStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write that fires a level queues its pages for notification in the same script
    (runtime/page_outbox.py), and on one Redis server the level's notes too: escalation
    dying right after that write loses no page, and the notes reach the timeline once
    (on the Cluster through the hop the write claimed, redone after its lease)."""
    stack = any_stack
    await people(stack)
    await stack.policy(([user("bob"), user("carol")], 5))
    engine = stack.escalation.engine
    assert engine is not None
    crashes: list[str] = []

    def killed(state: object, traceparent: str) -> None:
        crashes.append("after the write")
        raise RuntimeError("process killed after the level's write")

    # the first thing the engine does once the write returned
    monkeypatch.setattr(engine, "_remember_awaiting", killed)
    incident_id = await stack.paging.trigger(mirror=False)
    assert stack.escalation.consumer is not None
    await stack.escalation.consumer.drain_once()  # (its retries find the level written)
    assert crashes == ["after the write"]
    monkeypatch.undo()
    await stack.run_until_quiet()
    await stack.pager.expect_sms("bob")
    await stack.pager.expect_sms("carol")
    stack.paging.clock.advance(seconds=16)  # a claimed hop's lease runs out; it is redone
    await stack.run_until_quiet()
    await stack.pager.expect_no_more_pages()
    lines = await timeline(stack, incident_id)
    assert lines.count("Escalation level 1 (loop 1) paged bob, carol") == 1


async def test_pages_from_the_stream_take_the_notify_calls_slots(stack: FullStack) -> None:
    """A page read from the stream is started within the same bound as a Notify call
    (MAX_CONCURRENT_CALLS), so a backlog read after an outage cannot start thousands of
    cycles at once: with every slot taken, the page waits, and goes once one frees."""
    await people(stack)
    await stack.policy(([user("bob")], 5))
    servicer = stack.paging.service.pages[0].apply.__self__  # type: ignore[attr-defined]
    assert isinstance(servicer, NotificationServicer)
    for _ in range(MAX_CONCURRENT_CALLS):
        await servicer.slots.acquire()
    await stack.paging.trigger(mirror=False)
    assert stack.escalation.consumer is not None
    await stack.escalation.consumer.drain_once()
    starting = asyncio.create_task(stack.paging.start_pages())
    await asyncio.sleep(0.2)
    assert not starting.done() and not stack.pager.pages("sms")
    servicer.slots.release()
    assert await asyncio.wait_for(starting, 5) == 1
    await stack.paging.settle()
    await stack.pager.expect_sms("bob")
    for _ in range(MAX_CONCURRENT_CALLS - 1):
        servicer.slots.release()


async def test_notification_dying_between_two_pages_of_a_level_pages_each_user_once(
    any_stack: FullStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page stays pending in its stream until notification has started it: the one a
    process died on is taken over by another (XAUTOCLAIM), and the one it had started is
    not sent again (Notify's idempotency key). On one Redis server one consumer reads
    every shard's stream, on the Cluster one per shard."""
    stack = any_stack
    await people(stack)
    await stack.policy(([user("bob"), user("carol")], 5))
    calls = 0
    consumers = stack.paging.service.pages
    real_apply = consumers[0].apply

    async def dies_on_the_second(request: notification_pb2.NotifyRequest, tp: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("process killed between two pages")
        await real_apply(request, tp)

    for consumer in consumers:
        monkeypatch.setattr(consumer, "apply", dies_on_the_second)
    incident_id = await trigger(stack)
    await stack.pager.expect_sms("bob")
    await stack.pager.expect_no_more_pages()  # carol's page is pending, not lost
    key = page_outbox.stream_key(incident_shard(incident_id))
    cluster = isinstance(stack.paging.redis, RedisCluster)
    assert len(consumers) == (16 if cluster else 1)
    shard = next(consumer for consumer in consumers if key in consumer.stream_keys)
    monkeypatch.setattr(shard, "claim_idle_ms", 0)  # as after CLAIM_IDLE_MS
    assert await shard.claim_stale() == 1
    await stack.run_until_quiet()
    await stack.pager.expect_sms("carol")
    assert await shard.claim_stale() == 0  # applied and deleted: nothing left to take
    assert await stack.paging.redis.xlen(key) == 0
    await stack.pager.expect_no_more_pages()  # and bob is not paged twice
    lines = await timeline(stack, incident_id)
    assert lines.count("Escalation level 1 (loop 1) paged bob, carol") == 1


async def test_two_starts_of_one_new_incident_at_once_page_level_zero_once(
    stack: FullStack,
) -> None:
    """Level 0 fires inside the write that starts the escalation: of two starts racing
    (a redelivered event, the auditor), one writes and pages, the other pages nobody."""
    await people(stack)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))
    incident_id = await stack.paging.trigger(mirror=False)
    incident = await stack.paging.incident(incident_id)
    engine = stack.escalation.engine
    assert engine is not None
    await asyncio.gather(engine.begin(incident, ""), engine.begin(incident, ""))
    await stack.paging.start_pages()
    await stack.paging.settle()
    await stack.pager.expect_sms("bob")
    await stack.run_until_quiet()  # the TRIGGERED event itself: already started
    await stack.pager.expect_no_more_pages()
    escalation = await stack.escalation_of(incident_id)
    assert [p.user_id for p in escalation.pages] == ["bob"]
    await stack.tick(minutes=5)  # the level-1 timer armed by that same write
    await stack.pager.expect_sms("carol")


async def test_the_auditor_rearms_an_escalation_whose_timer_was_lost(stack: FullStack) -> None:
    await people(stack)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))
    incident_id = await trigger(stack)
    await stack.pager.expect_sms("bob")
    engine = stack.escalation.engine
    assert engine is not None
    await engine.store.timers.cancel(level_timer_id(incident_id), incident_shard(incident_id))
    stack.paging.clock.advance(minutes=10)
    assert await stack.run_until_quiet() == 0  # the timer is gone: nothing fires
    fixed = await engine.audit(frozenset(range(16)), grace_ms=30_000, window_ms=3_600_000)
    assert fixed == 1
    await stack.run_until_quiet()
    await stack.pager.expect_sms("carol")
    assert await engine.audit(frozenset(range(16)), grace_ms=30_000, window_ms=3_600_000) == 0


async def test_the_auditor_starts_an_escalation_whose_event_was_lost(stack: FullStack) -> None:
    await people(stack)
    await stack.policy(([user("bob")], 5))
    incident_id = await stack.paging.trigger(mirror=False)
    assert stack.escalation.consumer is not None
    # the escalation service never saw the event (e.g. the stream was trimmed)
    for key in shard_streams(incident_shard(incident_id)):
        await stack.escalation.consumer.redis.xgroup_setid(key, "escalation", "$")
    await stack.paging.drain_events()
    engine = stack.escalation.engine
    assert engine is not None
    # Younger than the grace, its event may still wait in a backlog: not started here
    # (under a storm the auditor raced the consumer through thousands of incidents).
    assert await engine.audit(frozenset({0}), grace_ms=30_000, window_ms=3_600_000) == 0
    await stack.pager.expect_no_more_pages()
    stack.paging.clock.advance(seconds=31)
    assert await engine.audit(frozenset({0}), grace_ms=30_000, window_ms=3_600_000) == 1
    await stack.run_until_quiet()
    await stack.pager.expect_sms("bob")


async def test_policy_validation_names_fields(stack: FullStack) -> None:
    await people(stack)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stack.policy(([user("zed"), schedule("nope")], 0))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.value.details() or ""
    assert "policy.levels[0].delay" in details
    assert "policy.levels[0].targets[0].user_id" in details
    assert "policy.levels[0].targets[1].schedule_id" in details


async def test_a_level_that_loses_the_race_with_an_acknowledgement_pages_nobody(
    stack: FullStack,
) -> None:
    await people(stack)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))
    incident_id = await trigger(stack)
    await stack.pager.expect_sms("bob")
    engine = stack.escalation.engine
    assert engine is not None
    stack.paging.clock.advance(minutes=5)
    loaded_before_the_ack = await engine.store.load(incident_id)
    assert loaded_before_the_ack is not None
    await stack.client.incidents.Acknowledge(
        incidents_pb2.AcknowledgeRequest(incident_id=incident_id)
    )
    await stack.escalation.consumer.drain_once()  # type: ignore[union-attr]
    # the worker that loaded the state before the ack now tries to fire level 2
    assert await engine._advance(loaded_before_the_ack, "", manual=False) is None
    await stack.tick(minutes=60)
    await stack.pager.expect_no_more_pages()
    escalation = await stack.escalation_of(incident_id)
    assert escalation.status == escalation_pb2.ESCALATION_STATUS_STOPPED


async def test_every_notify_names_the_incidents_service(
    any_stack: FullStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender queues pages per service (fair between services), so every Notify a
    level makes names the incident's service: level 0 (fired in the start write) and a
    later level (fired from the stored state's timer), on standalone and Cluster."""
    stack = any_stack
    await people(stack)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))
    engine = stack.escalation.engine
    assert engine is not None
    seen: list[tuple[str, str]] = []
    for consumer in stack.paging.service.pages:  # notification's side of every Notify
        real_apply = consumer.apply

        async def spy(
            request: notification_pb2.NotifyRequest,
            traceparent: str,
            real: Callable[[notification_pb2.NotifyRequest, str], Awaitable[object]] = real_apply,
        ) -> None:
            seen.append((request.user_id, request.service_id))
            await real(request, traceparent)

        monkeypatch.setattr(consumer, "apply", spy)
    await trigger(stack)
    await stack.pager.expect_sms("bob")
    await stack.tick(minutes=5)
    await stack.pager.expect_sms("carol")
    await stack.tick(minutes=60)
    await stack.pager.expect_no_more_pages()
    assert seen == [("bob", "payments-api"), ("carol", "payments-api")]


async def test_the_first_level_carries_the_incident_s_words_to_its_pages(
    any_stack: FullStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Escalation handles the TRIGGERED event before notification has mirrored it (as a
    third of first pages did at 80 incidents/s): level 0's Notify carries the incident's
    summary, number and creation from that event, so the page says them without asking
    the incidents service. A later level, the mirror long filled, asks nothing either."""
    stack = any_stack
    await people(stack)
    await stack.policy(([user("alice")], 5), ([user("bob")], 10))
    asked: list[str] = []
    peer = stack.paging.parts.sender.incidents
    original = peer.get_incident

    async def spy(incident_id: str, **kwargs: object) -> object:
        asked.append(incident_id)
        return await original(incident_id, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(peer, "get_incident", spy)
    incident_id = await stack.paging.trigger("disk full on db1", mirror=False)
    assert stack.escalation.consumer is not None
    await stack.escalation.consumer.drain_once()  # before notification's own consumer
    await stack.paging.start_pages()
    await stack.paging.settle()

    sms = await stack.pager.expect_sms("alice")
    number = (await stack.paging.incident(incident_id)).number
    assert sms.body is not None
    assert sms.body.startswith(f"tocsin #{number}: [Payments API] disk full on db1")
    await stack.run_until_quiet()
    await stack.tick(minutes=1)  # alice's voice rule, a later rule
    await stack.pager.expect_voice("alice", "disk full on db1")
    await stack.tick(minutes=4)
    await stack.pager.expect_sms("bob", f"#{number}: [Payments API] disk full on db1")
    assert asked == []


async def test_each_report_of_a_batch_is_taken_or_refused_as_its_own_call_would_be(
    stack: FullStack,
) -> None:
    """ReportPageOutBatch, as notification's client sends the reports waiting together:
    a report with a malformed key is refused alone (the field named), a repeated one
    releases nothing twice, and a well-formed one is taken."""
    await people(stack)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))
    incident_id = await trigger(stack)
    await stack.pager.expect_sms("bob")
    key = f"{incident_id}/1/0/0/bob"
    good = escalation_pb2.ReportPageOutRequest(
        incident_id=incident_id, user_id="bob", idempotency_key=key
    )
    bad = escalation_pb2.ReportPageOutRequest(
        incident_id=incident_id, user_id="bob", idempotency_key="not/a/key"
    )

    reply = await stack.escalation_client.ReportPageOutBatch(
        escalation_pb2.ReportPageOutBatchRequest(items=[good, bad, good])
    )

    taken, refused, repeated = reply.results
    assert taken.HasField("response") and repeated.HasField("response")
    assert not (taken.response.released and repeated.response.released)
    assert refused.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "idempotency_key" in refused.error.message
    await stack.tick(minutes=5)
    await stack.pager.expect_sms("carol")
    await stack.tick(minutes=30)
    await stack.pager.expect_no_more_pages()
