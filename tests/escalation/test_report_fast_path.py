"""A page reported out to the escalation process that fired its level (notification's
ReportPageOut, the usual case with one escalation replica): the report and the release
of the next level are one script (`write_escalation.lua` with `out_user`), not a read
and then a write. On the standalone server and the 3-master Redis Cluster. The next level
still counts its delay from the page, a racing writer sends the report down the path that
reads, and a repeated report moves nothing."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

import pytest

from tests.escalation.stack import FullStack, user
from tests.escalation.test_escalation import people, trigger
from tests.redis_wire import recording
from tocsin.escalation.domain import idempotency_key


def report_reads() -> AbstractContextManager[list[list[bytes]]]:
    """The reported-out hashes read (the path that reads: HSETNX then HGETALL in one
    transaction) while inside."""
    return recording(
        lambda args: len(args) == 2 and args[0].upper() == b"HGETALL" and b":esc-out:" in args[1]
    )


async def test_a_report_to_the_process_that_fired_the_level_is_one_script(
    any_stack: FullStack,
) -> None:
    stack = any_stack
    await people(stack)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))
    with report_reads() as reads:
        incident_id = await trigger(stack)
        await stack.pager.expect_sms("bob")
    assert reads == []
    escalation = await stack.escalation_of(incident_id)
    assert escalation.HasField("next_fire_at")

    await stack.tick(minutes=4, seconds=59)  # carol's delay counts from bob's page
    await stack.pager.expect_no_more_pages()
    await stack.tick(seconds=1)
    await stack.pager.expect_sms("carol")


async def test_a_fast_report_that_loses_its_write_reads_again_and_releases_the_level(
    any_stack: FullStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = any_stack
    await people(stack)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))
    assert stack.escalation.engine is not None
    store = stack.escalation.engine.store
    report_and_write = store.report_and_write
    raced: list[str] = []

    async def racing(state: Any, expected: int, *args: Any, **kwargs: Any) -> str:
        current, traceparent = await store.load_for_report(state.incident_id)
        assert current is not None and current.version == expected
        bumped = replace(current, version=current.version + 1)  # another writer first
        assert await store.write(bumped, current.version, traceparent=traceparent)
        outcome = await report_and_write(state, expected, *args, **kwargs)
        raced.append(outcome)
        return outcome

    monkeypatch.setattr(store, "report_and_write", racing)
    with report_reads() as reads:
        await trigger(stack)
        await stack.pager.expect_sms("bob")
    assert raced == ["conflict"]
    assert len(reads) == 1  # then the path that reads, once

    await stack.tick(minutes=4, seconds=59)
    await stack.pager.expect_no_more_pages()
    await stack.tick(seconds=1)
    await stack.pager.expect_sms("carol")


async def test_a_repeated_report_moves_nothing(any_stack: FullStack) -> None:
    stack = any_stack
    await people(stack)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))
    engine = stack.escalation.engine
    assert engine is not None
    incident_id = await trigger(stack)
    await stack.pager.expect_sms("bob")
    released = await stack.escalation_of(incident_id)
    key = idempotency_key(incident_id, 0, 0, 0, "bob")
    assert not await engine.report_page_out(incident_id, "bob", key, None)
    again = await stack.escalation_of(incident_id)
    assert (again.version, again.next_fire_at) == (released.version, released.next_fire_at)
    await stack.tick(minutes=5)
    await stack.pager.expect_sms("carol")
