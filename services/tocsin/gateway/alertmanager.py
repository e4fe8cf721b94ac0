"""`POST /v1/alertmanager[/{key}]`: Prometheus Alertmanager's `webhook_configs` payload.

Configure Alertmanager with `url: https://tocsin.example/v1/alertmanager/<integration
key>`, or with the plain path and `http_config: {authorization: {credentials: <key>}}`
(sent as `Authorization: Bearer <key>`). Each alert of the payload (version "4") is one
incident: its fingerprint is the dedup key, `firing` triggers (a repeat joins the open
incident), `resolved` resolves (nothing open: nothing to do).

Mapping: summary = annotation `summary`, else `description`, else `alertname` (whitespace
folded to one line, cut at 1024 characters as Alertmanager's own PagerDuty notifier
does); severity from label `severity` (critical/page, error/high, warning/warn, info/low/
none; anything else or absent = critical, so an alert routed to paging pages); source =
label `instance`, else `job`; component = `job`; group = `namespace`; class =
`alertname`; details = labels, annotations and times; links = generatorURL and the
Alertmanager's externalURL.

Every alert is checked before any is sent, so a bad payload changes nothing. Replies:
200 `{"status": "success", "triggered": n, "resolved": m}`; 400 naming the field; 401
without a valid key; 413 over 2 MiB; 429/503 for Alertmanager to retry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tocsin.client.client import TocsinClient
from tocsin.gateway.events_api import (
    RPC_TIMEOUT_S,
    BadEvent,
    Fields,
    describe,
    json_struct,
    parse_timestamp,
    rate_limiter,
    read_json,
    rpc_violations,
    unavailable,
)
from tocsin.incidents import domain, validation
from tocsin.v1 import common_pb2, incidents_pb2

MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_ALERTS = 1000
SEVERITIES = {
    "critical": common_pb2.SEVERITY_CRITICAL,
    "page": common_pb2.SEVERITY_CRITICAL,
    "error": common_pb2.SEVERITY_ERROR,
    "high": common_pb2.SEVERITY_ERROR,
    "warning": common_pb2.SEVERITY_WARNING,
    "warn": common_pb2.SEVERITY_WARNING,
    "info": common_pb2.SEVERITY_INFO,
    "low": common_pb2.SEVERITY_INFO,
    "none": common_pb2.SEVERITY_INFO,
}
_WHITESPACE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")
_TRIGGER_NAMES = {
    "dedup_key": "fingerprint",
    "summary": "annotations.summary",
    "source": "labels.instance",
    "component": "labels.job",
    "group": "labels.namespace",
    "class": "labels.alertname",
    "details": "annotations",
    "occurred_at": "startsAt",
}


@dataclass
class AlertAction:
    resolve: bool
    fingerprint: str
    trigger: incidents_pb2.TriggerRequest | None
    path: str


def _labels(fields: Fields, name: str) -> dict[str, str]:
    value = fields.obj(name) or {}
    if not all(isinstance(v, str) for v in value.values()):
        fields.errors.append(f"'{fields.path(name)}' must map names to strings")
        return {}
    return dict(value)


def _one_line(text: str) -> str:
    line = _WHITESPACE.sub(" ", text).strip()
    if len(line) > validation.MAX_SUMMARY:
        line = line[: validation.MAX_SUMMARY - 1] + "…"
    return line


def _details(alert: Mapping[str, Any], webhook: Mapping[str, Any]) -> Struct | None:
    details: dict[str, Any] = {
        key: alert.get(key)
        for key in ("labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint")
    }
    details |= {key: webhook.get(key) for key in ("receiver", "groupKey", "externalURL")}
    struct = json_struct(details)
    if struct is not None and struct.ByteSize() > validation.MAX_DETAILS_BYTES:
        details["annotations"] = "omitted: larger than 64 KiB"
        struct = json_struct(details)
    return struct


def _link(request: incidents_pb2.TriggerRequest, href: Any, text: str) -> None:
    """Add a link only when it is one (these URLs are Alertmanager's, not the user's)."""
    if isinstance(href, str) and not validation.links_violations([common_pb2.Link(href=href)]):
        request.links.add(href=href, text=text)


def parse_webhook(body: Any, key: str) -> list[AlertAction]:
    """The actions of a webhook payload; BadEvent names every problem."""
    if not isinstance(body, dict):
        raise BadEvent(["payload must be a JSON object"])
    webhook = Fields(body)
    version = webhook.text("version", required=True)
    if version and version != "4":
        webhook.errors.append(f"'version' must be \"4\", got {version!r}")
    receiver = webhook.text("receiver", max_len=validation.MAX_DISPLAY)
    alerts = webhook.items("alerts")
    if "alerts" not in body:
        webhook.errors.append("'alerts' is missing")
    if len(alerts) > MAX_ALERTS:
        webhook.errors.append(f"'alerts' has more than {MAX_ALERTS} alerts")
        alerts = []
    actions = [
        _action(webhook.nested(alert, f"alerts[{i}]."), alert, body, key, receiver)
        for i, alert in enumerate(alerts)
    ]
    for action in actions:
        if action.trigger is not None:
            _check(action, webhook.errors)
    if webhook.errors:
        raise BadEvent(webhook.errors)
    return actions


def _action(
    fields: Fields, alert: Mapping[str, Any], body: Mapping[str, Any], key: str, receiver: str
) -> AlertAction:
    status = fields.text("status", required=True)
    if status and status not in ("firing", "resolved"):
        fields.errors.append(f"'{fields.path('status')}' must be firing or resolved")
    fingerprint = fields.text("fingerprint", required=True, max_len=validation.MAX_DEDUP_KEY)
    labels = _labels(fields, "labels")
    annotations = _labels(fields, "annotations")
    if status != "firing":
        return AlertAction(True, fingerprint, None, fields.prefix)
    summary = annotations.get("summary") or annotations.get("description")
    request = incidents_pb2.TriggerRequest(
        integration_key=key,
        dedup_key=fingerprint,
        summary=_one_line(summary or labels.get("alertname", "")),
        severity=SEVERITIES.get(labels.get("severity", "").lower(), common_pb2.SEVERITY_CRITICAL),
        source=labels.get("instance") or labels.get("job", ""),
        component=labels.get("job", ""),
        group=labels.get("namespace", ""),
        actor=common_pb2.Actor(
            channel=common_pb2.CHANNEL_ALERTMANAGER, display=receiver or "alertmanager"
        ),
    )
    setattr(request, "class", labels.get("alertname", ""))
    starts = fields.text("startsAt")
    if starts:
        parsed = parse_timestamp(starts)
        if parsed is None:
            fields.errors.append(f"'{fields.path('startsAt')}' is not an RFC 3339 time")
        else:
            request.occurred_at.CopyFrom(parsed)
    details = _details(alert, body)
    if details is None:
        fields.errors.append(f"'{fields.path('annotations')}' must hold valid Unicode text")
    else:
        request.details.CopyFrom(details)
    _link(request, alert.get("generatorURL"), "Source")
    _link(request, body.get("externalURL"), "Alertmanager")
    return AlertAction(False, fingerprint, request, fields.prefix)


def _check(action: AlertAction, errors: list[str]) -> None:
    assert action.trigger is not None
    trigger = action.trigger
    violations = validation.trigger_violations(
        domain.alert_of(trigger), trigger.dedup_key, trigger.actor
    )
    errors += describe(violations, _names(action.path))


def _names(prefix: str) -> dict[str, str]:
    names = {field: f"{prefix}{path}" for field, path in _TRIGGER_NAMES.items()}
    names["actor.display"] = "receiver"
    return names


def integration_key(request: Request) -> str:
    key = request.path_params.get("key", "")
    if not key:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        key = credentials.strip() if scheme.lower() == "bearer" else ""
    return key


def _unauthorized(message: str) -> JSONResponse:
    return JSONResponse({"status": "error", "message": message}, status_code=401)


async def webhook(request: Request) -> JSONResponse:
    key = integration_key(request)
    if not key:
        return _unauthorized(
            "missing integration key: POST to /v1/alertmanager/<key> or send "
            "'Authorization: Bearer <key>'"
        )
    if validation.integration_key_violations("key", key):
        return _unauthorized("integration key must be 32 letters or digits")
    try:
        actions = parse_webhook(await read_json(request, MAX_BODY_BYTES, too_large=413), key)
    except BadEvent as bad:
        return JSONResponse(
            {"status": "error", "message": "invalid webhook payload", "errors": bad.errors},
            status_code=bad.status,
        )
    if not rate_limiter(request.app).allow(key):
        return JSONResponse({"status": "error", "message": "rate limit exceeded"}, 429)
    return await _apply(request.app.state.client, key, actions)


async def _apply(client: TocsinClient, key: str, actions: Sequence[AlertAction]) -> JSONResponse:
    triggered = resolved = 0
    for action in actions:
        try:
            if action.trigger is not None:
                await client.trigger(action.trigger, timeout=RPC_TIMEOUT_S)
                triggered += 1
            else:
                await client.incidents.Resolve(
                    incidents_pb2.ResolveRequest(
                        integration_key=key,
                        dedup_key=action.fingerprint,
                        actor=common_pb2.Actor(channel=common_pb2.CHANNEL_ALERTMANAGER),
                    ),
                    timeout=RPC_TIMEOUT_S,
                )
                resolved += 1
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if action.trigger is None and code == grpc.StatusCode.NOT_FOUND:
                continue  # nothing open under that fingerprint (or it was resolved already)
            if code == grpc.StatusCode.NOT_FOUND:
                return _unauthorized("unknown integration key")
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                errors = describe(rpc_violations(error), _names(action.path))
                return JSONResponse(
                    {"status": "error", "message": "invalid alert", "errors": errors}, 400
                )
            return unavailable(error)
    return JSONResponse({"status": "success", "triggered": triggered, "resolved": resolved})


routes = [
    Route("/v1/alertmanager", webhook, methods=["POST"]),
    Route("/v1/alertmanager/{key}", webhook, methods=["POST"]),
]
