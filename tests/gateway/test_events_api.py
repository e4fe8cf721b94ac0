"""`POST /v2/enqueue` (PagerDuty Events API v2) in front of a real incidents gRPC server.

The examples are PagerDuty's own (developer-docs, "Send an Alert Event"), with the sample
routing key replaced by a service's; the Alertmanager payloads are what its
notify/pagerduty code sends (a trigger, its repeat, and the resolve with a payload)."""

from __future__ import annotations

import asyncio
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
from tocsin.gateway import events_api
from tocsin.gateway.app import EventsFastPath
from tocsin.gateway.events_api import InFlight, RateLimiter, peek_trigger_key
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


# What cannot be processed at all; everything else pages (NORMALISED below).
BAD_EVENTS: list[tuple[Any, str]] = [
    (["not", "an", "object"], "event must be a JSON object"),
    ({"event_action": "trigger"}, "'routing_key' is missing"),
    (_with_key(PD_TRIGGER_EXAMPLE, event_action="explode"), "'event_action' is invalid"),
    (_with_key(PD_TRIGGER_EXAMPLE, payload=None), "'payload' is missing"),
    (_with_key(PD_TRIGGER_EXAMPLE, payload="text"), "'payload' must be an object"),
    (_trigger(summary=None), "'payload.summary' is missing"),
    (_trigger(summary=""), "'payload.summary' is missing"),
    (_trigger(summary=" \n\t "), "'payload.summary' is missing"),
    (_trigger(summary={"text": "x"}), "'payload.summary' must be a string"),
    (_trigger(custom_details={"blob": "x" * 70_000}), "'payload.custom_details' must be at most"),
    (_trigger(custom_details=nested(21)), "'payload.custom_details' must not nest objects"),
    (_trigger(custom_details=nested(33)), "'payload.custom_details' must not nest objects"),
    (_trigger(custom_details=[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]), "'payload.custom_d"),
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
        (b"[" * 100_000 + b"]" * 100_000, "body is not valid JSON: nested too deeply"),
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


async def test_numbers_no_double_holds_are_refused_by_name(
    served: Served, http: httpx.AsyncClient
) -> None:
    """A 5,000-digit integer made the gateway fail with 500 (Python refuses to read it)."""
    before = await snapshot(served.redis)
    body = json.dumps(_trigger(custom_details={"ok": 1, "n": 0}))
    for huge in ("9" * 5000, "1e999", "-" + "1" * 400):
        reply = await http.post("/v2/enqueue", content=body.replace('"n": 0', f'"n": {huge}'))
        assert reply.status_code == 400, reply.text
        assert reply.json()["errors"] == [
            "'payload.custom_details.n' is a number out of range (at most about 1.8e308)"
        ]
    assert await snapshot(served.redis) == before
    # Big but finite integers are numbers, as JSON senders mean them.
    reply = await http.post("/v2/enqueue", content=body.replace('"n": 0', f'"n": {"9" * 300}'))
    assert reply.status_code == 202


def _payload(**changes: Any) -> dict[str, Any]:
    """A trigger without the example's links, images and client (so links are checked
    alone), with payload fields changed (None removes one)."""
    event = _trigger(**changes)
    for name in ("links", "images", "client", "client_url"):
        del event[name]
    event["dedup_key"] = "odd"
    return event


def _event(**changes: Any) -> dict[str, Any]:
    event = _payload()
    event.update(changes)
    return event


LONG = "Disk full on db-1\n" + "the volume /var/lib/postgresql is 98% full; " * 40
# (event, what the stored alert shows): each was refused with 400 (or failed with 500)
# before; an alert that can be understood pages.
NORMALISED: list[tuple[dict[str, Any], Any]] = [
    (_payload(summary="two\nlines\tand\r\na tab"), {"summary": "two lines and a tab"}),
    (
        _payload(summary=LONG),
        {"summary": " ".join(LONG.split())[:1023] + "…", "details.summary_full": LONG},
    ),
    (_payload(summary=42), {"summary": "42"}),
    (_payload(summary="lone \ud83d surrogate"), {"summary": "lone \ufffd surrogate"}),
    (_payload(source="host\x07", component="c" * 1100), {"source": "host"}),
    (_payload(component="c" * 1100), {"details.component_full": "c" * 1100}),
    (_payload(source=None), {"source": ""}),
    (_payload(severity="CRITICAL"), {"severity": common_pb2.SEVERITY_CRITICAL}),
    (_payload(severity=" Warning "), {"severity": common_pb2.SEVERITY_WARNING}),
    (_payload(severity="err"), {"severity": common_pb2.SEVERITY_ERROR}),
    (_payload(severity="informational"), {"severity": common_pb2.SEVERITY_INFO}),
    (_payload(severity=None), {"severity": common_pb2.SEVERITY_CRITICAL}),
    (
        _payload(severity="sev-unknown"),
        {"severity": common_pb2.SEVERITY_CRITICAL, "details.severity_original": "sev-unknown"},
    ),
    (_payload(timestamp=1700000000), {"occurred_at": "2023-11-14T22:13:20Z"}),
    (_payload(timestamp=1700000000123), {"occurred_at": "2023-11-14T22:13:20.123Z"}),
    (_payload(timestamp="1700000000"), {"occurred_at": "2023-11-14T22:13:20Z"}),
    (
        _payload(timestamp="Tue, 14 Nov 2023 23:13:20 +0100"),
        {"occurred_at": "2023-11-14T22:13:20Z"},
    ),
    (_payload(timestamp="2023-11-14T22:13:20Z"), {"occurred_at": "2023-11-14T22:13:20Z"}),
    (
        _payload(timestamp="yesterday"),
        {"occurred_at": None, "details.timestamp_original": "yesterday"},
    ),
    (_payload(custom_details="disk is full"), {"details.details": "disk is full"}),
    (_payload(custom_details=[1, "two"]), {"details.details": [1, "two"]}),
    (_payload(custom_details={"bad": "\ud800"}), {"details.bad": "\ufffd"}),
    (
        _event(
            links=[
                {"href": ""},
                {"href": "javascript:alert(1)"},
                {"href": "grafana.example/d/abc", "text": "Dash\nboard"},
                "https://runbooks.example/disk",
                42,
            ],
            images=[{"src": "file:///etc/passwd"}, {"src": "https://img.example/x.png"}],
        ),
        {
            "links": [
                ("https://grafana.example/d/abc", "Dash board"),
                ("https://runbooks.example/disk", ""),
                ("https://img.example/x.png", "image"),
            ],
            "details.links_dropped": ["javascript:alert(1)", "file:///etc/passwd"],
        },
    ),
    (_event(links="https://x.example/one"), {"links": [("https://x.example/one", "")]}),
    (
        _event(client="Grafana\x07", client_url="grafana.example:3000/alerting"),
        {"links": [("https://grafana.example:3000/alerting", "Grafana")], "actor": "Grafana"},
    ),
    (_event(client_url="not a url at all"), {"links": []}),
    (_event(event_action="TRIGGER"), {"summary": PD_TRIGGER_EXAMPLE["payload"]["summary"]}),
    (_event(dedup_key="tab\tkey"), {"dedup_key": "tab key"}),
    (_event(dedup_key=12345), {"dedup_key": "12345"}),
]


@pytest.mark.parametrize(("body", "expected"), NORMALISED)
async def test_odd_but_understandable_events_page(
    served: Served, http: httpx.AsyncClient, body: dict[str, Any], expected: dict[str, Any]
) -> None:
    reply = await http.post("/v2/enqueue", content=json.dumps(body))
    assert reply.status_code == 202, reply.text
    dedup_key = reply.json()["dedup_key"]
    assert dedup_key == expected.get("dedup_key", dedup_key)
    incident = await _open_incident(served, dedup_key)
    assert incident is not None
    [alert] = incident.alerts
    details = MessageToDict(alert.details)
    for name, value in expected.items():
        if name.startswith("details."):
            assert details[name.removeprefix("details.")] == value
        elif name == "links":
            assert [(link.href, link.text) for link in alert.links] == value
        elif name == "occurred_at":
            shown = alert.occurred_at.ToJsonString() if alert.HasField("occurred_at") else None
            assert shown == value
        elif name == "actor":
            [event] = await events_of(served.redis, incident.id)
            assert event.actor.display == value
        elif name != "dedup_key":
            assert getattr(alert, name) == value, name
    assert incident.summary == alert.summary


async def test_a_long_dedup_key_pages_and_resolves(served: Served, http: httpx.AsyncClient) -> None:
    key = "group:" + "x" * 400
    reply = await http.post("/v2/enqueue", json=_with_key(PD_TRIGGER_EXAMPLE, dedup_key=key))
    assert reply.status_code == 202
    filed = reply.json()["dedup_key"]
    assert len(filed) == 255 and filed.startswith("group:xxx")
    assert await _open_incident(served, filed) is not None
    resolve = _with_key(PD_RESOLVE_EXAMPLE, dedup_key=key)
    assert (await http.post("/v2/enqueue", json=resolve)).status_code == 202
    assert await _open_incident(served, filed) is None


async def test_a_poisoned_event_fails_alone(served: Served, http: httpx.AsyncClient) -> None:
    """Details nested 33 deep passed the gateway and made the batch it shared with other
    alerts undecodable: every alert of that batch got 500."""
    events = [_with_key(PD_TRIGGER_EXAMPLE, dedup_key=f"ok-{n}") for n in range(40)]
    events[17] = _trigger(custom_details=nested(33))
    replies = await asyncio.gather(*(http.post("/v2/enqueue", json=event) for event in events))
    statuses = [reply.status_code for reply in replies]
    assert statuses[17] == 400
    assert replies[17].json()["errors"] == [
        "'payload.custom_details' must not nest objects or lists more than 20 levels deep"
    ]
    assert statuses[:17] + statuses[18:] == [202] * 39


async def test_a_routing_key_over_its_rate_is_throttled_until_tokens_return(
    served: Served, gateway: tuple[httpx.AsyncClient, EventsFastPath]
) -> None:
    http, app = gateway
    app.state.events_rate_limiter = RateLimiter(3, served.clock)  # 3 per minute
    event = _with_key(PD_TRIGGER_EXAMPLE)
    replies = [await http.post("/v2/enqueue", json=event) for _ in range(4)]
    assert [reply.status_code for reply in replies] == [202, 202, 202, 429]
    # When the next token is back (a token every 20 s), which PagerDuty clients honour.
    assert replies[3].headers["Retry-After"] == "20"
    assert "retry-after" not in replies[2].headers
    incident = await _open_incident(served, "samplekeyhere")
    assert incident is not None and incident.alert_count == 3
    served.clock.advance(seconds=15)
    throttled = await http.post("/v2/enqueue", json=event)
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "5")
    served.clock.advance(seconds=5)  # one token back
    assert (await http.post("/v2/enqueue", json=event)).status_code == 202
    assert (await http.post("/v2/enqueue", json=event)).status_code == 429


