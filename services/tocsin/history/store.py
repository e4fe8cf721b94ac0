"""The incident archive in SQL (SQLAlchemy async: SQLite through aiosqlite, PostgreSQL
through asyncpg), its migrations (Alembic, run at every start), and its queries.

Guarantees:

- Idempotent writes. Every row has a natural key from the stream (incident id, alert id,
  stream entry id, timeline position, incident/epoch/loop/level/user for a page) and is
  inserted with ON CONFLICT DO NOTHING; an incident's row is replaced only by an event at
  least as new (its `version`), and its searchable text only grows by parts it does not
  contain yet. Writing an event twice, or the whole stream again, changes nothing.
- One transaction per event (or per batch): a crash before the commit leaves nothing
  half-written, and the consumer acknowledges the stream entry only after the commit.
- Full-text search with the database's own engine: FTS5 (porter stemming, BM25) on
  SQLite, a stored `tsvector` with a GIN index (english stemming, ts_rank_cd) on
  PostgreSQL. Words are extracted by `domain.search_words`, so no input can inject
  query syntax.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tocsin.history import domain
from tocsin.v1 import incidents_pb2

log = logging.getLogger(__name__)

ALERTS_ARCHIVED = 1000
"""Alerts kept per incident (Redis keeps 100); the incident's alert_count counts them all."""
MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 7_413_260_116
"""PostgreSQL advisory lock key held while migrating (replicas start together)."""

metadata = sa.MetaData()
incidents = sa.Table(
    "incidents",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("service_id", sa.String(64)),
    sa.Column("dedup_key", sa.Text),
    sa.Column("status", sa.SmallInteger),
    sa.Column("severity", sa.SmallInteger),
    sa.Column("summary", sa.Text),
    sa.Column("created_ms", sa.BigInteger),
    sa.Column("updated_ms", sa.BigInteger),
    sa.Column("acknowledged_by", sa.Text),
    sa.Column("resolved_ms", sa.BigInteger),
    sa.Column("resolved_by", sa.Text),
    sa.Column("first_response_ms", sa.BigInteger),
    sa.Column("version", sa.BigInteger),
    sa.Column("synced_version", sa.BigInteger),
    sa.Column("sync_due", sa.Boolean),
    sa.Column("search_text", sa.Text),
    sa.Column("proto", sa.LargeBinary),
    sa.Column("recheck_ms", sa.BigInteger),
    sa.Column("number", sa.BigInteger),  # "#18"; NULL for an incident opened before numbers
)
alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("incident_id", sa.BigInteger, primary_key=True),
    sa.Column("alert_id", sa.String(20), primary_key=True),
    sa.Column("received_ms", sa.BigInteger),
    sa.Column("proto", sa.LargeBinary),
)
events = sa.Table(
    "events",
    metadata,
    sa.Column("incident_id", sa.BigInteger, primary_key=True),
    sa.Column("event_id", sa.String(40), primary_key=True),
    sa.Column("kind", sa.SmallInteger),
    sa.Column("at_ms", sa.BigInteger),
    sa.Column("actor_user", sa.Text),
    sa.Column("actor_display", sa.Text),
    sa.Column("actor_channel", sa.SmallInteger),
    sa.Column("note", sa.Text),
)
timeline = sa.Table(
    "timeline",
    metadata,
    sa.Column("incident_id", sa.BigInteger, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("at_ms", sa.BigInteger),
    sa.Column("kind", sa.SmallInteger),
    sa.Column("proto", sa.LargeBinary),
)
pages = sa.Table(
    "pages",
    metadata,
    sa.Column("incident_id", sa.BigInteger, primary_key=True),
    sa.Column("epoch", sa.Integer, primary_key=True),
    sa.Column("loop", sa.Integer, primary_key=True),
    sa.Column("level", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.String(64), primary_key=True),
    sa.Column("service_id", sa.String(64)),
    sa.Column("at_ms", sa.BigInteger),
)
marks = sa.Table(
    "archive_marks",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger),
)
TABLES = (incidents, alerts, events, timeline, pages)
DETAIL_TABLES = (alerts, events, timeline, pages)

