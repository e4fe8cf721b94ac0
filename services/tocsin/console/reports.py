"""Console page: Reports (`/reports`), linked from Admin and the incidents list.

    GET /reports?days=30&service=S   MTTA/MTTR (median, p90) overall and per service,
                                     pages per person split into business hours, evenings
                                     and nights, with two charts
    GET /reports/chart.svg?...       the charts: MTTA and MTTR per week, pages per person by
                                     hour of day (server-rendered SVG, the CLI's
                                     `tocsin report --chart` drawing; no JavaScript, no CDN)

The report is the history service's GetReport, called as the viewer (any role may read
it). The tables carry every number the charts show, so the page reads without colour.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tocsin.cli import charts
from tocsin.console.web import NO_STORE, Viewer, console_of, page, refused, render
from tocsin.v1 import history_pb2

DAYS = (7, 30, 90, 365)


def _request(request: Request) -> tuple[history_pb2.GetReportRequest, int, str] | str:
    """The GetReport request of the query string, or what is wrong with it."""
    days_text = request.query_params.get("days", "30")
    if not days_text.isdigit() or not 1 <= int(days_text) <= 3660:
        return f"days: expected a whole number of days from 1 to 3660 (got {days_text!r})"
    days = int(days_text)
    service = request.query_params.get("service", "").strip()
    now = console_of(request).clock.now_ms()
    wanted = history_pb2.GetReportRequest(service_ids=[service] if service else [])
    wanted.since.FromMilliseconds(now - days * 86_400_000)
    wanted.until.FromMilliseconds(now)
    return wanted, days, service


@page
async def reports_page(request: Request, viewer: Viewer) -> Response:
    parsed = _request(request)
    if isinstance(parsed, str):
        return refused(request, parsed)
    wanted, days, service = parsed
    report = await viewer.client.history.GetReport(wanted, timeout=30)
    query = f"days={days}" + (f"&service={service}" if service else "")
    return render(
        request,
        "reports.html",
        {
            "report": report,
            "days": days,
            "day_choices": DAYS,
            "service": service,
            "chart_url": f"/reports/chart.svg?{query}",
        },
    )


@page
async def chart(request: Request, viewer: Viewer) -> Response:
    parsed = _request(request)
    if isinstance(parsed, str):
        return refused(request, parsed)
    report = await viewer.client.history.GetReport(parsed[0], timeout=30)
    return Response(charts.svg(report), media_type="image/svg+xml", headers=NO_STORE)


routes: list[BaseRoute] = [
    Route("/reports", reports_page, methods=["GET"]),
    Route("/reports/chart.svg", chart, methods=["GET"]),
]
