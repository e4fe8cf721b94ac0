"""Page-out reports through the report outbox (runtime/report_outbox.py): notification
queues that a user's first page went out (with SENT on one Redis server), and escalation
applies it, with no RPC, as a span of the page's trace; the next level counts its delay
from the page. A report an escalation process read and could not apply (it died) is
taken over by another and still releases the level on time, where a lost ReportPageOut
call held it until its bound. On the standalone server and the 3-master Redis Cluster."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import RedisCluster

from tests.escalation.stack import FullStack, user
from tests.escalation.test_escalation import people, trigger
from tocsin.runtime.outbox import Apply
from tocsin.runtime.report_outbox import GROUP, STREAM_KEY, ReportOutboxConsumer
from tocsin.v1 import escalation_pb2


async def pending(stack: FullStack) -> int:
    summary: Any = await stack.paging.redis.xpending(STREAM_KEY, GROUP)
    return int(summary["pending"])


def dying_reader(read: list[str]) -> Apply[escalation_pb2.ReportPageOutRequest]:
    """A reader that dies applying each report it reads (the user goes in `read`): the
    reports stay pending for another to take over."""

    async def dies(request: escalation_pb2.ReportPageOutRequest, traceparent: str) -> None:
        read.append(request.user_id)
        raise RuntimeError("the escalation process died while applying the report")

    return dies


async def test_a_queued_report_releases_the_next_level_in_the_pages_trace(
    any_stack: FullStack, spans: InMemorySpanExporter
) -> None:
    stack = any_stack
    await people(stack)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))
    await trigger(stack)
    await stack.pager.expect_sms("bob")
    assert await pending(stack) == 0  # read and applied

    finished = list(spans.get_finished_spans())
    assert not [s for s in finished if s.name.endswith("/ReportPageOut")]  # no RPC
    (sent,) = [s for s in finished if s.name == "notification.send"]
    (applied,) = [s for s in finished if s.name == "escalation.page_out"]
    assert sent.context is not None and applied.context is not None
    assert applied.context.trace_id == sent.context.trace_id
    # Its parent: on one Redis server the report goes with SENT, under the Notify's
    # span (as the send); on a Cluster after it, under notification.page_out.
    assert applied.parent is not None
    parent = "notification.page_out" if isinstance(stack.paging.redis, RedisCluster) else None
    expected = sent.parent.span_id if parent is None and sent.parent else None
    if parent is not None:
        (reporting,) = [s for s in finished if s.name == parent]
        assert reporting.context is not None
        expected = reporting.context.span_id
    assert applied.parent.span_id == expected

    await stack.tick(minutes=4, seconds=59)  # carol's delay counts from bob's page
    await stack.pager.expect_no_more_pages()
    await stack.tick(seconds=1)
    await stack.pager.expect_sms("carol")
    await stack.tick(minutes=30)
    await stack.pager.expect_no_more_pages()


async def test_a_report_its_reader_could_not_apply_is_taken_over_and_releases_the_level(
    any_stack: FullStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = any_stack
    await people(stack)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))
    engine = stack.escalation.engine
    assert engine is not None
    read: list[str] = []
    dies = dying_reader(read)
    dying = ReportOutboxConsumer(stack.paging.redis, dies, "escalation-dying")
    monkeypatch.setattr(stack.escalation, "reports", dying)
    await trigger(stack)
    await stack.pager.expect_sms("bob")
    assert read == ["bob"]
    assert await pending(stack) == 1  # read, never applied: still owed

    heir = ReportOutboxConsumer(
        stack.paging.redis, engine.apply_page_out_report, "escalation-heir", claim_idle_ms=0
    )
    assert await heir.claim_stale() == 1
    assert await pending(stack) == 0
    await stack.tick(minutes=4, seconds=59)  # from bob's page, not held to the bound
    await stack.pager.expect_no_more_pages()
    await stack.tick(seconds=1)
    await stack.pager.expect_sms("carol")


async def test_reports_read_together_are_written_in_one_round_trip(
    any_stack: FullStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = any_stack
    await people(stack)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))
    engine = stack.escalation.engine
    assert engine is not None
    dies = dying_reader([])
    monkeypatch.setattr(
        stack.escalation, "reports", ReportOutboxConsumer(stack.paging.redis, dies, "dying")
    )
    for disk in ("db1", "db2", "db3"):
        await trigger(stack, f"disk full on {disk}")
        await stack.pager.expect_sms("bob", disk)
    assert await pending(stack) == 3

    together = engine.store._write_together
    batches: list[int] = []
    send = together._send

    async def counted(batch: list[Any]) -> None:
        batches.append(len(batch))
        await send(batch)

    monkeypatch.setattr(together, "_send", counted)
    heir = ReportOutboxConsumer(
        stack.paging.redis, engine.apply_page_out_report, "heir", claim_idle_ms=0
    )
    assert await heir.claim_stale() == 3  # one read: applied concurrently
    # on one server their writes share one pipeline; a Cluster's go alone (redis-py
    # refuses scripts in a Cluster pipeline)
    assert batches == ([] if isinstance(stack.paging.redis, RedisCluster) else [3])
    await stack.tick(minutes=4, seconds=59)  # each level from its own page
    await stack.pager.expect_no_more_pages()
    await stack.tick(seconds=1)
    pages = [await stack.pager.expect_sms("carol") for _ in range(3)]  # in any order
    assert sorted((page.body or "").split(" - ")[0][-3:] for page in pages) == [
        "db1",
        "db2",
        "db3",
    ]
    await stack.pager.expect_no_more_pages()