RECHECK_MIN_MS = 60_000
"""The first copy again after a resolution waits at least this long."""
LATE_WINDOW_MS = 3_600_000
"""For this long after its resolution an incident's timeline is copied again (at 1, 2, 4
... minutes), so entries appended after the resolution (delivery outcomes of the last
pages, replies) are archived; past it, only while a copy still finds new entries."""

_RESPONSE_KINDS = (
    incidents_pb2.INCIDENT_EVENT_KIND_ACKNOWLEDGED,
    incidents_pb2.INCIDENT_EVENT_KIND_RESOLVED,
)
_SEARCHABLE_TIMELINE = (incidents_pb2.TIMELINE_KIND_RESOLVED, incidents_pb2.TIMELINE_KIND_NOTE)


def engine_url(url: str) -> str:
    """The SQLAlchemy URL with the async driver: `postgresql://` -> asyncpg,
    `sqlite:///` -> aiosqlite (URLs naming those drivers are kept)."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def create_engine(url: str) -> AsyncEngine:
    url = engine_url(url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL: readers never block the writer; NORMAL: a commit is durable once the
            # WAL is synced at checkpoint (a power cut may lose the last commits, which
            # the stream still holds: the consumer acknowledged them, the rebuild
            # command writes them again).
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def _insert(dialect: str, table: sa.Table) -> Any:
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


@dataclass
class SearchFilters:
    service_ids: Sequence[str] = ()
    severities: Sequence[int] = ()
    created_after_ms: int | None = None
    created_before_ms: int | None = None
    acknowledged_by: str = ""


@dataclass
class Hit:
    row: sa.Row[Any]
    score: float


class ArchiveStore:
    """The archive on one database (see the module docstring)."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)
        self.dialect = self.engine.dialect.name
        self._sqlite_write = asyncio.Lock() if self.dialect == "sqlite" else None
        # One statement, built once and executed for many rows (not a multi-row VALUES,
        # whose compiled form SQLAlchemy cannot cache: compiling it, and building its
        # `excluded` columns, were a quarter of the archive's CPU per event).
        upsert = _insert(self.dialect, incidents)
        self._upsert_incidents = upsert.on_conflict_do_update(
            index_elements=[incidents.c.id],
            set_={key: upsert.excluded[key] for key in _INCIDENT_VALUE_KEYS},
            where=incidents.c.version <= upsert.excluded.version,
        )
        self._insert_events = _insert(self.dialect, events).on_conflict_do_nothing()
        self._insert_alerts = _insert(self.dialect, alerts).on_conflict_do_nothing()

    async def close(self) -> None:
        await self.engine.dispose()

    # -- migrations -----------------------------------------------------------------

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent; safe for replicas)."""
        async with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                await conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
            await conn.run_sync(_upgrade)

    # -- writes ---------------------------------------------------------------------

    async def apply(self, event: incidents_pb2.IncidentEvent) -> None:
        """Write one stream event in one transaction (idempotent)."""
        await self.apply_many([event])

    async def apply_many(self, batch: Iterable[incidents_pb2.IncidentEvent]) -> int:
        """Write events in one transaction, in order; how many. A handful of statements
        for the whole batch (one upsert of the incidents, one insert of the events, of
        the alerts, one read and one update of the searchable text), so a batch costs
        little more than one event."""
        events_in = [e for e in batch if _valid(e)]
        if not events_in:
            return 0
        async with self._writing(), self.engine.begin() as conn:
            await self._apply_batch(conn, events_in)
        return len(events_in)

    def _writing(self) -> Any:
        """SQLite has one writer: writers of this process queue here, not on busy_timeout."""
        return self._sqlite_write or _NoLock()

    async def _apply_batch(
        self, conn: AsyncConnection, batch: Sequence[incidents_pb2.IncidentEvent]
    ) -> None:
        newest: dict[int, dict[str, Any]] = {}
        event_rows: dict[tuple[int, str], dict[str, Any]] = {}
        alert_rows: dict[tuple[int, str], dict[str, Any]] = {}
        first_response: dict[int, int] = {}
        for event in batch:
            incident = event.incident
            iid = int(incident.id)
            row = _incident_values(incident)
            if iid not in newest or newest[iid]["version"] <= row["version"]:
                newest[iid] = row
            at_ms = _event_ms(event)
            if event.event_id:
                event_rows[(iid, event.event_id)] = {
                    "incident_id": iid,
                    "event_id": event.event_id,
                    "kind": event.kind,
                    "at_ms": at_ms,
                    "actor_user": event.actor.user_id,
                    "actor_display": event.actor.display,
                    "actor_channel": event.actor.channel,
                    "note": event.note,
                }
            if event.HasField("alert") and _archived_alert(event.alert.id):
                alert_rows[(iid, event.alert.id)] = {
                    "incident_id": iid,
                    "alert_id": event.alert.id,
                    "received_ms": event.alert.received_at.ToMilliseconds(),
                    "proto": event.alert.SerializeToString(),
                }
            if event.kind in _RESPONSE_KINDS:
                first_response[iid] = min(first_response.get(iid, at_ms), at_ms)
        new_notes = await self._new_events(
            conn,
            [
                key
                for key, row in event_rows.items()
                if row["kind"] == incidents_pb2.INCIDENT_EVENT_KIND_NOTE_ADDED
            ],
        )
        await conn.execute(
            self._upsert_incidents,
            [
                {
                    **row,
                    "synced_version": 0,
                    "sync_due": False,
                    "search_text": "",
                    "first_response_ms": None,
                    "recheck_ms": None,
                }
                for row in newest.values()
            ],
        )
        if event_rows:
            await conn.execute(self._insert_events, list(event_rows.values()))
        if alert_rows:
            await conn.execute(self._insert_alerts, list(alert_rows.values()))
        if first_response:
            await conn.execute(
                _FIRST_RESPONSE,
                [{"b_id": iid, "b_at": at} for iid, at in first_response.items()],
            )
        current = {r.id: r for r in await conn.execute(_SEARCH_STATE, {"ids": list(newest)})}
        texts = {iid: current[iid].search_text for iid in newest}
        due: set[int] = set()
        for event in batch:
            iid = int(event.incident.id)
            parts = domain.searchable_parts(event.incident, event.alert, event.note)
            texts[iid] = domain.merge_search_text(texts[iid], parts)
            if (
                event.kind in domain.SYNC_KINDS
                and event.incident.version > current[iid].synced_version
            ) or (iid, event.event_id) in new_notes:
                # A note changes no version (a late one, on a resolved incident, too):
                # its timeline entry is copied when the note is new to the archive.
                due.add(iid)
        changes = [
            {"b_id": iid, "b_text": texts[iid], "b_due": iid in due}
            for iid in newest
            if texts[iid] != current[iid].search_text or iid in due
        ]
        if changes:
            await conn.execute(_SEARCH_TEXT, changes)

    async def _new_events(
        self, conn: AsyncConnection, keys: Sequence[tuple[int, str]]
    ) -> set[tuple[int, str]]:
        """Which of these (incident, event id) the archive does not hold yet."""
        if not keys:
            return set()
        rows = await conn.execute(
            sa.select(events.c.incident_id, events.c.event_id).where(
                sa.tuple_(events.c.incident_id, events.c.event_id).in_(list(keys))
            )
        )
        return set(keys) - {(r.incident_id, r.event_id) for r in rows}

    async def due_for_sync(self, limit: int = 100, now_ms: int | None = None) -> list[str]:
        """Incidents whose timeline should be copied again (oldest change first): marked
        by an event, or due for a re-check (`next_recheck`) at `now_ms`."""
        due: sa.ColumnElement[bool] = incidents.c.sync_due.is_(True)
        if now_ms is not None:
            due = sa.or_(due, incidents.c.recheck_ms <= now_ms)
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(incidents.c.id).where(due).order_by(incidents.c.updated_ms).limit(limit)
            )
            return [str(r.id) for r in rows]

    async def write_timeline(self, incident: incidents_pb2.Incident, now_ms: int = 0) -> None:
        """Copy `incident`'s timeline (as the incidents service returned it, with its
        version) and the pages in it; the incident is in sync up to that version, and
        a resolved one is copied again later (`next_recheck`)."""
        iid = int(incident.id)
        entries = list(incident.timeline)
        async with self._writing(), self.engine.begin() as conn:
            held = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(timeline)
                    .where(timeline.c.incident_id == iid)
                )
            ).scalar_one()
            if entries:
                await conn.execute(
                    _insert(self.dialect, timeline).on_conflict_do_nothing(),
                    [
                        {
                            "incident_id": iid,
                            "seq": seq,
                            "at_ms": entry.at.ToMilliseconds(),
                            "kind": entry.kind,
                            "proto": entry.SerializeToString(),
                        }
                        for seq, entry in enumerate(entries)
                    ],
                )
            timeline_notes = [
                {
                    "incident_id": iid,
                    "event_id": f"timeline:{seq}",
                    "kind": incidents_pb2.INCIDENT_EVENT_KIND_NOTE_ADDED,
                    "at_ms": entry.at.ToMilliseconds(),
                    "actor_user": entry.actor.user_id,
                    "actor_display": entry.actor.display,
                    "actor_channel": entry.actor.channel,
                    "note": entry.message,
                }
                for seq, entry in enumerate(entries)
                if entry.kind == incidents_pb2.TIMELINE_KIND_NOTE
            ]
            if timeline_notes:
                # A note is in the events too; its event may be gone (trimmed from the
                # stream before the archive read it): the reader keeps one of each.
                await conn.execute(
                    _insert(self.dialect, events).on_conflict_do_nothing(), timeline_notes
                )
            found = domain.pages_from_timeline(entries)
            if found:
                await conn.execute(
                    _insert(self.dialect, pages).on_conflict_do_nothing(),
                    [
                        {
                            "incident_id": iid,
                            "epoch": p.epoch,
                            "loop": p.loop,
                            "level": p.level,
                            "user_id": p.user_id,
                            "service_id": incident.service_id,
                            "at_ms": p.at_ms,
                        }
                        for p in found
                    ],
                )
            current = (
                await conn.execute(sa.select(incidents.c.search_text).where(incidents.c.id == iid))
            ).one_or_none()
            if current is None:
                return
            text = domain.merge_search_text(
                current.search_text,
                (e.message for e in entries if e.kind in _SEARCHABLE_TIMELINE),
            )
            await conn.execute(
                incidents.update()
                .where(incidents.c.id == iid)
                .values(
                    synced_version=sa.func.max(incidents.c.synced_version, incident.version)
                    if self.dialect == "sqlite"
                    else sa.func.greatest(incidents.c.synced_version, incident.version),
                    sync_due=incidents.c.version > incident.version,
                    recheck_ms=next_recheck(incident, now_ms, found_new=len(entries) > held),
                    **({"search_text": text} if text != current.search_text else {}),
                )
            )

    async def forget_sync(self, incident_id: str) -> None:
        """The incidents service no longer has this incident: keep what is archived."""
        async with self._writing(), self.engine.begin() as conn:
            await conn.execute(
                incidents.update()
                .where(incidents.c.id == int(incident_id))
                .values(sync_due=False, synced_version=incidents.c.version, recheck_ms=None)
            )

    async def versions(self, incident_ids: Sequence[str]) -> dict[str, int]:
        """The archived version of each of these incidents the archive holds."""
        ids = [int(i) for i in incident_ids if i.isdigit()]
        if not ids:
            return {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(incidents.c.id, incidents.c.version).where(incidents.c.id.in_(ids))
            )
            return {str(r.id): int(r.version) for r in rows}

    async def mark_due(self, incident_ids: Sequence[str]) -> None:
        """Have the timeline copier copy these incidents again."""
        ids = [int(i) for i in incident_ids if i.isdigit()]
        if ids:
            async with self._writing(), self.engine.begin() as conn:
                await conn.execute(
                    incidents.update().where(incidents.c.id.in_(ids)).values(sync_due=True)
                )

    async def apply_snapshot(self, incident: incidents_pb2.Incident, now_ms: int) -> None:
        """Write an incident as the incidents service holds it now (alerts and timeline
        included), for events the stream no longer has: the row (if newer), its alerts,
        its first response and who acknowledged it, then its timeline, pages and notes
        (`write_timeline`). Idempotent, like every write here."""
        synthetic: list[incidents_pb2.IncidentEvent] = []
        for alert in incident.alerts:
            synthetic.append(
                incidents_pb2.IncidentEvent(
                    kind=incidents_pb2.INCIDENT_EVENT_KIND_ALERT_ADDED,
                    incident=incident,
                    alert=alert,
                )
            )
        for kind, at, actor, name in (
            (
                incidents_pb2.INCIDENT_EVENT_KIND_ACKNOWLEDGED,
                incident.acknowledged_at,
                incident.acknowledged_by,
                "snapshot:acknowledged",
            ),
            (
                incidents_pb2.INCIDENT_EVENT_KIND_RESOLVED,
                incident.resolved_at,
                incident.resolved_by,
                "snapshot:resolved",
            ),
        ):
            if at.ToMilliseconds():
                event = incidents_pb2.IncidentEvent(
                    kind=kind, incident=incident, actor=actor, event_id=name
                )
                event.at.CopyFrom(at)
                synthetic.append(event)
        if not synthetic:
            synthetic.append(incidents_pb2.IncidentEvent(incident=incident))
        for event in synthetic:
            del event.incident.alerts[:]
            del event.incident.timeline[:]
        await self.apply_many(synthetic)
        await self.write_timeline(incident, now_ms)

    # -- marks ----------------------------------------------------------------------

    async def mark(self, name: str) -> int | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(marks.c.value).where(marks.c.name == name))
            ).one_or_none()
            return None if row is None else int(row.value)

    async def lower_mark(self, name: str, value: int) -> None:
        """Set mark `name` to `value` unless it holds a smaller one already."""
        async with self._writing(), self.engine.begin() as conn:
            insert = _insert(self.dialect, marks).values(name=name, value=value)
            await conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[marks.c.name],
                    set_={"value": insert.excluded.value},
                    where=marks.c.value > insert.excluded.value,
                )
            )

    async def clear_mark(self, name: str, value: int) -> bool:
        """Remove mark `name` if it still holds `value` (nobody lowered it meanwhile)."""
        async with self._writing(), self.engine.begin() as conn:
            result = await conn.execute(
                marks.delete().where(marks.c.name == name).where(marks.c.value == value)
            )
            return bool(result.rowcount)

    # -- retention ------------------------------------------------------------------

    async def sweep(self, resolved_before_ms: int, limit: int = 500) -> int:
        """Delete (with everything archived about them) at most `limit` incidents
        resolved before `resolved_before_ms`, in one transaction; how many. Open
        incidents are never deleted, however old."""
        async with self._writing(), self.engine.begin() as conn:
            ids = [
                r.id
                for r in await conn.execute(
                    sa.select(incidents.c.id)
                    .where(incidents.c.resolved_ms < resolved_before_ms)
                    .where(incidents.c.status == incidents_pb2.INCIDENT_STATUS_RESOLVED)
                    .order_by(incidents.c.resolved_ms)
                    .limit(limit)
                )
            ]
            if not ids:
                return 0
            for table in DETAIL_TABLES:
                await conn.execute(table.delete().where(table.c.incident_id.in_(ids)))
            await conn.execute(incidents.delete().where(incidents.c.id.in_(ids)))
            return len(ids)

    # -- reads ----------------------------------------------------------------------

    async def incident(self, incident_id: str) -> sa.Row[Any] | None:
        """The archived incident `incident_id` names: its id, or its number ("#18"; the
        newest incident with that number, should a counter that went back have given it
        twice)."""
        number = incident_id.removeprefix("#")
        if not number.isdigit() or not number.isascii():
            return None
        if number != incident_id:
            query = (
                sa.select(incidents)
                .where(incidents.c.number == int(number))
                .order_by(incidents.c.created_ms.desc())
                .limit(1)
            )
        else:
            query = sa.select(incidents).where(incidents.c.id == int(incident_id))
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).one_or_none()

    async def details(
        self, incident_id: str
    ) -> tuple[list[bytes], list[bytes], list[sa.Row[Any]], list[sa.Row[Any]]]:
        """An incident's alerts, timeline (protobuf bytes), notes and pages, oldest first."""
        iid = int(incident_id)
        async with self.engine.connect() as conn:
            alert_rows = await conn.execute(
                sa.select(alerts.c.proto, alerts.c.alert_id).where(alerts.c.incident_id == iid)
            )
            ordered = sorted(
                alert_rows, key=lambda r: int(r.alert_id) if r.alert_id.isdigit() else 0
            )
            entries = await conn.execute(
                sa.select(timeline.c.proto)
                .where(timeline.c.incident_id == iid)
                .order_by(timeline.c.seq)
            )
            page_rows = await conn.execute(
                sa.select(pages)
                .where(pages.c.incident_id == iid)
                .order_by(pages.c.at_ms, pages.c.level)
            )
            return (
                [r.proto for r in ordered],
                [r.proto for r in entries],
                (await self._notes(conn, [iid], None)).get(iid, []),
                list(page_rows),
            )

    async def notes(
        self, incident_ids: Sequence[int], last: int | None
    ) -> dict[int, list[sa.Row[Any]]]:
        async with self.engine.connect() as conn:
            return await self._notes(conn, incident_ids, last)

    async def _notes(
        self, conn: AsyncConnection, incident_ids: Sequence[int], last: int | None
    ) -> dict[int, list[sa.Row[Any]]]:
        if not incident_ids:
            return {}
        rows = await conn.execute(
            sa.select(events)
            .where(events.c.incident_id.in_(incident_ids))
            .where(events.c.kind == incidents_pb2.INCIDENT_EVENT_KIND_NOTE_ADDED)
            .order_by(events.c.at_ms, events.c.event_id)
        )
        out: dict[int, list[sa.Row[Any]]] = {}
        seen: set[tuple[int, int, str]] = set()
        for row in rows:  # a note's event and its timeline entry: one note
            key = (row.incident_id, row.at_ms, row.note)
            if key not in seen:
                seen.add(key)
                out.setdefault(row.incident_id, []).append(row)
        if last is not None:
            out = {k: v[-last:] for k, v in out.items()}
        return out

    async def search(
        self,
        query: str,
        filters: SearchFilters,
        *,
        newest_first: bool,
        limit: int,
        any_word: bool = False,
        exclude_id: int | None = None,
        prefer_service: str = "",
    ) -> list[Hit]:
        """Incidents matching every word of `query` (any word with `any_word`), with the
        filters, by relevance (or newest first); no words: every incident, newest first."""
        words = domain.search_words(query)
        if any_word:
            words = [w for word in words for w in _plain_tokens(word)]
        params: dict[str, Any] = {"limit": limit}
        where: list[str] = []
        if words and self.dialect == "postgresql":
            params["q"] = " | ".join(words) if any_word else " ".join(words)
            tsquery = "to_tsquery('english', :q)" if any_word else "plainto_tsquery('english', :q)"
            source = f"incidents i, {tsquery} q"
            where.append("i.search_vector @@ q")
            score = "ts_rank_cd(i.search_vector, q)"
        elif words:
            quoted = ['"' + w.replace('"', "") + '"' for w in words]
            params["q"] = (" OR " if any_word else " AND ").join(quoted)
            source = "incidents_fts f JOIN incidents i ON i.id = f.rowid"
            where.append("incidents_fts MATCH :q")
            score = "-bm25(incidents_fts)"
        else:
            source, score = "incidents i", "0.0"
            newest_first = True
        if filters.service_ids:
            names = [f"s{n}" for n in range(len(filters.service_ids))]
            params.update(zip(names, filters.service_ids, strict=True))
            where.append(f"i.service_id IN ({', '.join(':' + n for n in names)})")
        if filters.severities:
            where.append(f"i.severity IN ({', '.join(str(int(s)) for s in filters.severities)})")
        if filters.created_after_ms is not None:
            params["after"] = filters.created_after_ms
            where.append("i.created_ms >= :after")
        if filters.created_before_ms is not None:
            params["before"] = filters.created_before_ms
            where.append("i.created_ms < :before")
        if filters.acknowledged_by:
            params["acker"] = filters.acknowledged_by
            params["ack_kind"] = incidents_pb2.INCIDENT_EVENT_KIND_ACKNOWLEDGED
            where.append(
                "EXISTS (SELECT 1 FROM events e WHERE e.incident_id = i.id AND "
                "e.kind = :ack_kind AND (e.actor_user = :acker OR e.actor_display = :acker))"
            )
        if exclude_id is not None:
            params["exclude"] = exclude_id
            where.append("i.id <> :exclude")
        order = ["i.created_ms DESC"] if newest_first else ["score DESC", "i.created_ms DESC"]
        if prefer_service:
            params["prefer"] = prefer_service
            order.insert(0, "CASE WHEN i.service_id = :prefer THEN 0 ELSE 1 END")
        columns = ", ".join(f"i.{c.name}" for c in incidents.columns)
        sql = (
            f"SELECT {columns}, {score} AS score FROM {source}"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY {', '.join(order)} LIMIT :limit"
        )
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.text(sql), params)
            return [Hit(row, float(row.score or 0.0)) for row in rows]

    async def same_dedup_key(
        self, service_id: str, dedup_key: str, before_ms: int, exclude_id: int, limit: int
    ) -> list[sa.Row[Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(incidents)
                .where(incidents.c.service_id == service_id)
                .where(incidents.c.dedup_key == dedup_key)
                .where(incidents.c.created_ms <= before_ms)
                .where(incidents.c.id != exclude_id)
                .order_by(incidents.c.created_ms.desc())
                .limit(limit)
            )
            return list(rows)

    async def report_rows(
        self, since_ms: int, until_ms: int, service_ids: Sequence[str]
    ) -> tuple[list[domain.IncidentTimes], list[domain.PageFact]]:
        """The incidents opened in [since, until) (of the services) and their pages."""
        window = [incidents.c.created_ms >= since_ms, incidents.c.created_ms < until_ms]
        if service_ids:
            window.append(incidents.c.service_id.in_(list(service_ids)))
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(
                    incidents.c.id,
                    incidents.c.service_id,
                    incidents.c.created_ms,
                    incidents.c.first_response_ms,
                    incidents.c.resolved_ms,
                ).where(*window)
            )
            times = [
                domain.IncidentTimes(
                    str(r.id), r.service_id, r.created_ms, r.first_response_ms, r.resolved_ms
                )
                for r in rows
            ]
            page_rows = await conn.execute(
                sa.select(
                    pages.c.incident_id,
                    pages.c.service_id,
                    pages.c.user_id,
                    pages.c.level,
                    pages.c.at_ms,
                )
                .join(incidents, incidents.c.id == pages.c.incident_id)
                .where(*window)
            )
            facts = [
                domain.PageFact(str(r.incident_id), r.service_id, r.user_id, r.level, r.at_ms)
                for r in page_rows
            ]
        return times, facts

    async def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, sorted (tests compare archives with it)."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        async with self.engine.connect() as conn:
            for table in TABLES:
                rows = await conn.execute(sa.select(table))
                out[table.name] = sorted(tuple(r) for r in rows)
        return out


