"""`POST /v1/alertmanager` (Alertmanager webhook_configs, version 4) in front of a real
incidents gRPC server: one incident per alert fingerprint."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from google.protobuf.json_format import MessageToDict
from redis.asyncio import Redis

from tests.incidents.harness import (
    PAYMENTS_KEY,
    Served,
    create_payments,
    event_kinds,
    events_of,
    gateway_for,
    nested,
    serve_incidents,
    snapshot,
)
from tocsin.gateway.events_api import InFlight, RateLimiter
from tocsin.runtime.clock import ManualClock
from tocsin.v1 import common_pb2, incidents_pb2

WEBHOOK: dict[str, Any] = {
    "receiver": "tocsin",
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {
                "alertname": "HighErrorRate",
                "instance": "api-1:9090",
                "job": "payments-api",
                "namespace": "prod",
                "severity": "warning",
            },
            "annotations": {
                "summary": "Error rate above 5%\non api-1",
                "runbook_url": "https://runbooks.example/high-error-rate",
            },
            "startsAt": "2026-11-27T02:55:12.123456789Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example:9090/graph?g0.expr=rate",
            "fingerprint": "c4f1b4e0a1d2e3f4",
        },
        {
            "status": "firing",
            "labels": {"alertname": "DiskFull", "instance": "db-1", "severity": "critical"},
            "annotations": {"description": "Disk /var is 98% full"},
            "startsAt": "2026-11-27T02:58:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example:9090/graph?g0.expr=disk",
            "fingerprint": "9a8b7c6d5e4f3a2b",
        },
    ],
    "groupLabels": {"job": "payments-api"},
    "commonLabels": {"job": "payments-api"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager.example:9093",
    "version": "4",
    "groupKey": '{}:{job="payments-api"}',
    "truncatedAlerts": 0,
}


@pytest.fixture
async def http(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_for(served) as (client, _app):
        yield client


async def _incident(served: Served, fingerprint: str) -> incidents_pb2.Incident | None:
    incident_id = await served.running.store.find_open("payments-api", fingerprint)
    if incident_id is None:
        return None
    reply = await served.stub.GetIncident(
        incidents_pb2.GetIncidentRequest(incident_id=incident_id, include_alerts=True)
    )
    return reply.incident


async def test_firing_repeat_and_resolved(served: Served, http: httpx.AsyncClient) -> None:
    reply = await http.post(f"/v1/alertmanager/{PAYMENTS_KEY}", json=WEBHOOK)
    assert reply.status_code == 200
    assert reply.json() == {"status": "success", "triggered": 2, "resolved": 0}
    errors = await _incident(served, "c4f1b4e0a1d2e3f4")
    disk = await _incident(served, "9a8b7c6d5e4f3a2b")
    assert errors is not None and disk is not None and errors.id != disk.id
    assert errors.summary == "Error rate above 5% on api-1"
    assert errors.severity == common_pb2.SEVERITY_WARNING
    alert = errors.alerts[0]
    assert (alert.source, alert.component, alert.group, getattr(alert, "class")) == (
        "api-1:9090",
        "payments-api",
        "prod",
        "HighErrorRate",
    )
    assert alert.channel == common_pb2.CHANNEL_ALERTMANAGER
    assert alert.occurred_at.ToJsonString() == "2026-11-27T02:55:12.123456Z"
    details = MessageToDict(alert.details)
    assert details["labels"]["alertname"] == "HighErrorRate"
    assert details["annotations"]["runbook_url"].startswith("https://runbooks")
    assert [link.text for link in alert.links] == ["Source", "Alertmanager"]
    assert disk.summary == "Disk /var is 98% full"
    assert disk.severity == common_pb2.SEVERITY_CRITICAL

    # Alertmanager repeats the notification, then one alert resolves.
    assert (await http.post(f"/v1/alertmanager/{PAYMENTS_KEY}", json=WEBHOOK)).status_code == 200
    repeated = await _incident(served, "c4f1b4e0a1d2e3f4")
    assert repeated is not None and repeated.alert_count == 2
    resolved = copy.deepcopy(WEBHOOK)
    resolved["alerts"][0]["status"] = "resolved"
    resolved["alerts"][0]["endsAt"] = "2026-11-27T03:10:00Z"
    reply = await http.post(f"/v1/alertmanager/{PAYMENTS_KEY}", json=resolved)
    assert reply.json() == {"status": "success", "triggered": 1, "resolved": 1}
    assert await _incident(served, "c4f1b4e0a1d2e3f4") is None
    assert event_kinds(await events_of(served.redis, errors.id)) == [
        "TRIGGERED",
        "ALERT_ADDED",
        "RESOLVED",
    ]
    # Resolving again (Alertmanager re-sends resolved notifications) changes nothing.
    before = await snapshot(served.redis)
    only_resolved = copy.deepcopy(resolved)
    only_resolved["alerts"] = resolved["alerts"][:1]
    reply = await http.post(f"/v1/alertmanager/{PAYMENTS_KEY}", json=only_resolved)
    assert reply.status_code == 200 and reply.json()["resolved"] == 0
    assert await snapshot(served.redis) == before


async def test_the_key_may_come_as_a_bearer_token(served: Served, http: httpx.AsyncClient) -> None:
    reply = await http.post(
        "/v1/alertmanager", json=WEBHOOK, headers={"Authorization": f"Bearer {PAYMENTS_KEY}"}
    )
    assert reply.status_code == 200
    assert await _incident(served, "9a8b7c6d5e4f3a2b") is not None


@pytest.mark.parametrize(
    ("path", "headers", "message"),
    [
        ("/v1/alertmanager", {}, "missing integration key"),
        ("/v1/alertmanager", {"Authorization": "Basic abc"}, "missing integration key"),
        ("/v1/alertmanager/short", {}, "integration key must be 32"),
        (f"/v1/alertmanager/{'f' * 32}", {}, "unknown integration key"),
    ],
)
async def test_without_a_valid_key_nothing_happens(
    served: Served, http: httpx.AsyncClient, path: str, headers: dict[str, str], message: str
) -> None:
    before = await snapshot(served.redis)
    reply = await http.post(path, json=WEBHOOK, headers=headers)
    assert reply.status_code == 401
    assert reply.json()["message"].startswith(message)
    assert await snapshot(served.redis) == before


def _changed(path: list[Any], value: Any) -> dict[str, Any]:
    body = copy.deepcopy(WEBHOOK)
    target: Any = body
    for step in path[:-1]:
        target = target[step]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body


# A payload that is no webhook payload at all, or whose every alert cannot be understood.
BAD_PAYLOADS: list[tuple[Any, str]] = [
    ([], "payload must be a JSON object"),
    (_changed(["alerts"], None), "'alerts' is missing"),
    (_changed(["alerts"], {"a": 1}), "'alerts' must be a list of objects"),
    (
        _changed(["alerts"], [{"status": "pending", "fingerprint": "x", "labels": {"a": "b"}}]),
        "'alerts[0].status' must be firing or resolved",
    ),
    (
        _changed(["alerts"], [{"status": "firing", "fingerprint": "x", "labels": {}}]),
        "'alerts[0].annotations.summary' is required",
    ),
    (_changed(["alerts"], ["text"]), "'alerts[0]' must be an object"),
]


@pytest.mark.parametrize(("body", "error"), BAD_PAYLOADS)
async def test_a_bad_payload_names_the_field_and_writes_nothing(
    served: Served, http: httpx.AsyncClient, body: Any, error: str
) -> None:
    before = await snapshot(served.redis)
    reply = await http.post(f"/v1/alertmanager/{PAYMENTS_KEY}", content=json.dumps(body))
    assert reply.status_code == 400, reply.text
    assert any(e.startswith(error) for e in reply.json()["errors"]), reply.json()
    assert await snapshot(served.redis) == before


async def test_oversized_and_unreadable_bodies(served: Served, http: httpx.AsyncClient) -> None:
    before = await snapshot(served.redis)
    url = f"/v1/alertmanager/{PAYMENTS_KEY}"
    assert (await http.post(url, content=b"x" * (16 * 1024 * 1024 + 1))).status_code == 413
    broken = await http.post(url, content=b'{"version": "4", "alerts": [\xff]}')
    assert broken.status_code == 400
    assert broken.json()["errors"][0].startswith("body is not valid JSON")
    assert (await http.post(url, content=b"{")).status_code == 400
    assert await snapshot(served.redis) == before


async def test_long_descriptions_are_folded_and_cut(
    served: Served, http: httpx.AsyncClient
) -> None:
    body = _changed(["alerts", 1, "annotations"], {"description": "line\n" * 400})
    assert (await http.post(f"/v1/alertmanager/{PAYMENTS_KEY}", json=body)).status_code == 200
    incident = await _incident(served, "9a8b7c6d5e4f3a2b")
    assert incident is not None
    assert len(incident.summary) == 1024
    assert incident.summary.endswith("…") and "\n" not in incident.summary
    details = MessageToDict(incident.alerts[0].details)
    assert details["summary_full"] == "line\n" * 400


def _alert(n: int, **labels: str) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": f"Alert{n}", "instance": f"host-{n}"} | labels,
        "annotations": {"summary": f"Alert {n} firing"},
        "startsAt": "2026-11-27T02:55:12Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example:9090/graph",
        "fingerprint": f"fp{n:05d}",
    }


async def test_each_alert_stands_alone(served: Served, http: httpx.AsyncClient) -> None:
    """One bad alert made the whole group 400: Alertmanager dropped it, nobody was paged.
    Now the understandable ones page, and the reply names the others."""
    alerts = [_alert(n) for n in range(6)]
    alerts[1]["labels"]["instance"] = "db-1\nreplica"  # a newline in a label value
    alerts[2]["labels"]["instance"] = "i" * 1500  # over 1,024 characters
    alerts[3]["status"] = "pending"  # cannot be understood: reported alone
    alerts[4] = {"status": "firing", "fingerprint": "nothing", "labels": {}}  # no summary
    alerts[5]["labels"]["severity"] = 3  # not a string
    del alerts[5]["fingerprint"]  # made from the labels
    body = _changed(["alerts"], alerts)
    body["receiver"] = "team\x1b[31m"
    reply = await http.post(f"/v1/alertmanager/{PAYMENTS_KEY}", json=body)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["status"] == "partial"
    assert (answer["triggered"], answer["resolved"], answer["rejected"]) == (4, 0, 2)
    assert answer["errors"] == [
        "'alerts[3].status' must be firing or resolved",
        "'alerts[4].annotations.summary' is required (or annotation description, or label "
        "alertname)",
    ]
    for n in (0, 1, 2):
        assert await _incident(served, f"fp{n:05d}") is not None
    newline = await _incident(served, "fp00001")
    assert newline is not None and newline.source == "db-1 replica"
    long = await _incident(served, "fp00002")
    assert long is not None and long.source == "i" * 1023 + "…"
    assert MessageToDict(long.alerts[0].details)["source_full"] == "i" * 1500
    assert await _incident(served, "fp00003") is None
    assert await _incident(served, "nothing") is None
    [events] = [await events_of(served.redis, newline.id)]
    assert events[0].actor.display == "team [31m"


async def test_a_big_group_pages_every_alert(served: Served, http: httpx.AsyncClient) -> None:
    """More than 1,000 alerts, or over 2 MiB, made the whole group 400/413."""
    alerts = [_alert(n) for n in range(1200)]
    for alert in alerts:
        alert["annotations"]["description"] = "d" * 2000
    body = _changed(["alerts"], alerts)
    content = json.dumps(body).encode()
    assert len(content) > 2 * 1024 * 1024
    reply = await http.post(f"/v1/alertmanager/{PAYMENTS_KEY}", content=content)
    assert reply.status_code == 200, reply.text[:500]
    assert reply.json() == {"status": "success", "triggered": 1200, "resolved": 0}
    assert await _incident(served, "fp01199") is not None


async def test_a_version_other_than_4_is_read_all_the_same(
    served: Served, http: httpx.AsyncClient
) -> None:
    for version in ("3", None):
        reply = await http.post(
            f"/v1/alertmanager/{PAYMENTS_KEY}", json=_changed(["version"], version)
        )
        assert reply.status_code == 200
    assert await _incident(served, "9a8b7c6d5e4f3a2b") is not None


async def test_an_unreachable_incidents_service_is_retried_by_alertmanager(
    redis: Redis, clock: ManualClock
) -> None:
    async with serve_incidents(redis, clock) as served:
        await create_payments(served.stub)
    async with gateway_for(served) as (http, _app):
        reply = await http.post(f"/v1/alertmanager/{PAYMENTS_KEY}", json=WEBHOOK)
    assert reply.status_code == 503  # Alertmanager sends the whole group again
    assert reply.json()["triggered"] == 0


async def test_a_huge_alert_pages_beside_the_others(
    served: Served, http: httpx.AsyncClient
) -> None:
    """Megabytes in one label or annotation must not make its request too large for the
    incidents service (a 429/503 forever: Alertmanager would retry the group without end)."""
    alerts = [_alert(n) for n in range(3)]
    alerts[1]["labels"]["instance"] = "i" * (5 * 1024 * 1024)
    alerts[1]["annotations"]["summary"] = "s" * (5 * 1024 * 1024)
    reply = await http.post(f"/v1/alertmanager/{PAYMENTS_KEY}", json=_changed(["alerts"], alerts))
    assert reply.status_code == 200, reply.text[:500]
    assert reply.json() == {"status": "success", "triggered": 3, "resolved": 0}
    huge = await _incident(served, "fp00001")
    assert huge is not None
    assert huge.source == "i" * 1023 + "…" and huge.summary == "s" * 1023 + "…"
    details = MessageToDict(huge.alerts[0].details)
    assert details["labels"] == details["annotations"] == "omitted: larger than 64 KiB"
    assert details["source_full"].startswith("i" * 1000) and len(details["source_full"]) == 32768


async def test_labels_that_are_not_text_are_read_as_text(
    served: Served, http: httpx.AsyncClient
) -> None:
    alert = _alert(1, team="payments")
    alert["labels"] |= {"severity": "WARNING", "replicas": 3, "deep": nested(500)}
    reply = await http.post(f"/v1/alertmanager/{PAYMENTS_KEY}", json=_changed(["alerts"], [alert]))
    assert reply.status_code == 200, reply.text[:500]
    incident = await _incident(served, "fp00001")
    assert incident is not None and incident.severity == common_pb2.SEVERITY_WARNING
    labels = MessageToDict(incident.alerts[0].details)["labels"]
    assert labels["replicas"] == "3" and labels["deep"].startswith('{"x": {"x": ')


async def test_a_key_over_its_rate_gets_429_with_retry_after(served: Served) -> None:
    """Alertmanager retries a 429 group; Retry-After says when the next one is taken."""
    async with gateway_for(served) as (http, app):
        app.state.events_rate_limiter = RateLimiter(2, served.clock)  # 2 per minute
        url = f"/v1/alertmanager/{PAYMENTS_KEY}"
        replies = [await http.post(url, json=WEBHOOK) for _ in range(3)]
        assert [reply.status_code for reply in replies] == [200, 200, 429]
        assert replies[2].headers["Retry-After"] == "30"
        served.clock.advance(seconds=30)
        assert (await http.post(url, json=WEBHOOK)).status_code == 200


async def test_a_key_over_its_rate_is_refused_before_its_body_is_parsed(served: Served) -> None:
    """Over its rate, a payload with no resolved alert gets 429 without being parsed (so
    a storm's refusals cost little): even a body that is no JSON. One that may hold a
    resolve (the word in any case, or a JSON escape) is parsed and its resolves applied."""
    async with gateway_for(served) as (http, app):
        app.state.events_rate_limiter = RateLimiter(1, served.clock)  # 1 per minute
        url = f"/v1/alertmanager/{PAYMENTS_KEY}"
        assert (await http.post(url, json=WEBHOOK)).status_code == 200
        broken = b'{"alerts": [{"status": "firing", '  # cut off: not JSON
        refused = await http.post(url, content=broken)
        assert (refused.status_code, refused.headers["Retry-After"]) == (429, "60")
        assert refused.json() == {
            "status": "error",
            "message": "rate limit exceeded",
            "resolved": 0,
        }
        # not cheaply refused: it may hold a resolve, so it is parsed (and is no JSON)
        for maybe in (b'{"alerts": [{"status": "RESOLVED", ', b'{"status": "\\u0072", '):
            reply = await http.post(url, content=maybe)
            assert reply.status_code == 400, maybe
        # under its rate, the same broken body is parsed: 400, not 429
        served.clock.advance(seconds=60)
        assert (await http.post(url, content=broken)).status_code == 400


async def test_one_key_cannot_hold_every_trigger_in_flight(served: Served) -> None:
    """A payload's firing alerts count against the key's triggers in progress (shared
    with the Events API): past the cap, 429 with Retry-After 1, its resolves applied;
    another key, and a payload of resolves alone, are taken."""
    async with gateway_for(served) as (http, app):
        counts = app.state.events_in_flight = InFlight(limit=4)
        url = f"/v1/alertmanager/{PAYMENTS_KEY}"
        assert (await http.post(url, json=_changed(["alerts"], [_alert(1)]))).status_code == 200
        assert counts.enter(PAYMENTS_KEY, 3)  # three triggers of the key in progress
        two = _changed(["alerts"], [_alert(2), _alert(3)])
        refused = await http.post(url, json=two)
        assert (refused.status_code, refused.headers["Retry-After"]) == (429, "1")
        assert await _incident(served, "fp00002") is None
        resolved = copy.deepcopy(_alert(1)) | {"status": "resolved"}
        mixed = await http.post(url, json=_changed(["alerts"], [_alert(2), _alert(3), resolved]))
        assert (mixed.status_code, mixed.json()["resolved"]) == (429, 1)
        assert await _incident(served, "fp00001") is None  # resolved though refused
        one = await http.post(url, json=_changed(["alerts"], [_alert(2)]))
        assert one.status_code == 200  # one more fits under the cap
        assert counts.enter(PAYMENTS_KEY, 1) and not counts.enter(PAYMENTS_KEY, 1)
        counts.leave(PAYMENTS_KEY, 4)
        assert len(counts) == 0  # every taken payload left the count
        assert (await http.post(url, json=two)).status_code == 200
        assert await _incident(served, "fp00003") is not None


async def test_resolves_are_taken_over_the_rate(served: Served) -> None:
    """A key over its rate still resolves: a payload of resolved alerts is taken, and a
    mixed one has its resolves applied while its firing alerts get 429 to be sent again."""
    async with gateway_for(served) as (http, app):
        app.state.events_rate_limiter = RateLimiter(1, served.clock)  # 1 per minute
        url = f"/v1/alertmanager/{PAYMENTS_KEY}"
        firing = _changed(["alerts"], [_alert(1), _alert(2)])
        assert (await http.post(url, json=firing)).status_code == 200
        assert (await http.post(url, json=firing)).status_code == 429
        resolved = copy.deepcopy(_alert(1)) | {"status": "resolved"}
        reply = await http.post(url, json=_changed(["alerts"], [resolved]))
        assert reply.status_code == 200, reply.text
        assert await _incident(served, "fp00001") is None
        both = _changed(["alerts"], [_alert(3), copy.deepcopy(_alert(2)) | {"status": "resolved"}])
        mixed = await http.post(url, json=both)
        assert mixed.status_code == 429 and mixed.json()["resolved"] == 1
        assert await _incident(served, "fp00002") is None
        assert await _incident(served, "fp00003") is None
