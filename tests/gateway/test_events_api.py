"""`POST /v2/enqueue` (PagerDuty Events API v2) in front of a real incidents gRPC server.

The examples are PagerDuty's own (developer-docs, "Send an Alert Event"), with the sample
routing key replaced by a service's; the Alertmanager payloads are what its
notify/pagerduty code sends (a trigger, its repeat, and the resolve with a payload)."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.incidents.harness import (
    PAYMENTS_KEY,
    Served,
    create_payments,
    event_kinds,
    events_of,
    gateway_for,
    serve_incidents,
    snapshot,
)
from tocsin.gateway.app import EventsFastPath
from tocsin.gateway.events_api import RateLimiter
from tocsin.runtime.clock import ManualClock
from tocsin.v1 import common_pb2, incidents_pb2

PD_TRIGGER_EXAMPLE: dict[str, Any] = {
    "payload": {
        "summary": "Example alert on host1.example.com",
        "timestamp": "2015-07-17T08:42:58.315+0000",
        "source": (
            "monitoringtool:cloudvendor:central-region-dc-01:852559987:cluster/api-stats-prod-003"
        ),
        "severity": "info",
        "component": "postgres",
        "group": "prod-datapipe",
        "class": "deploy",
        "custom_details": {"ping time": "1500ms", "load avg": 0.75},
    },
    "routing_key": "samplekeyhere",
    "dedup_key": "samplekeyhere",
    "images": [
        {
            "src": "https://www.pagerduty.com/wp-content/uploads/2016/05/pagerduty-logo-green.png",
            "href": "https://example.com/",
            "alt": "Example text",
        }
    ],
    "links": [{"href": "https://example.com/", "text": "Link text"}],
    "event_action": "trigger",
    "client": "Sample Monitoring Service",
    "client_url": "https://monitoring.example.com",
}
PD_ACK_EXAMPLE = {
    "routing_key": "routingkeyhere",
    "dedup_key": "dedupkeyhere",
    "event_action": "acknowledge",
}
PD_RESOLVE_EXAMPLE = {
    "routing_key": "routingkeyhere",
    "dedup_key": "dedupkeyhere",
    "event_action": "resolve",
}

# What Alertmanager's pagerduty notifier posts (v2) for a group: dedup_key is the SHA-256
# of the group key, details are its default templates, empty images/links are sent.
AM_DEDUP = "a3f5b1c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e0f2a4b6c8d0e2f4a6"
ALERTMANAGER_TRIGGER: dict[str, Any] = {
    "routing_key": PAYMENTS_KEY,
    "dedup_key": AM_DEDUP,
    "event_action": "trigger",
    "payload": {
        "summary": "[FIRING:2] HighErrorRate payments-api (prod)",
        "source": "Alertmanager",
        "severity": "error",
        "custom_details": {
            "firing": "Labels:\n - alertname = HighErrorRate\n - instance = api-1\n",
            "num_firing": "2",
            "num_resolved": "0",
            "resolved": "",
        },
    },
    "client": "Alertmanager",
    "client_url": "http://alertmanager.example:9093/#/alerts?receiver=tocsin",
    "images": [],
    "links": [],
}


def _with_key(event: dict[str, Any], **changes: Any) -> dict[str, Any]:
    result = copy.deepcopy(event)
    result["routing_key"] = PAYMENTS_KEY
    result.update(changes)
    return result


@pytest.fixture
async def gateway(served: Served) -> AsyncIterator[tuple[httpx.AsyncClient, EventsFastPath]]:
    async with gateway_for(served) as pair:
        yield pair


@pytest.fixture
def http(gateway: tuple[httpx.AsyncClient, EventsFastPath]) -> httpx.AsyncClient:
    return gateway[0]


async def _open_incident(served: Served, dedup_key: str) -> incidents_pb2.Incident | None:
    incident_id = await served.running.store.find_open("payments-api", dedup_key)
    if incident_id is None:
        return None
    reply = await served.stub.GetIncident(
        incidents_pb2.GetIncidentRequest(incident_id=incident_id, include_alerts=True)
    )
    return reply.incident


async def test_pagerduty_documentation_examples(served: Served, http: httpx.AsyncClient) -> None:
    reply = await http.post("/v2/enqueue", json=_with_key(PD_TRIGGER_EXAMPLE))
    assert reply.status_code == 202
    assert reply.json() == {
        "status": "success",
        "message": "Event processed",
        "dedup_key": "samplekeyhere",
    }
    incident = await _open_incident(served, "samplekeyhere")
    assert incident is not None
    assert incident.summary == "Example alert on host1.example.com"
    assert incident.severity == common_pb2.SEVERITY_INFO
    alert = incident.alerts[0]
    assert alert.source.startswith("monitoringtool:cloudvendor")
    assert (alert.component, alert.group, getattr(alert, "class")) == (
        "postgres",
        "prod-datapipe",
        "deploy",
    )
    assert dict(alert.details) == {"ping time": "1500ms", "load avg": 0.75}
    assert alert.occurred_at.ToJsonString() == "2015-07-17T08:42:58.315Z"
    assert alert.channel == common_pb2.CHANNEL_EVENTS_API
    assert [(link.href, link.text) for link in alert.links] == [
        ("https://example.com/", "Link text"),
        (PD_TRIGGER_EXAMPLE["images"][0]["src"], "Example text"),
        ("https://example.com/", "Example text"),
        ("https://monitoring.example.com", "Sample Monitoring Service"),
    ]
    events = await events_of(served.redis, incident.id)
    assert events[0].actor.display == "Sample Monitoring Service"

    ack = _with_key(PD_ACK_EXAMPLE, dedup_key="samplekeyhere")
    assert (await http.post("/v2/enqueue", json=ack)).status_code == 202
    resolve = _with_key(PD_RESOLVE_EXAMPLE, dedup_key="samplekeyhere")
    reply = await http.post("/v2/enqueue", json=resolve)
    assert reply.status_code == 202
    assert reply.json()["dedup_key"] == "samplekeyhere"
    assert await _open_incident(served, "samplekeyhere") is None
    kinds = event_kinds(await events_of(served.redis, incident.id))
    assert kinds == ["TRIGGERED", "ACKNOWLEDGED", "RESOLVED"]


async def test_the_sample_routing_key_itself_is_refused(
    served: Served, http: httpx.AsyncClient
) -> None:
    for example in (PD_TRIGGER_EXAMPLE, PD_ACK_EXAMPLE, PD_RESOLVE_EXAMPLE):
        reply = await http.post("/v2/enqueue", json=example)
        assert reply.status_code == 400
        assert reply.json()["status"] == "invalid event"
        assert reply.json()["errors"] == [
            "Length of 'routing_key' is incorrect (should be 32 characters)"
        ]


async def test_follow_ups_for_unknown_or_resolved_keys_change_nothing(
    served: Served, http: httpx.AsyncClient
) -> None:
    before = await snapshot(served.redis)
    for event in (PD_ACK_EXAMPLE, PD_RESOLVE_EXAMPLE):
        reply = await http.post("/v2/enqueue", json=_with_key(event))
        assert reply.status_code == 202
        assert reply.json()["dedup_key"] == "dedupkeyhere"
    assert await snapshot(served.redis) == before

    trigger = _with_key(PD_TRIGGER_EXAMPLE, dedup_key="once")
    await http.post("/v2/enqueue", json=trigger)
    await http.post("/v2/enqueue", json=_with_key(PD_RESOLVE_EXAMPLE, dedup_key="once"))
    after_resolve = await snapshot(served.redis)
    for event in (PD_ACK_EXAMPLE, PD_RESOLVE_EXAMPLE):
        reply = await http.post("/v2/enqueue", json=_with_key(event, dedup_key="once"))
        assert reply.status_code == 202
    assert await snapshot(served.redis) == after_resolve


async def test_a_trigger_without_dedup_key_gets_one(
    served: Served, http: httpx.AsyncClient
) -> None:
    event = _with_key(PD_TRIGGER_EXAMPLE)
    del event["dedup_key"]
    first = (await http.post("/v2/enqueue", json=event)).json()["dedup_key"]
    second = (await http.post("/v2/enqueue", json=event)).json()["dedup_key"]
    assert len(first) == 32 and first != second
    assert await _open_incident(served, first) is not None


async def test_alertmanager_pagerduty_config_trigger_repeat_resolve(
    served: Served, http: httpx.AsyncClient
) -> None:
    for _ in range(2):  # the first notification, then a repeat_interval repeat
        reply = await http.post("/v2/enqueue", json=ALERTMANAGER_TRIGGER)
        assert reply.status_code == 202
        assert reply.json()["dedup_key"] == AM_DEDUP
    incident = await _open_incident(served, AM_DEDUP)
    assert incident is not None
    assert incident.alert_count == 2
    assert incident.severity == common_pb2.SEVERITY_ERROR
    assert incident.alerts[0].details["num_firing"] == "2"
    resolve = copy.deepcopy(ALERTMANAGER_TRIGGER)
    resolve["event_action"] = "resolve"
    resolve["payload"]["summary"] = "[RESOLVED] HighErrorRate payments-api (prod)"
    assert (await http.post("/v2/enqueue", json=resolve)).status_code == 202
    assert await _open_incident(served, AM_DEDUP) is None
    kinds = event_kinds(await events_of(served.redis, incident.id))
    assert kinds == ["TRIGGERED", "ALERT_ADDED", "RESOLVED"]


def _trigger(**payload_changes: Any) -> dict[str, Any]:
    event = _with_key(PD_TRIGGER_EXAMPLE)
    for name, value in payload_changes.items():
        if value is None:
            del event["payload"][name]
        else:
            event["payload"][name] = value
    return event


BAD_EVENTS: list[tuple[Any, str]] = [
    (["not", "an", "object"], "event must be a JSON object"),
    ({"event_action": "trigger"}, "'routing_key' is missing"),
    (_with_key(PD_TRIGGER_EXAMPLE, event_action="explode"), "'event_action' is invalid"),
    (_with_key(PD_TRIGGER_EXAMPLE, payload=None), "'payload' is missing"),
    (_with_key(PD_TRIGGER_EXAMPLE, payload="text"), "'payload' must be an object"),
    (_trigger(summary=None), "'payload.summary' is missing"),
    (_trigger(summary=""), "'payload.summary' is missing"),
    (_trigger(summary=42), "'payload.summary' must be a string"),
    (_trigger(summary="x" * 1025), "'payload.summary' is too long (maximum is 1024 characters)"),
    (_trigger(summary="two\nlines"), "'payload.summary' must not contain control characters"),
    (_trigger(source=None), "'payload.source' is missing"),
    (_trigger(source="host\x07"), "'payload.source' must not contain control characters"),
    (_trigger(severity=None), "'payload.severity' is missing"),
    (_trigger(severity="fatal"), "'payload.severity' is invalid"),
    (_trigger(timestamp="yesterday"), "'payload.timestamp' is not an ISO 8601 time"),
    (_trigger(custom_details=[1, 2]), "'payload.custom_details' must be an object"),
    (_trigger(custom_details={"bad": "\ud800"}), "'payload.custom_details' must hold valid"),
    (_trigger(custom_details={"blob": "x" * 70_000}), "'payload.custom_details' must be at most"),
    (_with_key(PD_TRIGGER_EXAMPLE, links="https://x"), "'links' must be a list of objects"),
    (_with_key(PD_TRIGGER_EXAMPLE, links=[{"text": "no href"}]), "'links[0].href' is missing"),
    (
        _with_key(PD_TRIGGER_EXAMPLE, links=[{"href": "javascript:alert(1)"}]),
        "'links[0].href' must be an http:// or https:// URL",
    ),
    (
        _with_key(PD_TRIGGER_EXAMPLE, images=[{"src": "file:///etc/passwd"}]),
        "'images[0].src' must be an http:// or https:// URL",
    ),
    (_with_key(PD_TRIGGER_EXAMPLE, client="bell\x07"), "'client' must not contain control"),
    (_with_key(PD_TRIGGER_EXAMPLE, dedup_key="k" * 256), "'dedup_key' is too long"),
    (_with_key(PD_TRIGGER_EXAMPLE, dedup_key="tab\tkey"), "'dedup_key' must not contain control"),
    (_with_key(PD_ACK_EXAMPLE, dedup_key=None), "'dedup_key' is missing"),
    (_with_key(PD_TRIGGER_EXAMPLE, routing_key="f" * 32), "'routing_key' does not match any"),
]


@pytest.mark.parametrize(("body", "error"), BAD_EVENTS)
async def test_bad_events_name_the_field_and_write_nothing(
    served: Served, http: httpx.AsyncClient, body: Any, error: str
) -> None:
    before = await snapshot(served.redis)
    # json.dumps escapes non-ASCII, so a lone surrogate arrives as the JSON text "\ud800".
    reply = await http.post("/v2/enqueue", content=json.dumps(body))
    assert reply.status_code == 400, reply.text
    assert reply.json()["message"] == "Event object is invalid"
    assert any(e.startswith(error) for e in reply.json()["errors"]), reply.json()
    assert await snapshot(served.redis) == before


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b'{"routing_key": ', "body is not valid JSON"),
        (b'{"routing_key": "\xff\xfe"}', "body is not valid UTF-8"),
        (b"x" * (512 * 1024 + 1), "body is larger than 524288 bytes"),
    ],
)
async def test_unreadable_bodies_are_refused(
    served: Served, http: httpx.AsyncClient, content: bytes, error: str
) -> None:
    before = await snapshot(served.redis)
    reply = await http.post(
        "/v2/enqueue", content=content, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400
    assert reply.json()["errors"][0].startswith(error)
    assert await snapshot(served.redis) == before


async def test_a_routing_key_over_its_rate_is_throttled_until_tokens_return(
    served: Served, gateway: tuple[httpx.AsyncClient, EventsFastPath]
) -> None:
    http, app = gateway
    app.state.events_rate_limiter = RateLimiter(3, served.clock)  # 3 per minute
    event = _with_key(PD_TRIGGER_EXAMPLE)
    statuses = [(await http.post("/v2/enqueue", json=event)).status_code for _ in range(4)]
    assert statuses == [202, 202, 202, 429]
    incident = await _open_incident(served, "samplekeyhere")
    assert incident is not None and incident.alert_count == 3
    served.clock.advance(seconds=20)  # one token back
    assert (await http.post("/v2/enqueue", json=event)).status_code == 202
    assert (await http.post("/v2/enqueue", json=event)).status_code == 429


def test_rate_limiter_memory_is_bounded() -> None:
    clock = ManualClock()
    limiter = RateLimiter(10, clock, max_keys=100)
    for n in range(1000):
        assert limiter.allow(f"key-{n}")
    assert len(limiter._buckets) <= 100
    assert RateLimiter(0, clock).allow("any")  # 0 = no limit


async def test_an_unreachable_incidents_service_is_a_retryable_503(
    redis: Redis, clock: ManualClock
) -> None:
    async with serve_incidents(redis, clock) as served:
        await create_payments(served.stub)
    # The server has stopped: the gateway cannot reach it.
    async with gateway_for(served) as (http, _app):
        reply = await http.post("/v2/enqueue", json=_with_key(PD_TRIGGER_EXAMPLE))
    assert reply.status_code == 503


async def test_only_a_post_to_the_exact_path_takes_the_fast_path(http: httpx.AsyncClient) -> None:
    """Everything else still goes through Starlette's routing."""
    assert (await http.get("/v2/enqueue")).status_code == 405
    assert (await http.post("/v2/enqueue/more", json={})).status_code == 404
    reply = await http.post("/v2/enqueue", json={"event_action": "trigger"})
    assert reply.status_code == 400
    assert "'routing_key' is missing" in reply.json()["errors"]
