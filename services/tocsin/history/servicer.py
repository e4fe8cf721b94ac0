"""The HistoryService gRPC adapter: requests checked (violations named by field), archive
queries, rows turned into protos. Errors are domain errors, mapped to gRPC codes by the
server's interceptor."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import sqlalchemy as sa

from tocsin.client.client import TocsinClient
from tocsin.history import domain
from tocsin.history.archiver import Archiver
from tocsin.history.store import ArchiveStore, SearchFilters
from tocsin.runtime.clock import Clock
from tocsin.runtime.errors import InvalidArgument, NotFound
from tocsin.v1 import (
    common_pb2,
    history_pb2,
    history_pb2_grpc,
    incidents_pb2,
    scheduling_pb2,
)

pb = history_pb2
log = logging.getLogger(__name__)
SERVICE_NAME = "tocsin.v1.HistoryService"
SEARCH_DEFAULT, SEARCH_MAX = 20, 500
SIMILAR_DEFAULT, SIMILAR_MAX = 5, 50
QUERY_MAX = 1024


def _limit(value: int, default: int, most: int, field: str) -> int:
    if value < 0 or value > most:
        raise InvalidArgument.one(field, f"must be between 0 (default {default}) and {most}")
    return value or default


class HistoryServicer(history_pb2_grpc.HistoryServiceServicer):
    def __init__(
        self,
        store: ArchiveStore,
        archiver: Archiver,
        peers: Callable[[], TocsinClient],
        clock: Clock,
        report_time_zone: str,
    ) -> None:
        self.store = store
        self.archiver = archiver
        self.peers = peers
        self.clock = clock
        self.report_time_zone = report_time_zone

    async def SearchIncidents(
        self, request: pb.SearchIncidentsRequest, context: Any
    ) -> pb.SearchIncidentsResponse:
        limit = _limit(request.page_size, SEARCH_DEFAULT, SEARCH_MAX, "page_size")
        if len(request.query) > QUERY_MAX:
            raise InvalidArgument.one("query", f"at most {QUERY_MAX} characters")
        filters = SearchFilters(
            service_ids=list(request.service_ids),
            severities=list(request.severities),
            created_after_ms=request.created_after.ToMilliseconds()
            if request.HasField("created_after")
            else None,
            created_before_ms=request.created_before.ToMilliseconds()
            if request.HasField("created_before")
            else None,
            acknowledged_by=request.acknowledged_by,
        )
        hits = await self.store.search(
            request.query,
            filters,
            newest_first=request.order == pb.SEARCH_ORDER_NEWEST,
            limit=limit,
        )
        archived = await self._archived([h.row for h in hits])
        words = domain.search_words(request.query)
        return pb.SearchIncidentsResponse(
            hits=[
                pb.SearchHit(
                    incident=incident, snippet=snippet(hit.row.search_text, words), score=hit.score
                )
                for hit, incident in zip(hits, archived, strict=True)
            ]
        )

    async def GetArchivedIncident(
        self, request: pb.GetArchivedIncidentRequest, context: Any
    ) -> pb.GetArchivedIncidentResponse:
        row = await self.store.incident(request.incident_id)
        if row is None:
            raise NotFound(f"incident {request.incident_id!r} is not in the archive")
        (archived,) = await self._archived([row], notes_kept=None)
        alert_protos, entries, _, page_rows = await self.store.details(str(row.id))
        archived.incident.alerts.extend(incidents_pb2.Alert.FromString(a) for a in alert_protos)
        archived.incident.timeline.extend(
            incidents_pb2.TimelineEntry.FromString(e) for e in entries
        )
        for page in page_rows:
            item = archived.pages.add(user_id=page.user_id, level=page.level, loop=page.loop)
            item.at.FromMilliseconds(page.at_ms)
        return pb.GetArchivedIncidentResponse(incident=archived)

    async def SimilarIncidents(
        self, request: pb.SimilarIncidentsRequest, context: Any
    ) -> pb.SimilarIncidentsResponse:
        limit = _limit(request.page_size, SIMILAR_DEFAULT, SIMILAR_MAX, "page_size")
        target = await self._target(request.incident_id)
        iid = int(target.id)
        created_ms = target.created_at.ToMilliseconds()
        row = await self.store.incident(target.id)
        text = row.search_text if row is not None else target.summary
        same_key = await self.store.same_dedup_key(
            target.service_id, target.dedup_key, created_ms, iid, limit
        )
        results: list[tuple[sa.Row[Any], int, float]] = [
            (r, pb.SIMILARITY_REASON_SAME_DEDUP_KEY, 0.0) for r in same_key
        ]
        seen = {r.id for r in same_key} | {iid}
        words = domain.similarity_words(text)
        if words and len(results) < limit:
            hits = await self.store.search(
                " ".join(words),
                SearchFilters(created_before_ms=created_ms + 1),
                newest_first=False,
                limit=limit + len(seen),
                any_word=True,
                exclude_id=iid,
                prefer_service=target.service_id,
            )
            for hit in hits:
                if hit.row.id in seen or len(results) >= limit:
                    continue
                seen.add(hit.row.id)
                reason = (
                    pb.SIMILARITY_REASON_SAME_SERVICE_TEXT
                    if hit.row.service_id == target.service_id
                    else pb.SIMILARITY_REASON_TEXT
                )
                results.append((hit.row, reason, hit.score))
        archived = await self._archived([r for r, _, _ in results])
        return pb.SimilarIncidentsResponse(
            incidents=[
                pb.SimilarIncident(incident=a, reason=reason, score=score)  # type: ignore[arg-type]
                for a, (_, reason, score) in zip(archived, results, strict=True)
            ]
        )

    async def GetReport(self, request: pb.GetReportRequest, context: Any) -> pb.GetReportResponse:
        until_ms = (
            request.until.ToMilliseconds() if request.HasField("until") else self.clock.now_ms()
        )
        since_ms = (
            request.since.ToMilliseconds()
            if request.HasField("since")
            else until_ms - 30 * 86_400_000
        )
        if since_ms >= until_ms:
            raise InvalidArgument.one("since", "must be before until")
        incidents, pages = await self.store.report_rows(since_ms, until_ms, request.service_ids)
        zones = await self._zones({p.user_id for p in pages})
        report = domain.build_report(incidents, pages, zones, self.report_time_zone)
        response = pb.GetReportResponse(
            total=_service(report.total),
            services=[_service(s) for s in report.services],
            weeks=[_week(w) for w in report.weeks],
            total_weeks=[_week(w) for w in report.total_weeks],
            people=[
                pb.PersonLoad(
                    user_id=p.user_id,
                    time_zone=p.time_zone,
                    pages=p.pages,
                    business_hours=p.business_hours,
                    evenings=p.evenings,
                    nights=p.nights,
                    by_hour=p.by_hour,
                )
                for p in report.people
            ],
        )
        response.since.FromMilliseconds(since_ms)
        response.until.FromMilliseconds(until_ms)
        return response

    async def RebuildArchive(
        self, request: pb.RebuildArchiveRequest, context: Any
    ) -> pb.RebuildArchiveResponse:
        return pb.RebuildArchiveResponse(events=await self.archiver.rebuild())

    # -- helpers --------------------------------------------------------------------

    async def _target(self, incident_id: str) -> incidents_pb2.Incident:
        digits = incident_id.removeprefix("#")
        if not digits.isdigit() or not digits.isascii():
            raise InvalidArgument.one(
                "incident_id", f"expected an incident id or number (#18), got {incident_id!r}"
            )
        row = await self.store.incident(incident_id)
        if row is not None:
            return incidents_pb2.Incident.FromString(row.proto)
        try:  # not archived yet (the consumer is milliseconds behind): ask incidents
            reply = await self.peers().incidents.GetIncident(
                incidents_pb2.GetIncidentRequest(incident_id=incident_id), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"incident {incident_id!r} does not exist") from None
            raise
        return reply.incident

    async def _zones(self, users: set[str]) -> dict[str, str]:
        """Each paged user's own time zone from scheduling (missing ones: the default)."""
        zones: dict[str, str] = {}
        for user in sorted(users):
            try:
                reply = await self.peers().scheduling.GetUser(
                    scheduling_pb2.GetUserRequest(id=user), timeout=5
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    log.warning("report: time zone of %s unknown (%s)", user, error.code().name)
                continue
            if reply.user.time_zone:
                zones[user] = reply.user.time_zone
        return zones

    async def _archived(
        self, rows: Sequence[sa.Row[Any]], notes_kept: int | None = domain.NOTES_IN_LISTS
    ) -> list[pb.ArchivedIncident]:
        notes = await self.store.notes([r.id for r in rows], notes_kept)
        return [archived_incident(row, notes.get(row.id, [])) for row in rows]


def archived_incident(row: sa.Row[Any], notes: Sequence[sa.Row[Any]]) -> pb.ArchivedIncident:
    archived = pb.ArchivedIncident(incident=incidents_pb2.Incident.FromString(row.proto))
    for note in notes:
        item = archived.notes.add(
            text=note.note,
            actor=common_pb2.Actor(
                user_id=note.actor_user,
                display=note.actor_display,
                channel=note.actor_channel,
            ),
        )
        item.at.FromMilliseconds(note.at_ms)
    if row.first_response_ms is not None:
        archived.first_response_at.FromMilliseconds(row.first_response_ms)
        archived.seconds_to_acknowledge = (row.first_response_ms - row.created_ms) / 1000
    if row.resolved_ms is not None:
        archived.seconds_to_resolve = (row.resolved_ms - row.created_ms) / 1000
    return archived


def snippet(text: str, words: Sequence[str], width: int = 80) -> str:
    """About `width` characters of `text` around the first query word found in it."""
    lower = text.lower()
    found = [i for i in (lower.find(w) for w in words) if i >= 0]
    start = max(0, min(found) - width // 3) if found else 0
    piece = " ".join(text[start : start + width].split())
    return ("…" if start else "") + piece + ("…" if start + width < len(text) else "")


def _times(times: domain.Times) -> pb.ResponseTimes:
    return pb.ResponseTimes(
        incidents=times.incidents,
        acknowledged=times.acknowledged,
        resolved=times.resolved,
        mtta_median_seconds=times.mtta_median_s,
        mtta_p90_seconds=times.mtta_p90_s,
        mttr_median_seconds=times.mttr_median_s,
        mttr_p90_seconds=times.mttr_p90_s,
    )


def _week(week: domain.WeekFigures) -> pb.WeekReport:
    return pb.WeekReport(
        week=week.week, service_id=week.service_id, times=_times(week.times), pages=week.pages
    )


def _service(figures: domain.ServiceFigures) -> pb.ServiceReport:
    return pb.ServiceReport(
        service_id=figures.service_id,
        times=_times(figures.times),
        pages=figures.pages,
        paged_incidents=figures.paged_incidents,
        escalated_incidents=figures.escalated_incidents,
        escalation_rate=figures.escalation_rate,
    )
