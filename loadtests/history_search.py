"""Search latency of the incident archive over a large generated archive (issue 16).

Two steps, so the heavy part (loading a million incidents) need not hold the machine's
benchmark lock, and a loaded archive can be measured again:

    python -m loadtests.history_search build --incidents 1000000 \
        --sqlite /tmp/archive-1m.sqlite3 --postgres postgresql://postgres@127.0.0.1/archive_1m
    python -m loadtests.history_search measure --queries 100 \
        --sqlite /tmp/archive-1m.sqlite3 --postgres postgresql://postgres@127.0.0.1/archive_1m

`build` creates the archive schema (the service's own Alembic migrations) and bulk-loads
generated incidents (executemany on SQLite, COPY on PostgreSQL; the PostgreSQL database
is created if missing); `measure` prints p50/p99 of `ArchiveStore.search` (the query the
SearchIncidents RPC runs) for a rare word, a common word by relevance and newest first,
three words, and a word with a service filter. tests/benchmarks/test_history_bench.py
runs the same on a small archive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tocsin.history.store import ArchiveStore, SearchFilters, incidents
from tocsin.v1 import incidents_pb2

START_MS = 1_735_689_600_000  # 2025-01-01
SPAN_MS = 2 * 365 * 86_400_000
SERVICES = [f"service-{n:02d}" for n in range(50)]
COMPONENTS = "api db cache queue worker gateway scheduler ingest search billing auth cdn".split()
PROBLEMS = (
    "latency high", "error rate above threshold", "pod restarting", "memory pressure",
    "connection pool exhausted", "replication lag", "certificate expires soon",
    "timeouts from upstream", "queue backlog growing", "5xx responses", "slow queries",
    "dns resolution failures", "health check failing", "cpu throttled", "oom killed",
)  # fmt: skip
NOTES = (
    "rolled back the deploy", "scaled out to 6 replicas", "failed over to the replica",
    "restarted the pods", "cleared the cache", "raised the connection limit",
    "upstream provider incident", "added an index", "false alarm, threshold tuned",
)  # fmt: skip
RARE = "certbot"
"""In about one incident in 10,000."""
COMMON = "disk"
"""In about one incident in 10."""


def _text(rng: random.Random, n: int) -> tuple[str, str]:
    component = rng.choice(COMPONENTS)
    summary = f"{component} {rng.choice(PROBLEMS)} on {component}-{rng.randrange(400)}"
    if rng.random() < 0.1:
        summary += f" {COMMON} usage {rng.randrange(80, 100)}%"
    note = rng.choice(NOTES)
    if n % 10_000 == 7:
        note = f"restarted {RARE} and reloaded nginx"
    return summary, note


def generate(count: int, seed: int = 2026) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for n in range(count):
        summary, note = _text(rng, n)
        created = START_MS + n * SPAN_MS // max(count, 1)
        incident = incidents_pb2.Incident(
            id=str(16 * n + n % 16), service_id=rng.choice(SERVICES), summary=summary
        )
        rows.append(
            {
                "id": 16 * n + n % 16,
                "service_id": incident.service_id,
                "dedup_key": f"key-{rng.randrange(5000)}",
                "status": incidents_pb2.INCIDENT_STATUS_RESOLVED,
                "severity": rng.choice([1, 2, 3, 4]),
                "summary": summary,
                "created_ms": created,
                "updated_ms": created + 600_000,
                "acknowledged_by": "alice",
                "resolved_ms": created + 600_000,
                "resolved_by": "alice",
                "first_response_ms": created + 60_000,
                "version": 3,
                "synced_version": 3,
                "sync_due": False,
                "recheck_ms": None,
                "search_text": f"{summary}\nhost-{rng.randrange(400)}\n{note}",
                "proto": incident.SerializeToString(),
            }
        )
    return rows


async def bulk_insert(store: ArchiveStore, rows: list[dict[str, Any]]) -> None:
    """Insert generated rows fast: COPY on PostgreSQL, the driver's executemany on SQLite."""
    columns = [c.name for c in incidents.columns]
    chunk = 20_000
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        async with store.engine.begin() as conn:
            raw = await conn.get_raw_connection()
            records = [tuple(r.get(c) for c in columns) for r in part]  # absent: NULL
            if store.dialect == "postgresql":
                await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
                    "incidents", records=records, columns=columns
                )
            else:
                marks = ", ".join("?" for _ in columns)
                await raw.driver_connection.executemany(  # type: ignore[union-attr]
                    f"INSERT INTO incidents ({', '.join(columns)}) VALUES ({marks})", records
                )
    if store.dialect == "postgresql":
        async with store.engine.begin() as conn:
            await conn.exec_driver_sql("ANALYZE incidents")


CASES: dict[str, tuple[str, SearchFilters, bool]] = {
    "rare word": (RARE, SearchFilters(), False),
    "common word, relevance": (COMMON, SearchFilters(), False),
    "common word, newest": (COMMON, SearchFilters(), True),
    "three words": ("replication lag db", SearchFilters(), False),
    "word + service": ("latency", SearchFilters(service_ids=["service-07"]), False),
}


async def measure(store: ArchiveStore, queries: int) -> dict[str, Any]:
    """p50/p99 (ms) and hits of each case, `queries` times each after one warm-up."""
    figures: dict[str, Any] = {}
    for name, (query, filters, newest) in CASES.items():
        await store.search(query, filters, newest_first=newest, limit=20)
        timings = []
        hits: list[Any] = []
        for _ in range(queries):
            started = time.perf_counter()
            hits = await store.search(query, filters, newest_first=newest, limit=20)
            timings.append((time.perf_counter() - started) * 1000)
        timings.sort()
        figures[name] = {
            "hits": len(hits),
            "p50_ms": round(timings[len(timings) // 2], 2),
            "p99_ms": round(timings[min(len(timings) - 1, int(len(timings) * 0.99))], 2),
        }
    return figures


async def _create_database(url: str) -> None:
    import asyncpg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def _urls(args: argparse.Namespace) -> list[str]:
    urls = []
    if args.sqlite:
        urls.append(f"sqlite:///{args.sqlite}")
    if args.postgres:
        urls.append(args.postgres)
    return urls


async def _build(args: argparse.Namespace) -> None:
    for url in _urls(args):
        if url.startswith("postgres"):
            await _create_database(url)
        store = ArchiveStore(url)
        try:
            await store.migrate()
            started = time.perf_counter()
            await bulk_insert(store, generate(args.incidents))
            seconds = time.perf_counter() - started
            print(f"{store.dialect}: {args.incidents} incidents in {seconds:.0f} s")
        finally:
            await store.close()


async def _measure(args: argparse.Namespace) -> None:
    for url in _urls(args):
        store = ArchiveStore(url)
        try:
            async with store.engine.connect() as conn:
                count = (await conn.exec_driver_sql("SELECT count(*) FROM incidents")).scalar()
            figures = await measure(store, args.queries)
            print(json.dumps({"database": store.dialect, "incidents": count, **figures}))
        finally:
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.history_search")
    sub = parser.add_subparsers(dest="step", required=True)
    for name in ("build", "measure"):
        step = sub.add_parser(name)
        step.add_argument("--sqlite", help="path of the SQLite archive")
        step.add_argument("--postgres", help="postgresql://... URL of the archive database")
    sub.choices["build"].add_argument("--incidents", type=int, default=1_000_000)
    sub.choices["measure"].add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(_build(args) if args.step == "build" else _measure(args))


if __name__ == "__main__":
    main()
