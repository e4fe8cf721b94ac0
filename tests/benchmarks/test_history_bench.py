"""The incident archive's speed, on SQLite and on PostgreSQL.

- Write throughput: events per second written as the consumer's handler writes them
  (`GroupCommit`: each writer waits for its event's commit, concurrent ones share a
  transaction), from 16 concurrent writers (the consumer runs one loop per incident
  shard); each incident gets 5 events (triggered, a second alert,
  acknowledged, a note, resolved).
- Search latency over a large archive: `TOCSIN_BENCH_ARCHIVE_INCIDENTS` incidents
  (default 20,000 so that CI's smoke run stays short; the README's figures are from
  1,000,000), bulk-inserted (executemany on SQLite, COPY on PostgreSQL) with generated
  text, then p50/p99 of `ArchiveStore.search` for a rare word, a common word (about one
  incident in ten) by relevance and newest first, three words, and a word with a service
  filter.

Run: `.venv/bin/pytest tests/benchmarks/test_history_bench.py --benchmark-enable -s`
(`TOCSIN_BENCH_ARCHIVE_INCIDENTS=1000000` for an archive of a million; the README's figures
come from `python -m loadtests.history_search`, which loads one once and measures it
separately). PostgreSQL as for
tests/history (`TOCSIN_TEST_POSTGRES_URL`). Nothing here asserts on time.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from loadtests.history_search import START_MS, bulk_insert, generate, measure
from tests.history.databases import database
from tocsin.history.archiver import GroupCommit
from tocsin.history.store import ArchiveStore
from tocsin.v1 import common_pb2, incidents_pb2

pytestmark = pytest.mark.benchmark

ARCHIVE_SIZE = int(os.environ.get("TOCSIN_BENCH_ARCHIVE_INCIDENTS", "20000"))
WRITE_INCIDENTS = int(os.environ.get("TOCSIN_BENCH_ARCHIVE_WRITES", "400"))
WRITERS = 16
QUERIES = int(os.environ.get("TOCSIN_BENCH_SEARCH_QUERIES", "100"))


@asynccontextmanager
async def _store(kind: str, tmp_path: Path) -> AsyncIterator[ArchiveStore]:
    async with database(kind, tmp_path) as url:
        store = ArchiveStore(url)
        await store.migrate()
        try:
            yield store
        finally:
            await store.close()


def _events(n: int) -> list[incidents_pb2.IncidentEvent]:
    incident = incidents_pb2.Incident(
        id=str(16 * n + 3), service_id="payments-api", dedup_key=f"k{n}", version=1
    )
    incident.summary = f"checkout latency high on api-{n}"
    incident.created_at.FromMilliseconds(START_MS + n * 1000)
    incident.updated_at.CopyFrom(incident.created_at)
    alert = incidents_pb2.Alert(id="1", summary=incident.summary, source=f"api-{n}")
    alert.received_at.CopyFrom(incident.created_at)
    out = []
    actor = common_pb2.Actor(user_id="alice")
    steps: list[tuple[incidents_pb2.IncidentEventKind.ValueType, dict[str, Any]]] = [
        (incidents_pb2.INCIDENT_EVENT_KIND_TRIGGERED, {"alert": alert}),
        (
            incidents_pb2.INCIDENT_EVENT_KIND_ALERT_ADDED,
            {"alert": incidents_pb2.Alert(id="2", summary="p99 above 2s", source="lb")},
        ),
        (incidents_pb2.INCIDENT_EVENT_KIND_ACKNOWLEDGED, {"actor": actor}),
        (incidents_pb2.INCIDENT_EVENT_KIND_NOTE_ADDED, {"actor": actor, "note": "rolled back"}),
        (incidents_pb2.INCIDENT_EVENT_KIND_RESOLVED, {"actor": actor}),
    ]
    for version, (kind, fields) in enumerate(steps, start=1):
        event = incidents_pb2.IncidentEvent(
            kind=kind, event_id=f"{START_MS + n}-{version}", **fields
        )
        event.incident.CopyFrom(incident)
        event.incident.version = version
        event.at.FromMilliseconds(START_MS + n * 1000 + version * 1000)
        if kind == incidents_pb2.INCIDENT_EVENT_KIND_RESOLVED:
            event.incident.status = incidents_pb2.INCIDENT_STATUS_RESOLVED
            event.incident.resolved_at.CopyFrom(event.at)
        out.append(event)
    return out


async def _write_throughput(kind: str, tmp_path: Path, incidents: int) -> dict[str, float]:
    async with _store(kind, tmp_path) as store:
        queues = [
            [e for n in range(w, incidents, WRITERS) for e in _events(n)] for w in range(WRITERS)
        ]
        total = sum(len(q) for q in queues)

        writes = GroupCommit(store)  # as the consumer's handler writes

        async def writer(queue: list[incidents_pb2.IncidentEvent]) -> None:
            for event in queue:
                await writes.write(event)

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(writer(q) for q in queues))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        replay_started = time.perf_counter()
        await asyncio.gather(*(writer(q) for q in queues))  # all already there
        replay = time.perf_counter() - replay_started
        return {
            "events": total,
            "events_per_second": round(total / elapsed),
            "writer_cpu_ms_per_event": round(cpu * 1000 / total, 2),
            "replayed_events_per_second": round(total / replay),
        }


async def _search_latency(kind: str, tmp_path: Path, size: int) -> dict[str, Any]:
    async with _store(kind, tmp_path) as store:
        started = time.perf_counter()
        await bulk_insert(store, generate(size))
        load_s = time.perf_counter() - started
        figures = await measure(store, QUERIES)
        return {"incidents": size, "load_s": round(load_s, 1), **figures}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_archive_write_throughput(benchmark: BenchmarkFixture, kind: str, tmp_path: Path) -> None:
    results: list[dict[str, float]] = []
    # Disabled (the test suite's smoke run): a tenth of the work, the same code.
    incidents = WRITE_INCIDENTS // 10 if benchmark.disabled else WRITE_INCIDENTS
    benchmark.pedantic(
        lambda: results.append(asyncio.run(_write_throughput(kind, tmp_path, incidents))),
        rounds=1,
        iterations=1,
    )
    benchmark.extra_info.update(results[0])
    print(f"\narchive writes on {kind}: {results[0]}")


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_search_latency(benchmark: BenchmarkFixture, kind: str, tmp_path: Path) -> None:
    results: list[dict[str, Any]] = []
    size = ARCHIVE_SIZE // 10 if benchmark.disabled else ARCHIVE_SIZE
    benchmark.pedantic(
        lambda: results.append(asyncio.run(_search_latency(kind, tmp_path, size))),
        rounds=1,
        iterations=1,
    )
    benchmark.extra_info.update(results[0])
    print(f"\nsearch on {kind}: {results[0]}")
