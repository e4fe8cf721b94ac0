"""Starting an escalation from the process's copy of the policies (policy_cache.py), on
the standalone server and on the 3-master Redis Cluster: with a fresh copy nothing is
read before the write that fires level 0; a change through this process is used at
once, one through another replica after the next check, and a copy whose checks stopped
is not used past its lifetime. A repeated TRIGGERED event still pages nobody twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractContextManager

import pytest

from tests.escalation.stack import FullStack, user
from tests.escalation.test_on_call_cache import rotation_stack
from tests.redis_wire import recording
from tests.runtime.test_loops import eventually
from tests.services import LOOPBACK_ANY_PORT
from tocsin.escalation import policy_cache
from tocsin.escalation import server as escalation_server
from tocsin.escalation.policy_cache import PolicyCache
from tocsin.escalation.server import EscalationProcess
from tocsin.escalation.store import EscalationStore
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.service import ServiceDeps
from tocsin.v1 import escalation_pb2, incidents_pb2, scheduling_pb2


@pytest.fixture
async def stack(any_redis: RedisClient) -> AsyncIterator[FullStack]:
    async for full in rotation_stack(any_redis):
        yield full


def copy_of(stack: FullStack) -> PolicyCache:
    assert stack.escalation.engine is not None
    return stack.escalation.engine.store.policies


def other_replica(stack: FullStack) -> EscalationStore:
    return EscalationStore(stack.paging.redis, stack.paging.clock, 86_400_000)


def level0_is(targets: list[escalation_pb2.EscalationTarget]) -> escalation_pb2.EscalationPolicy:
    return escalation_pb2.EscalationPolicy(
        id="payments",
        name="Payments",
        levels=[escalation_pb2.EscalationLevel(targets=targets)],
    )


def start_reads() -> AbstractContextManager[list[list[bytes]]]:
    """The reads of a policy or of an escalation's existence sent while inside."""
    return recording(
        lambda args: (
            len(args) == 2
            and (
                (args[0].upper() == b"HGET" and b"{policies}" in args[1])
                or (args[0].upper() == b"EXISTS" and b":esc:" in args[1])
            )
        )
    )


async def page(stack: FullStack, summary: str) -> str:
    incident_id = await stack.paging.trigger(summary, mirror=False)
    await stack.run_until_quiet()
    return incident_id


async def test_with_a_fresh_copy_a_start_reads_nothing_before_its_write(
    stack: FullStack,
) -> None:
    with start_reads() as reads:
        await page(stack, "disk full on db1")
    await stack.pager.expect_sms("bob", "disk full on db1")
    assert reads, "without a copy the start reads the policy and whether it started"

    assert await copy_of(stack).refresh()
    with start_reads() as reads:
        await page(stack, "disk full on db2")
    await stack.pager.expect_sms("bob", "disk full on db2")
    assert reads == []


async def test_a_repeated_triggered_event_pages_nobody_twice(stack: FullStack) -> None:
    await copy_of(stack).refresh()
    incident_id = await page(stack, "disk full on db1")
    await stack.pager.expect_sms("bob", "disk full on db1")
    incident = (
        await stack.client.incidents.GetIncident(
            incidents_pb2.GetIncidentRequest(incident_id=incident_id)
        )
    ).incident
    before = await stack.escalation_of(incident_id)
    assert stack.escalation.engine is not None
    await stack.escalation.engine.begin(incident, "")  # the event delivered again
    await stack.run_until_quiet()
    after = await stack.escalation_of(incident_id)
    assert (after.level, after.version, len(after.pages)) == (0, before.version, 1)
    # the stack's fixture fails on any page not expected: nobody was paged again


async def test_a_change_through_this_process_is_used_at_once(stack: FullStack) -> None:
    await copy_of(stack).refresh()
    await stack.policy(([user("carol")], 5), replace=True)
    await page(stack, "disk full on db1")
    await stack.pager.expect_sms("carol", "disk full on db1")


