"""Overdue levels after a restart: escalation comes up before scheduling and notification
listen. Its calls to them wait for the peer (gRPC wait_for_ready, inside a deadline) and
the overdue page goes out within about a second of the peers being up, without an ERROR
in the log; a hop whose Notify still failed (UNAVAILABLE, or the deadline passed) is
offered again after a short backoff, not after its 15 s lease.

Real time is spent here only on peers starting (a few hundred milliseconds); escalation
delays are a ManualClock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator

import pytest

from tests.escalation.stack import FullStack, schedule, user
from tests.notification.stack import ALICE, BOB, SMS
from tests.services import LOOPBACK_ANY_PORT
from tocsin.escalation import engine as escalation_engine
from tocsin.escalation import server as escalation_server
from tocsin.escalation.server import EscalationProcess
from tocsin.escalation.store import hop_timer_id
from tocsin.notification import server as notification_server
from tocsin.runtime.config import Address, load_config
from tocsin.runtime.events import incident_shard
from tocsin.runtime.service import RunningService, ServiceDeps
from tocsin.scheduling import server as scheduling_server

PEERS_DOWN_S = 0.3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def escalation_before_its_peers(
    stack: FullStack, scheduling_port: int, notification_port: int
) -> AsyncIterator[EscalationProcess]:
    """A second escalation process (no background tasks) whose scheduling and
    notification are at ports nothing listens on yet."""
    env = {
        "TOCSIN_SCHEDULING_ADDR": f"127.0.0.1:{scheduling_port}",
        "TOCSIN_INCIDENTS_ADDR": stack.client.endpoints.incidents,
        "TOCSIN_NOTIFICATION_ADDR": f"127.0.0.1:{notification_port}",
    }
    deps = ServiceDeps(load_config(env), stack.paging.redis, stack.paging.clock)
    running, _ = await escalation_server.create_server(deps, LOOPBACK_ANY_PORT, background=False)
    assert isinstance(running, EscalationProcess)
    try:
        yield running
    finally:
        await running.stop(0)
        if deps.peers is not None:
            await deps.peers.close()


async def start_peers(
    stack: FullStack, scheduling_port: int, notification_port: int
) -> list[RunningService]:
    """Scheduling and notification, as a restarted stack brings them up."""
    config = stack.paging.config
    deps = ServiceDeps(config, stack.paging.redis, stack.paging.clock)
    scheduling, _ = await scheduling_server.create_server(
        deps, Address("127.0.0.1", scheduling_port)
    )
    notification, _ = await notification_server.create_server(
        ServiceDeps(config, stack.paging.redis, stack.paging.clock),
        Address("127.0.0.1", notification_port),
        background=False,
    )
    return [scheduling, notification]


async def overdue_second_level(stack: FullStack) -> str:
    """alice paged at level 1; level 2 (the `secondary` schedule: bob) is due now."""
    await stack.paging.add_user("alice", ALICE, [(SMS, 0)])
    await stack.paging.add_user("bob", BOB, [(SMS, 0)])
    await stack.schedule("secondary", ["bob"])
    await stack.policy(([user("alice")], 5), ([schedule("secondary")], 5))
    incident_id = await stack.paging.trigger("disk full on db1", mirror=False)
    await stack.run_until_quiet()
    await stack.pager.expect_sms("alice", "disk full on db1")
    stack.paging.clock.advance(minutes=5)  # overdue; nobody fires it yet
    return incident_id


async def test_an_overdue_level_pages_within_a_second_of_its_peers_starting(
    stack: FullStack, caplog: pytest.LogCaptureFixture
) -> None:
    await overdue_second_level(stack)
    scheduling_port, notification_port = free_port(), free_port()
    peers: list[RunningService] = []
    caplog.set_level(logging.INFO)
    async with escalation_before_its_peers(stack, scheduling_port, notification_port) as early:
        assert early.worker is not None
        firing = asyncio.create_task(early.worker.run_once())
        await asyncio.sleep(PEERS_DOWN_S)  # the peers are still starting
        assert not firing.done()
        try:
            peers = await start_peers(stack, scheduling_port, notification_port)
            up = time.monotonic()
            assert await asyncio.wait_for(firing, 5) == 1
            await stack.paging.settle()
            await stack.pager.expect_sms("bob", "disk full on db1")
            assert time.monotonic() - up < 2.0
        finally:
            for peer in peers:
                await peer.stop(0)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) <= 1, warnings


async def test_a_hop_whose_notify_failed_is_offered_again_after_a_short_backoff(
    stack: FullStack, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """notification stays down past the call's deadline: the level fires (scheduling is
    up), its hop's Notify fails, and the hop is due again within seconds, not in flight
    for its 15 s lease."""
    incident_id = await overdue_second_level(stack)
    hop = hop_timer_id(incident_id, 0, 1, 0)
    monkeypatch.setattr(escalation_engine, "PEER_DEADLINE_S", 0.3)
    scheduling_port, notification_port = free_port(), free_port()
    deps = ServiceDeps(stack.paging.config, stack.paging.redis, stack.paging.clock)
    scheduling, _ = await scheduling_server.create_server(
        deps, Address("127.0.0.1", scheduling_port)
    )
    notification: RunningService | None = None
    caplog.set_level(logging.INFO)
    try:
        async with escalation_before_its_peers(stack, scheduling_port, notification_port) as early:
            assert early.worker is not None and early.engine is not None
            assert await early.worker.run_once() == 1  # the level fired; its Notify did not
            await stack.pager.expect_no_more_pages()

            timers = early.engine.store.timers
            shard = incident_shard(incident_id)
            due = await timers.next_due_ms(shard)
            assert due is not None
            assert due - stack.paging.clock.now_ms() <= escalation_engine.PEER_RETRY_MS
            assert await timers.claim(hop, shard, 1000) is None  # not due yet: waiting

            retry_s = escalation_engine.PEER_RETRY_MS / 1000
            stack.paging.clock.advance(seconds=retry_s)
            assert await early.worker.run_once() == 1  # still down: given back again
            assert await timers.claim(hop, shard, 1000) is None

            notification, _ = await notification_server.create_server(
                ServiceDeps(stack.paging.config, stack.paging.redis, stack.paging.clock),
                Address("127.0.0.1", notification_port),
                background=False,
            )
            monkeypatch.undo()  # the normal deadline outlasts the reconnect backoff (1 s)
            stack.paging.clock.advance(seconds=retry_s)
            assert await early.worker.run_once() == 1
            await stack.paging.settle()
            await stack.pager.expect_sms("bob", "disk full on db1")
    finally:
        if notification is not None:
            await notification.stop(0)
        await scheduling.stop(0)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]
    # (the notification started here knows no escalation to report bob's page out to)
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "tocsin.escalation.engine"
    ]
    # two failed tries, one WARNING (then one per PEER_LOG_EVERY_S)
    assert [hop in r.getMessage() and "retried" in r.getMessage() for r in warnings] == [True]
