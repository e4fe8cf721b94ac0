"""The history service as it runs: its background consumer and timeline copier under
`runtime.loops`, on a standalone Redis and on a 3-master Redis Cluster. Events reach the
archive without anyone draining by hand; an incidents service that cannot be reached
makes the copier fail, which the process's health reports instead of hiding."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.incidents.harness import create_payments, serve_incidents, trigger_request
from tests.services import LOOPBACK_ANY_PORT
from tocsin.history import server as history_server
from tocsin.runtime.clock import ManualClock, SystemClock
from tocsin.runtime.config import load_config
from tocsin.runtime.events import EVENT_FIELD, incident_stream
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.service import ServiceDeps
from tocsin.v1 import common_pb2, incidents_pb2


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "never happened"
        await asyncio.sleep(0.05)


async def test_background_loops_archive_and_report_failures(
    any_redis: RedisClient, tmp_path: Path
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        await _scenario(stack, any_redis, tmp_path)


async def _scenario(stack: contextlib.AsyncExitStack, redis: RedisClient, tmp_path: Path) -> None:
    async with serve_incidents(redis, ManualClock()) as incidents:
        await create_payments(incidents.stub)
        env = {
            "TOCSIN_INCIDENTS_ADDR": incidents.target,
            "TOCSIN_DATABASE_URL": f"sqlite:///{tmp_path / 'archive.sqlite3'}",
            "TOCSIN_ARCHIVE_RETENTION": "730d",
        }
        deps = ServiceDeps(load_config(env), redis, SystemClock())
        running, _ = await history_server.create_server(deps, LOOPBACK_ANY_PORT)
        stack.push_async_callback(_close_peers, deps)
        stack.push_async_callback(running.stop, 0)
        store = running.parts.store
        opened = await incidents.stub.Trigger(trigger_request("disk full on db9"))
        incident_id = opened.incident.id
        actor = common_pb2.Actor(user_id="alice")
        await incidents.stub.Acknowledge(
            incidents_pb2.AcknowledgeRequest(incident_id=incident_id, actor=actor)
        )

        async def archived_with_timeline() -> bool:
            row = await store.incident(incident_id)
            if row is None or row.first_response_ms is None or row.sync_due:
                return False
            _, entries, _, _ = await store.details(incident_id)
            return len(entries) == 2  # triggered, acknowledged

        await eventually(archived_with_timeline)
        assert running.workers.healthy, running.workers.problems()
        names = {
            "history consumer",
            "history timeline copier",
            "history retention sweep",
            "history trim watch",
        }
        assert names <= {task.get_name() for task in running.tasks}
        incident = await store.incident(incident_id)

    # incidents is gone: a note event (as incidents would write it) makes the copier ask
    # it for the timeline, which fails, and health says so.
    assert incident is not None
    running.workers.fail_after_s = 0.2
    note = incidents_pb2.IncidentEvent(
        kind=incidents_pb2.INCIDENT_EVENT_KIND_NOTE_ADDED,
        incident=incidents_pb2.Incident.FromString(incident.proto),
        note="looking at db9",
    )
    note.incident.version += 1
    await redis.xadd(incident_stream(note.incident), {EVENT_FIELD: note.SerializeToString()})

    async def unhealthy() -> bool:
        return any("timeline copier" in p for p in running.workers.problems())

    await eventually(unhealthy)
    notes = await store.notes([int(incident_id)], None)
    assert [n.note for n in notes[int(incident_id)]] == ["looking at db9"]


async def _close_peers(deps: ServiceDeps) -> None:
    if deps.peers is not None:
        await deps.peers.close()