async def test_acknowledge_and_resolve_are_never_throttled(
    served: Served, gateway: tuple[httpx.AsyncClient, EventsFastPath]
) -> None:
    """A storm's own routing key, over its rate, can still be acknowledged and resolved
    (they were counted and refused with the triggers)."""
    http, app = gateway
    app.state.events_rate_limiter = RateLimiter(1, served.clock)  # 1 per minute
    event = _with_key(PD_TRIGGER_EXAMPLE)
    assert (await http.post("/v2/enqueue", json=event)).status_code == 202
    assert (await http.post("/v2/enqueue", json=event)).status_code == 429
    ack = _with_key(PD_ACK_EXAMPLE, dedup_key="samplekeyhere")
    for _ in range(3):
        assert (await http.post("/v2/enqueue", json=ack)).status_code == 202
    incident = await _open_incident(served, "samplekeyhere")
    assert incident is not None and incident.status == incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED
    resolve = _with_key(PD_RESOLVE_EXAMPLE, dedup_key="samplekeyhere")
    assert (await http.post("/v2/enqueue", json=resolve)).status_code == 202
    assert await _open_incident(served, "samplekeyhere") is None
    assert (await http.post("/v2/enqueue", json=event)).status_code == 429  # still over


async def test_a_trigger_over_its_rate_is_refused_before_its_json_is_parsed(
    served: Served,
    gateway: tuple[httpx.AsyncClient, EventsFastPath],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refusing a storm must cost the gateway little: no JSON parse, no TriggerRequest."""
    http, app = gateway
    app.state.events_rate_limiter = RateLimiter(1, served.clock)
    event = _with_key(PD_TRIGGER_EXAMPLE)
    assert (await http.post("/v2/enqueue", json=event)).status_code == 202
    parsed: list[bytes] = []
    real_parse = events_api.parse_json

    def counted_parse(body: bytes) -> Any:
        parsed.append(body)
        return real_parse(body)

    monkeypatch.setattr(events_api, "parse_json", counted_parse)
    refused = await http.post("/v2/enqueue", json=event)
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "60")
    assert parsed == []
    # An acknowledgement of the throttled key is parsed and taken.
    ack = _with_key(PD_ACK_EXAMPLE, dedup_key="samplekeyhere")
    assert (await http.post("/v2/enqueue", json=ack)).status_code == 202
    assert len(parsed) == 1


def test_peek_reads_only_plain_triggers() -> None:
    key = PAYMENTS_KEY
    plain = json.dumps(_with_key(PD_TRIGGER_EXAMPLE)).encode()
    assert peek_trigger_key(plain) == key
    spaced = f'{{ "event_action" : " TRIGGER ", "routing_key" :  "{key}" }}'.encode()
    assert peek_trigger_key(spaced) == key
    assert peek_trigger_key(json.dumps(_with_key(PD_ACK_EXAMPLE)).encode()) is None
    # Two candidates (one in the details): not plain, parsed in full.
    two = _with_key(PD_TRIGGER_EXAMPLE)
    two["payload"]["custom_details"] = {"routing_key": "another"}
    assert peek_trigger_key(json.dumps(two).encode()) is None
    # The key inside a string value is escaped, so it is not taken for the field.
    inside = _with_key(PD_TRIGGER_EXAMPLE)
    del inside["routing_key"]
    inside["payload"]["summary"] = f'"routing_key": "{key}"'
    assert peek_trigger_key(json.dumps(inside).encode()) is None
    escaped = plain.replace(b'"routing_key"', b'"routing\\u005fkey"')
    assert peek_trigger_key(escaped) is None


async def test_one_key_cannot_hold_every_trigger_in_flight(
    served: Served, gateway: tuple[httpx.AsyncClient, EventsFastPath]
) -> None:
    """Past MAX_TRIGGERS_IN_FLIGHT triggers of one key waiting on incidents, more of that
    key get 429 with Retry-After 1; other keys, and its acknowledgements, are taken."""
    http, app = gateway
    counts = app.state.events_in_flight = InFlight(limit=2)
    stormy = "stormystormystormystormystormy01"
    assert counts.enter(stormy) and counts.enter(stormy) and not counts.enter(stormy)
    event = _with_key(PD_TRIGGER_EXAMPLE, routing_key=stormy)
    refused = await http.post("/v2/enqueue", json=event)
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "1")
    taken = await http.post("/v2/enqueue", json=_with_key(PD_TRIGGER_EXAMPLE))
    assert taken.status_code == 202
    assert len(counts) == 1  # the taken trigger left the count when it was answered
    counts.leave(stormy)
    reply = await http.post("/v2/enqueue", json=event)
    assert reply.status_code == 400  # taken past the cap: an unknown key, said so
    assert reply.json()["errors"] == ["'routing_key' does not match any service"]


def test_rate_limiter_memory_is_bounded() -> None:
    clock = ManualClock()
    limiter = RateLimiter(10, clock, max_keys=100)
    for n in range(1000):
        assert limiter.allow(f"key-{n}")
    assert len(limiter._buckets) <= 100
    assert RateLimiter(0, clock).allow("any")  # 0 = no limit


def test_retry_after_is_when_the_next_token_is_back() -> None:
    clock = ManualClock()
    limiter = RateLimiter(600, clock)  # 10 a second
    for _ in range(600):
        assert limiter.allow("k")
    assert not limiter.allow("k")
    assert limiter.retry_after_s("k") == 1  # 0.1 s, rounded up to a whole second
    assert limiter.retry_after_s("another") == 1
    slow = RateLimiter(1, clock)  # one a minute
    assert slow.allow("k") and not slow.allow("k")
    assert slow.retry_after_s("k") == 60
    clock.advance(seconds=59.5)
    assert slow.retry_after_s("k") == 1


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
