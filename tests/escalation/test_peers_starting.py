"""Overdue levels after a restart: escalation comes up before scheduling and notification
listen. Its calls to them wait for the peer (gRPC wait_for_ready, inside a deadline) and
the overdue page goes out within about a second of the peers being up, without an ERROR
in the log. A level fired while notification is down queues its page in the page stream
(runtime/page_outbox.py), where the notification that comes up finds it.

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
from tocsin.escalation import server as escalation_server
from tocsin.escalation.server import EscalationProcess
from tocsin.notification import server as notification_server
from tocsin.notification.server import NotificationService
from tocsin.runtime import page_outbox
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
            notification = peers[1]
            assert isinstance(notification, NotificationService)
            for pages in notification.pages:  # as its page consumers' blocking reads do
                await pages.drain_once()
            await notification.parts.sender.idle()
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


async def test_a_level_fired_while_notification_is_down_pages_once_it_is_up(
    stack: FullStack, caplog: pytest.LogCaptureFixture
) -> None:
    """notification is down when a level fires (scheduling is up): the level's page waits
    in its shard's page stream (runtime/page_outbox.py), escalation neither retries nor
    warns, and the notification process that comes up later sends it."""
    incident_id = await overdue_second_level(stack)
    scheduling_port, notification_port = free_port(), free_port()
    deps = ServiceDeps(stack.paging.config, stack.paging.redis, stack.paging.clock)
    scheduling, _ = await scheduling_server.create_server(
        deps, Address("127.0.0.1", scheduling_port)
    )
    notification: NotificationService | None = None
    caplog.set_level(logging.INFO)
    try:
        async with escalation_before_its_peers(stack, scheduling_port, notification_port) as early:
            assert early.worker is not None and early.engine is not None
            assert await early.worker.run_once() == 1  # the level fired, its page queued
            await stack.pager.expect_no_more_pages()
            shard = incident_shard(incident_id)
            assert await stack.paging.redis.xlen(page_outbox.stream_key(shard)) == 1
            assert await early.engine.store.timers.next_due_ms(shard) is not None  # level 3
            stack.paging.clock.advance(seconds=20)  # past any hop's lease: nothing to redo
            assert await early.worker.run_once() == 0

            started, _ = await notification_server.create_server(
                ServiceDeps(stack.paging.config, stack.paging.redis, stack.paging.clock),
                Address("127.0.0.1", notification_port),
                background=False,
            )
            assert isinstance(started, NotificationService)
            notification = started
            assert sum([await pages.drain_once() for pages in notification.pages]) == 1
            await notification.parts.sender.idle()
            await stack.paging.settle()
            await stack.pager.expect_sms("bob", "disk full on db1")
            assert await stack.paging.redis.xlen(page_outbox.stream_key(shard)) == 0
    finally:
        if notification is not None:
            await notification.stop(0)
        await scheduling.stop(0)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "tocsin.escalation.engine"
    ]
    assert warnings == []