async def test_a_change_through_another_replica_is_used_after_the_next_check(
    stack: FullStack,
) -> None:
    copy = copy_of(stack)
    assert await copy.refresh()
    assert not await copy.refresh()  # nothing changed: two GETs, nothing read again
    elsewhere = other_replica(stack)
    await elsewhere.update_policy(level0_is([user("carol")]))
    assert await copy.refresh()
    await page(stack, "disk full on db1")
    await stack.pager.expect_sms("carol", "disk full on db1")

    await elsewhere.delete_policy("payments")
    await copy.refresh()
    assert copy.get("payments", stack.paging.clock.now_ms()) is None


async def test_a_copy_not_checked_for_its_lifetime_is_not_used(stack: FullStack) -> None:
    copy = copy_of(stack)
    await copy.refresh()
    await other_replica(stack).update_policy(level0_is([user("carol")]))
    # the checks stopped (Redis away, the loop backing off): one lifetime later the
    # start reads the policy on its path again
    stack.paging.clock.advance(seconds=policy_cache.TTL_MS / 1000)
    with start_reads() as reads:
        await page(stack, "disk full on db1")
    assert reads
    await stack.pager.expect_sms("carol", "disk full on db1")


async def test_a_schedule_change_is_used_after_the_next_check(stack: FullStack) -> None:
    copy = copy_of(stack)
    await copy.refresh()
    await page(stack, "disk full on db1")  # scheduling asked once, its answer remembered
    await stack.pager.expect_sms("bob", "disk full on db1")
    override = scheduling_pb2.Override(user_id="alice")
    now = stack.paging.clock.now()
    override.start.FromDatetime(now)
    override.end.FromSeconds(int(now.timestamp()) + 3600)
    await stack.client.scheduling.CreateOverride(
        scheduling_pb2.CreateOverrideRequest(schedule_id="primary", override=override)
    )
    assert not await copy.refresh()  # no policy changed; the revision is read again
    await page(stack, "disk full on db2")
    await stack.pager.expect_sms("alice", "disk full on db2")


async def test_a_check_a_write_here_overtook_is_not_kept(
    stack: FullStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = copy_of(stack)
    store = copy.store
    read_all = store.all_policies

    async def overtaken() -> dict[str, escalation_pb2.EscalationPolicy]:
        policies = await read_all()  # the policy as it was...
        await store.update_policy(level0_is([user("carol")]))  # ...then changed here
        return policies

    monkeypatch.setattr(store, "all_policies", overtaken)
    await copy.refresh()
    monkeypatch.setattr(store, "all_policies", read_all)
    assert copy.get("payments", stack.paging.clock.now_ms()) is None  # never checked
    await copy.refresh()
    got = copy.get("payments", stack.paging.clock.now_ms())
    assert got is not None and got[0].levels[0].targets[0].user_id == "carol"


async def test_the_server_keeps_the_copy_fresh_and_reports_a_failing_check(
    stack: FullStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    deps = ServiceDeps(stack.paging.config, stack.paging.redis, stack.paging.clock, stack.client)
    running, _ = await escalation_server.create_server(deps, LOOPBACK_ANY_PORT)
    assert isinstance(running, EscalationProcess) and running.engine is not None
    running.workers.fail_after_s = 0.3
    copy = running.engine.store.policies
    now_ms = stack.paging.clock.now_ms

    def first_is(user_id: str) -> bool:
        got = copy.get("payments", now_ms())
        return got is not None and got[0].levels[0].targets[0].user_id == user_id

    try:
        await other_replica(stack).update_policy(level0_is([user("carol")]))
        await eventually(lambda: first_is("carol"))
        assert running.workers.healthy

        async def away() -> bytes | None:
            raise ConnectionError("Redis is away")

        monkeypatch.setattr(copy.store, "policy_generation", away)
        await eventually(lambda: any("policy cache" in p for p in running.workers.problems()))
        stack.paging.clock.advance(seconds=policy_cache.TTL_MS / 1000)
        assert copy.get("payments", now_ms()) is None  # starts read on their path again

        monkeypatch.undo()
        await eventually(lambda: first_is("carol"))
        await eventually(lambda: running.workers.healthy)
    finally:
        await running.stop(0)
