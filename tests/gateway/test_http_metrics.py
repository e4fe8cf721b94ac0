"""Every HTTP request the gateway serves is timed by route template, method and status,
the Events API's fast path included."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.incidents.harness import PAYMENTS_KEY, Served, gateway_for
from tests.metrics import sample
from tocsin.gateway.app import EventsFastPath
from tocsin.runtime.metrics import render, setup_metrics

COUNT = "tocsin_http_server_duration_seconds_count"
# What the feed may answer a made-up token here: refused, or scheduling not reachable.
FEED_STATUSES = ("200", "401", "403", "404", "503")


@pytest.fixture
async def http(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    setup_metrics("test")
    pair: tuple[httpx.AsyncClient, EventsFastPath]
    async with gateway_for(served) as pair:
        yield pair[0]


def _count(route: str, method: str, status: str) -> float:
    labels = {"route": route, "method": method, "status": status}
    return sample(render().decode(), COUNT, labels)


async def test_requests_are_counted_by_route_template_method_and_status(
    http: httpx.AsyncClient,
) -> None:
    accepted = _count("/v2/enqueue", "POST", "202")
    refused = _count("/v2/enqueue", "POST", "400")
    missing = _count("other", "GET", "404")
    event = {
        "routing_key": PAYMENTS_KEY,
        "event_action": "trigger",
        "dedup_key": "metrics-1",
        "payload": {"summary": "disk full", "source": "db1", "severity": "critical"},
    }
    assert (await http.post("/v2/enqueue", json=event)).status_code == 202
    assert (await http.post("/v2/enqueue", content=b"{not json")).status_code == 400
    # A path's own values (a user id, a token) never become a label: the template does.
    feeds = {status: _count("/ical/users/{user_id}.ics", "GET", status) for status in FEED_STATUSES}
    feed = await http.get("/ical/users/alice.ics", params={"token": "x"})
    assert str(feed.status_code) in FEED_STATUSES
    assert (await http.get("/no/such/page")).status_code == 404
    assert _count("/v2/enqueue", "POST", "202") == accepted + 1
    assert _count("/v2/enqueue", "POST", "400") == refused + 1
    # Counted once, under its own status (other tests in this process may have hit the route).
    for status, before in feeds.items():
        expected = before + 1 if status == str(feed.status_code) else before
        assert _count("/ical/users/{user_id}.ics", "GET", status) == expected, status
    assert _count("other", "GET", "404") == missing + 1
    text = render().decode()
    assert "alice" not in text and "/no/such/page" not in text