def next_recheck(incident: incidents_pb2.Incident, now_ms: int, *, found_new: bool) -> int | None:
    """When to copy a resolved incident's timeline again after a copy at `now_ms`: entries
    keep being appended after the resolution (the delivery outcome of the last page, a
    late reply), without an event or a new version. Within `LATE_WINDOW_MS` of the
    resolution at 1, 2, 4 ... minutes after it, later only while copies still find new
    entries; None = not again (an open incident is copied at its next change, and a note
    always marks it)."""
    if incident.status != incidents_pb2.INCIDENT_STATUS_RESOLVED or not now_ms:
        return None
    age = now_ms - incident.resolved_at.ToMilliseconds()
    if age >= LATE_WINDOW_MS and not found_new:
        return None
    return now_ms + max(RECHECK_MIN_MS, age)


def _archived_alert(alert_id: str) -> bool:
    """The first ALERTS_ARCHIVED alerts of an incident are kept (alert_count counts them
    all): a storm of repeats must not grow the archive without bound."""
    return alert_id.isdigit() and int(alert_id) <= ALERTS_ARCHIVED


def _valid(event: incidents_pb2.IncidentEvent) -> bool:
    if event.incident.id.isdigit():
        return True
    log.warning(
        "event %s: incident id %r is not a number; skipped", event.event_id, event.incident.id
    )
    return False


