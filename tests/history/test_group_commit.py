"""The consumer's group commit: concurrent handlers share a transaction, each returns only
once its own event is committed, and one event the database refuses fails alone (the
others of its batch are written), so it cannot drag innocent events to the dead letters."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.history.databases import postgres_database
from tocsin.history.archiver import GROUP, Archiver, GroupCommit
from tocsin.history.server import history_consumer
from tocsin.history.store import ArchiveStore, SearchFilters
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.events import EVENT_FIELD, ensure_groups, lane_of, stream_key
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import incidents_pb2


def event(n: int, alert_id: str = "1") -> incidents_pb2.IncidentEvent:
    e = incidents_pb2.IncidentEvent(
        kind=incidents_pb2.INCIDENT_EVENT_KIND_TRIGGERED,
        event_id=f"1700000000000-{n}",
        alert=incidents_pb2.Alert(id=alert_id, summary=f"alert {n}"),
    )
    e.incident.id = str(16 * n)
    e.incident.service_id = "payments-api"
    e.incident.summary = f"disk full on db{n}"
    e.incident.version = 1
    e.at.FromMilliseconds(1_700_000_000_000 + n)
    e.incident.created_at.CopyFrom(e.at)
    return e


async def test_a_refused_event_fails_alone() -> None:
    async with postgres_database() as url:
        store = ArchiveStore(url)
        await store.migrate()
        try:
            writes = GroupCommit(store)
            # service ids are at most 64 characters in the archive: PostgreSQL refuses it
            refused = event(2)
            refused.incident.service_id = "s" * 70
            events = [event(1), refused, event(3)]
            results = await asyncio.gather(
                *(writes.write(e) for e in events), return_exceptions=True
            )
            assert results[0] is None and results[2] is None
            assert isinstance(results[1], Exception)
            rows = (await store.dump())["incidents"]
            assert sorted(r[0] for r in rows) == [16, 48]
            hits = await store.search("disk", SearchFilters(), newest_first=True, limit=10)
            assert [h.row.id for h in hits] == [48, 16]
        finally:
            await store.close()


@pytest.mark.parametrize("count", [1, 40])
async def test_concurrent_writers_each_see_their_commit(tmp_path: Path, count: int) -> None:
    store = ArchiveStore(f"sqlite:///{tmp_path / 'a.sqlite3'}")
    await store.migrate()
    try:
        writes = GroupCommit(store)

        async def write_and_check(n: int) -> None:
            await writes.write(event(n))
            assert await store.incident(str(16 * n)) is not None  # committed when it returns

        await asyncio.gather(*(write_and_check(n) for n in range(count)))
        assert len((await store.dump())["events"]) == count
    finally:
        await store.close()


async def test_a_storm_keeps_the_first_thousand_alerts(tmp_path: Path) -> None:
    store = ArchiveStore(f"sqlite:///{tmp_path / 'a.sqlite3'}")
    await store.migrate()
    try:
        batch = []
        for n in (1, 1000, 1001, 250_000):
            e = event(1, alert_id=str(n))
            e.event_id = f"1700000000000-{n}"
            e.incident.version = n
            e.incident.alert_count = n
            batch.append(e)
        await store.apply_many(batch)
        dump = await store.dump()
        assert [row[1] for row in dump["alerts"]] == ["1", "1000"]
        assert len(dump["events"]) == 4
        row = await store.incident("16")
        assert row is not None and row.version == 250_000
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_batch_reuses_compiled_statements(tmp_path: Path, backend: str) -> None:
    """Writing a batch compiles nothing once batches of that shape were written: every
    statement comes from SQLAlchemy's compiled cache (a multi-row VALUES upsert cannot be
    cached, and compiling it each time was a quarter of the archive's CPU per event)."""
    async with contextlib.AsyncExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'a.sqlite3'}"
        else:
            url = await stack.enter_async_context(postgres_database())
        store = ArchiveStore(url)
        await store.migrate()
        stack.push_async_callback(store.close)
        seen: list[tuple[str, str]] = []

        def record(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
            context = rest[-2]
            seen.append((str(getattr(context, "cache_hit", "")), statement.split()[0]))

        await store.apply_many([event(1), event(2)])  # the shapes, compiled once
        await store.apply_many([event(3)])
        sa.event.listen(store.engine.sync_engine, "after_cursor_execute", record)
        await store.apply_many([event(4), event(5)])
        await store.apply_many([event(6)])
        statements = [s for s in seen if s[1].upper() not in ("BEGIN", "COMMIT")]
        assert len(statements) >= 8
        assert [s for s in statements if "CACHE_HIT" not in s[0]] == []
        assert len((await store.dump())["incidents"]) == 6


async def test_a_lanes_events_share_transactions_each_incidents_in_order(
    tmp_path: Path, any_redis: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The history consumer as the service builds it hands a lane's entries of different
    incidents to the group commit together: 24 events of 8 incidents on one lane take a few
    transactions, not 24 (one at a time, each entry waited for the previous one's commit),
    and each incident's events are still archived in stream order."""
    store = ArchiveStore(f"sqlite:///{tmp_path / 'a.sqlite3'}")
    await store.migrate()
    transactions: list[list[tuple[str, int]]] = []
    all_written = asyncio.Event()
    apply_many = store.apply_many

    async def counted(batch_in: Iterable[incidents_pb2.IncidentEvent]) -> int:
        batch = list(batch_in)
        transactions.append([(e.incident.id, e.incident.version) for e in batch])
        written = await apply_many(batch)
        if sum(len(t) for t in transactions) >= 24:
            all_written.set()
        return written

    monkeypatch.setattr(store, "apply_many", counted)
    await ensure_groups(any_redis, [GROUP], "0")
    incidents = [str(16 * n) for n in range(1, 9)]  # shard 0, one service: one lane
    for version in (1, 2, 3):
        for incident in incidents:
            e = event(int(incident) // 16)
            e.event_id = ""
            e.incident.version = version
            await any_redis.xadd(
                stream_key(0, lane_of("payments-api")), {EVENT_FIELD: e.SerializeToString()}
            )
    no_peers: Any = lambda: None  # noqa: E731 - the consumer path calls no peer
    archiver = Archiver(store, any_redis, no_peers, ManualClock(1_700_000_000_000))
    consumer = history_consumer(any_redis, archiver.handle, "history-test")
    stop = asyncio.Event()
    run = asyncio.create_task(consumer.run(stop))
    try:
        async with asyncio.timeout(20):
            await all_written.wait()
    finally:
        stop.set()
        await run
        await store.close()
    assert sum(len(t) for t in transactions) == 24
    assert len(transactions) <= 6, transactions
    for incident in incidents:
        versions = [v for t in transactions for i, v in t if i == incident]
        assert versions == [1, 2, 3]


async def test_a_window_gathers_writers_that_come_apart(tmp_path: Path) -> None:
    """Writers arriving 50 ms apart share one transaction with a 300 ms window; without
    a window they do not. Each still returns only once its own event is
    committed."""
    store = ArchiveStore(f"sqlite:///{tmp_path / 'a.sqlite3'}")
    await store.migrate()
    try:
        for window_s in (0.3, 0.0):
            writes = GroupCommit(store, window_s)
            base = 10 if window_s else 20

            async def write_later(n: int, writes: GroupCommit = writes, base: int = base) -> None:
                await asyncio.sleep(0.05 * (n - base))
                await writes.write(event(n))
                assert await store.incident(str(16 * n)) is not None

            await asyncio.gather(*(write_later(n) for n in range(base, base + 4)))
            assert (writes.transactions == 1) == (window_s > 0), writes.transactions
    finally:
        await store.close()
