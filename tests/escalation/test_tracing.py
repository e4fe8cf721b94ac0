"""One escalation is one trace: ingest -> escalation start -> each level (with the schedule
lookup) -> each notify -> each send -> each Twilio request, and the acknowledgement stops
it. Asserted as a span tree through the in-memory exporter."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.escalation.stack import FullStack, schedule, user
from tests.escalation.test_escalation import people, trigger
from tocsin.escalation.engine import EscalationEngine
from tocsin.v1 import incidents_pb2


def attr(span: ReadableSpan, key: str) -> Any:
    return dict(span.attributes or {})[key]


def children(spans: list[ReadableSpan], parent: ReadableSpan, name: str) -> list[ReadableSpan]:
    assert parent.context is not None
    return [
        s
        for s in spans
        if s.name == name and s.parent is not None and s.parent.span_id == parent.context.span_id
    ]


def descendants(spans: list[ReadableSpan], root: ReadableSpan, name: str) -> list[ReadableSpan]:
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    found = []
    for span in spans:
        node = span
        while node.parent is not None and node.parent.span_id in by_id:
            node = by_id[node.parent.span_id]
            if node is root:
                if span.name == name:
                    found.append(span)
                break
    return found


async def test_one_escalation_is_one_span_tree(
    stack: FullStack, spans: InMemorySpanExporter
) -> None:
    await people(stack)
    await stack.schedule("primary", ["alice"])
    await stack.policy(([schedule("primary")], 5), ([user("bob")], 5))
    incident_id = await trigger(stack)
    await stack.pager.expect_sms("alice")
    await stack.tick(minutes=1)
    await stack.pager.expect_voice("alice")
    await stack.tick(minutes=4)
    await stack.pager.expect_sms("bob")
    await stack.client.incidents.Acknowledge(
        incidents_pb2.AcknowledgeRequest(incident_id=incident_id)
    )
    await stack.run_until_quiet()

    finished = list(spans.get_finished_spans())
    ingest = [s for s in finished if s.name == "/tocsin.v1.IncidentService/Trigger"]
    ingest_server = [s for s in ingest if s.kind.name == "SERVER"]
    assert len(ingest_server) == 1
    root = ingest_server[0]
    assert root.context is not None
    trace_id = root.context.trace_id

    (start,) = [s for s in finished if s.name == "escalation.start"]
    assert start.context is not None and start.context.trace_id == trace_id
    assert start.parent is not None and start.parent.span_id == root.context.span_id
    assert attr(start, "incident.id") == incident_id

    levels = [s for s in finished if s.name == "escalation.level"]
    assert [attr(s, "escalation.level") for s in levels] == [0, 1]
    for level in levels:
        assert level.context is not None and level.context.trace_id == trace_id
        assert level.parent is not None and level.parent.span_id == start.context.span_id
    assert list(attr(levels[0], "escalation.paged")) == ["alice"]
    assert list(attr(levels[1], "escalation.paged")) == ["bob"]
    (lookup,) = children(finished, levels[0], "escalation.who_is_on_call")
    assert attr(lookup, "schedule.id") == "primary"

    notifies = [s for s in finished if s.name == "escalation.notify"]
    assert [attr(s, "user.id") for s in notifies] == ["alice", "bob"]
    sends = [s for s in finished if s.name == "notification.send"]
    assert sorted(attr(s, "notification.channel") for s in sends) == [
        "sms",
        "sms",
        "voice",
    ]
    for send in sends:
        assert send.context is not None and send.context.trace_id == trace_id
        assert children(finished, send, "twilio.messages.create") or children(
            finished, send, "twilio.calls.create"
        )
    for notify in notifies:
        user_id = attr(notify, "user.id")
        below = descendants(finished, notify, "notification.send")
        assert below and {attr(s, "user.id") for s in below} == {user_id}
        assert notify.parent is not None  # the level that decided the page

    (stop,) = [s for s in finished if s.name == "escalation.stop"]
    assert attr(stop, "reason") == "INCIDENT_EVENT_KIND_ACKNOWLEDGED"
    every_value = [str(v) for s in finished for v in (s.attributes or {}).values()]
    assert not any("5550010" in v or "5550011" in v for v in every_value)  # no phone numbers


async def _alice_then_bob(stack: FullStack) -> tuple[str, EscalationEngine]:
    """An incident whose level 0 paged alice (level 1, bob, in 5 minutes), and the
    escalation engine."""
    await people(stack)
    await stack.policy(([user("alice")], 5), ([user("bob")], 5))
    incident_id = await trigger(stack)
    await stack.pager.expect_sms("alice")
    assert stack.escalation.engine is not None
    return incident_id, stack.escalation.engine


async def test_a_level_whose_write_loses_its_race_leaves_no_notify_span(
    any_stack: FullStack, spans: InMemorySpanExporter
) -> None:
    """Two replicas firing one level: the one whose write loses the compare-and-set
    queued no page, so its trace shows no `escalation.notify` span for one (the level's
    span says it was stale), and nobody is paged by it. On both Redis layouts (on a
    Cluster the level's notes take a hop timer, which a lost write never arms)."""
    stack = any_stack
    incident_id, engine = await _alice_then_bob(stack)
    before_level_1 = await engine.store.load(incident_id)
    assert before_level_1 is not None and before_level_1.next_level == 1
    await stack.tick(minutes=5)
    await stack.pager.expect_voice("alice")
    await stack.pager.expect_sms("bob")
    spans.clear()

    # The other replica, late, fires level 1 from the state it read before the first did.
    assert await engine._advance(before_level_1, "", manual=False) is None
    await stack.run_until_quiet()

    finished = list(spans.get_finished_spans())
    (stale,) = [s for s in finished if s.name == "escalation.level"]
    assert attr(stale, "escalation.stale") is True
    assert list(attr(stale, "escalation.paged")) == ["bob"]
    assert not [s for s in finished if s.name == "escalation.notify"]
    assert not [s for s in finished if s.name == "notification.page"]
    await stack.pager.expect_no_more_pages()


async def test_a_write_that_fails_ends_its_notify_spans_with_the_error(
    any_stack: FullStack, spans: InMemorySpanExporter
) -> None:
    """A write whose reply is lost may have queued its pages: their notify spans end,
    marked with the error, and the page notification starts is still their child."""
    stack = any_stack
    incident_id, engine = await _alice_then_bob(stack)
    write_hop = engine.store.write_hop

    async def reply_lost(*args: Any, **kwargs: Any) -> Any:
        await write_hop(*args, **kwargs)
        raise ConnectionError("reply lost")

    engine.store.write_hop = reply_lost  # type: ignore[method-assign]
    state = await engine.store.load(incident_id)
    assert state is not None
    spans.clear()
    try:
        await engine._advance(state, "", manual=True)  # as EscalateNow does
    except ConnectionError:
        pass
    else:
        raise AssertionError("the write's error was swallowed")
    finally:
        engine.store.write_hop = write_hop  # type: ignore[method-assign]
    await stack.run_until_quiet()
    await stack.pager.expect_sms("bob")

    finished = list(spans.get_finished_spans())
    (notify,) = [s for s in finished if s.name == "escalation.notify"]
    assert attr(notify, "user.id") == "bob"
    assert notify.status.status_code.name == "ERROR"
    assert descendants(finished, notify, "notification.send")