def _event_ms(event: incidents_pb2.IncidentEvent) -> int:
    return event.at.ToMilliseconds() or event.incident.updated_at.ToMilliseconds()


class _NoLock:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *args: object) -> None:
        return None


def _plain_tokens(word: str) -> list[str]:
    """`db-1.example` -> ["db", "1", "example"]: what to_tsquery can take unquoted."""
    return [t for t in domain.search_words(word.replace(".", " ").replace("-", " ")) if t]


def _incident_values(incident: incidents_pb2.Incident) -> dict[str, Any]:
    bare = incidents_pb2.Incident()
    bare.CopyFrom(incident)
    del bare.alerts[:]
    del bare.timeline[:]
    return {
        "id": int(incident.id),
        "service_id": incident.service_id,
        "dedup_key": incident.dedup_key,
        "status": incident.status,
        "severity": incident.severity,
        "summary": incident.summary,
        "created_ms": incident.created_at.ToMilliseconds(),
        "updated_ms": incident.updated_at.ToMilliseconds(),
        "acknowledged_by": domain.actor_name(incident.acknowledged_by),
        "resolved_ms": incident.resolved_at.ToMilliseconds()
        if incident.HasField("resolved_at")
        else None,
        "resolved_by": domain.actor_name(incident.resolved_by),
        "version": incident.version,
        "number": incident.number or None,
        "proto": bare.SerializeToString(),
    }


_FIRST_RESPONSE = (
    incidents.update()
    .where(incidents.c.id == sa.bindparam("b_id"))
    .where(
        sa.or_(
            incidents.c.first_response_ms.is_(None),
            incidents.c.first_response_ms > sa.bindparam("b_at"),
        )
    )
    .values(first_response_ms=sa.bindparam("b_at"))
)
_SEARCH_STATE = sa.select(
    incidents.c.id, incidents.c.search_text, incidents.c.synced_version
).where(incidents.c.id.in_(sa.bindparam("ids", expanding=True)))
_SEARCH_TEXT = (
    incidents.update()
    .where(incidents.c.id == sa.bindparam("b_id"))
    .values(
        search_text=sa.bindparam("b_text"),
        sync_due=sa.or_(incidents.c.sync_due, sa.bindparam("b_due", sa.Boolean)),
    )
)
"""The archive's write statements, built once (each write only binds values)."""
_INCIDENT_VALUE_KEYS = [
    key for key in _incident_values(incidents_pb2.Incident(id="0")) if key != "id"
]
"""The columns an event's incident sets (all but `id`): the upsert's SET list."""


def _upgrade(connection: Connection) -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
