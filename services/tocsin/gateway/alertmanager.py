"""`POST /v1/alertmanager[/{key}]`: Prometheus Alertmanager's `webhook_configs` payload.

Configure Alertmanager with `url: https://tocsin.example/v1/alertmanager/<integration
key>`, or with the plain path and `http_config: {authorization: {credentials: <key>}}`
(sent as `Authorization: Bearer <key>`). Each alert of the payload (version "4") is one
incident: its fingerprint is the dedup key, `firing` triggers (a repeat joins the open
incident), `resolved` resolves (nothing open: nothing to do).

Mapping: summary = annotation `summary`, else `description`, else label `alertname`;
severity from label `severity` (critical/page, error/high, warning/warn, info/low/none,
in any case; anything else or absent = critical, so an alert routed to paging pages);
source = label `instance`, else `job`; component = `job`; group = `namespace`; class =
`alertname`; details = labels, annotations and times; links = generatorURL and the
Alertmanager's externalURL. The incidents service normalises the rest as for every
sender (multi-line text folded, over-long text cut with "…" and kept whole in the
details, bad links dropped: tocsin.incidents.normalize).

Each alert stands alone: one that cannot be understood (no status firing/resolved, no
summary, description or alertname, details past the limits) is reported and the others
page. Alertmanager retries a whole group on a 5xx and drops it on a 4xx, so replies are:
200 `{"status": "success", "triggered": n, "resolved": m}` when every alert was taken;
200 with `"status": "partial"`, `"rejected": k` and `"errors"` naming each refused
alert's field (`alerts[3].labels.instance ...`) when some were taken (retrying would not
mend the others); 400 with the errors when no alert could be taken (or the body is no
webhook payload); 401 without a valid key; 413 over MAX_BODY_BYTES (16 MiB, about ten
thousand alerts; set `max_alerts` in the webhook config to stay under it); 429/503 when
an alert could not be taken for a reason that may pass (rate limit, incidents service
unavailable), so Alertmanager sends the group again (alerts already taken join their
open incidents; nobody is paged twice). A missing fingerprint is made from the labels.

Admission, as for the Events API (events_api.py): one token of the key's rate
(TOCSIN_EVENTS_API_RATE) per payload with firing alerts. A payload for a key over its
rate that holds no resolved alert is refused (429, `Retry-After`) before its JSON is
parsed, so refusing a storm costs the gateway little. A payload's firing alerts count
against the key's MAX_TRIGGERS_IN_FLIGHT triggers in progress in this gateway process
(shared with the Events API; at most MAX_PAYLOAD_TRIGGERS_IN_FLIGHT per payload): past
it, 429 with `Retry-After: 1`. Resolves are never refused: on a 429 a payload's resolved
alerts are applied and counted (`"resolved"`), its firing ones left for the retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tocsin.client.client import TocsinClient
from tocsin.client.limits import INTEGRATION_KEY_LENGTH, MAX_DETAILS_BYTES, MAX_TEXT_CHARS
from tocsin.gateway.events_api import (
    MAX_TRIGGERS_IN_FLIGHT,
    RPC_TIMEOUT_S,
    BadEvent,
    Fields,
    as_text,
    describe,
    in_flight,
    json_text,
    parse_json,
    parse_time,
    rate_limiter,
    read_body,
    rpc_violations,
    unavailable,
)
from tocsin.v1 import common_pb2, incidents_pb2

MAX_BODY_BYTES = 16 * 1024 * 1024
_DETAIL_TEXT_CHARS = 4096
MAX_CONCURRENT_ALERTS = 256
"""Alerts of one payload in flight at once (the client batches them into few calls)."""
MAX_PAYLOAD_TRIGGERS_IN_FLIGHT = MAX_TRIGGERS_IN_FLIGHT // 2
"""Firing alerts of one payload in flight at once. They count against the routing key's
MAX_TRIGGERS_IN_FLIGHT with the Events API's triggers: a payload whose firing alerts
would pass it gets 429 with `Retry-After: 1` (its resolves applied first)."""
_MAYBE_RESOLVED = re.compile(rb"resolved|\\u", re.IGNORECASE)
"""What any body holding a resolved alert contains: the word (in any case), or a JSON
escape that could spell it. A body without either holds only firing alerts."""
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
_INTEGRATION_KEY = re.compile(f"[A-Za-z0-9]{{{INTEGRATION_KEY_LENGTH}}}")
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


@dataclass
class Outcome:
    """What became of a payload's alerts."""

    triggered: int = 0
    resolved: int = 0
    taken: int = 0
    errors: list[str] = field(default_factory=list)
    rejected: set[str] = field(default_factory=set)
    unknown_key: bool = False
    retry: grpc.aio.AioRpcError | None = None


def _strings(value: Any) -> dict[str, str]:
    """Labels or annotations: an object's values as text (objects and lists as JSON);
    anything but an object is none."""
    if not isinstance(value, dict):
        return {}
    return {str(key): json_text(item) for key, item in value.items() if item is not None}


def _text(value: str) -> str:
    """A text field, capped at MAX_TEXT_CHARS so one alert's request stays far below the
    servers' 4 MiB message limit (the service keeps no more of it anyway)."""
    return value if len(value) <= MAX_TEXT_CHARS else value[: MAX_TEXT_CHARS - 1] + "…"


def _details(
    alert: Mapping[str, Any],
    labels: dict[str, str],
    annotations: dict[str, str],
    webhook: Mapping[str, Any],
) -> Struct:
    """Labels, annotations and times, within MAX_DETAILS_BYTES (annotations, then labels
    are omitted from details too large)."""
    details: dict[str, Any] = {
        "labels": {k: _text(v) for k, v in labels.items()},
        "annotations": {k: _text(v) for k, v in annotations.items()},
    }
    for source, keys in (
        (alert, ("startsAt", "endsAt", "generatorURL", "fingerprint")),
        (webhook, ("receiver", "groupKey", "externalURL")),
    ):
        for key in keys:
            text = as_text(source.get(key))
            if text is not None:
                details[key] = text[:_DETAIL_TEXT_CHARS]
    struct = Struct()
    struct.update(details)
    for omitted in ("annotations", "labels"):
        if struct.ByteSize() <= MAX_DETAILS_BYTES:
            break
        struct[omitted] = "omitted: larger than 64 KiB"
    return struct


def parse_webhook(body: Any, key: str) -> tuple[list[AlertAction], dict[str, list[str]]]:
    """The actions of a webhook payload, and the errors of each alert that cannot be
    understood, by its path (each alert stands alone); BadEvent when the payload itself
    is none."""
    if not isinstance(body, dict):
        raise BadEvent(["payload must be a JSON object"])
    alerts = body.get("alerts")
    if alerts is None:
        raise BadEvent(["'alerts' is missing"])
    if not isinstance(alerts, list):
        raise BadEvent(["'alerts' must be a list of objects"])
    receiver = as_text(body.get("receiver")) or ""
    actions: list[AlertAction] = []
    errors: dict[str, list[str]] = {}
    for i, alert in enumerate(alerts):
        path = f"alerts[{i}]."
        if not isinstance(alert, dict):
            errors[path] = [f"'alerts[{i}]' must be an object"]
            continue
        fields = Fields(alert, path)
        action = _action(fields, alert, body, key, receiver)
        if fields.errors:
            errors[path] = fields.errors
        elif action is not None:
            actions.append(action)
    return actions, errors


def _action(
    fields: Fields, alert: Mapping[str, Any], body: Mapping[str, Any], key: str, receiver: str
) -> AlertAction | None:
    status = fields.text("status", required=True).strip().lower()
    if status and status not in ("firing", "resolved"):
        fields.errors.append(f"'{fields.path('status')}' must be firing or resolved")
    labels = _strings(alert.get("labels"))
    annotations = _strings(alert.get("annotations"))
    fingerprint = fields.text("fingerprint") or _fingerprint(labels)
    if not fingerprint:
        fields.errors.append(f"'{fields.path('fingerprint')}' is missing (and there are no labels)")
    if fields.errors:
        return None
    if status != "firing":
        return AlertAction(True, fingerprint, None, fields.prefix)
    summary = next(
        (
            text
            for text in (
                annotations.get("summary"),
                annotations.get("description"),
                labels.get("alertname"),
            )
            if text and text.strip()
        ),
        "",
    )
    if not summary:
        fields.errors.append(
            f"'{fields.path('annotations.summary')}' is required "
            "(or annotation description, or label alertname)"
        )
        return None
    request = incidents_pb2.TriggerRequest(
        integration_key=key,
        dedup_key=_text(fingerprint),
        summary=_text(summary),
        severity=SEVERITIES.get(
            labels.get("severity", "").strip().lower(), common_pb2.SEVERITY_CRITICAL
        ),
        source=_text(labels.get("instance") or labels.get("job", "")),
        component=_text(labels.get("job", "")),
        group=_text(labels.get("namespace", "")),
        actor=common_pb2.Actor(
            channel=common_pb2.CHANNEL_ALERTMANAGER, display=_text(receiver or "alertmanager")
        ),
    )
    setattr(request, "class", _text(labels.get("alertname", "")))
    starts = parse_time(alert.get("startsAt"))
    if starts is not None:
        request.occurred_at.CopyFrom(starts)
    request.details.CopyFrom(_details(alert, labels, annotations, body))
    for href, text in (
        (alert.get("generatorURL"), "Source"),
        (body.get("externalURL"), "Alertmanager"),
    ):
        if isinstance(href, str) and href:
            request.links.add(href=href, text=text)
    return AlertAction(False, fingerprint, request, fields.prefix)


def _fingerprint(labels: Mapping[str, str]) -> str:
    """A dedup key made from the labels, as Alertmanager's fingerprint is ("" without)."""
    if not labels:
        return ""
    canonical = json.dumps(sorted(labels.items()), ensure_ascii=False)
    return "labels:" + hashlib.sha256(canonical.encode("utf-8", "replace")).hexdigest()[:16]


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
    if not _INTEGRATION_KEY.fullmatch(key):
        return _unauthorized(f"integration key must be {INTEGRATION_KEY_LENGTH} letters or digits")
    limiter = rate_limiter(request.app)
    try:
        body = await read_body(request, MAX_BODY_BYTES, too_large=413)
        if limiter.over(key) and not _MAYBE_RESOLVED.search(body):
            # the cheap refusal: only firing alerts (no resolve to apply), key over its
            # rate: refused before the body is parsed, so a storm costs the gateway little
            return _throttled(0, limiter.retry_after_s(key))
        actions, errors = parse_webhook(parse_json(body), key)
    except BadEvent as bad:
        return JSONResponse(
            {"status": "error", "message": "invalid webhook payload", "errors": bad.errors},
            status_code=bad.status,
        )
    client = request.app.state.client
    firing = sum(1 for action in actions if not action.resolve)
    if firing and not limiter.allow(key):
        # Resolves are never throttled: they are applied now, and the firing alerts are
        # refused for Alertmanager to send again (a resolve sent twice changes nothing).
        return _throttled(await _resolve_only(client, key, actions), limiter.retry_after_s(key))
    weight = min(firing, MAX_PAYLOAD_TRIGGERS_IN_FLIGHT)
    counts = in_flight(request.app)
    if not counts.enter(key, weight):
        # the key has its share of triggers waiting on the incidents service already
        return _throttled(await _resolve_only(client, key, actions), 1)
    try:
        outcome = Outcome(
            errors=[e for found in errors.values() for e in found], rejected=set(errors)
        )
        await _apply(client, key, actions, outcome, weight or MAX_CONCURRENT_ALERTS)
    finally:
        counts.leave(key, weight)
    return _reply(outcome)


def _throttled(resolved: int, retry_after_s: int) -> JSONResponse:
    return JSONResponse(
        {"status": "error", "message": "rate limit exceeded", "resolved": resolved},
        429,
        headers={"Retry-After": str(retry_after_s)},
    )


async def _resolve_only(client: TocsinClient, key: str, actions: Sequence[AlertAction]) -> int:
    """Apply the payload's resolves alone; how many there were."""
    resolves = [action for action in actions if action.resolve]
    await _apply(client, key, resolves, Outcome())
    return len(resolves)


def _reply(outcome: Outcome) -> JSONResponse:
    counts = {"triggered": outcome.triggered, "resolved": outcome.resolved}
    rejected = len(outcome.rejected)
    if outcome.unknown_key and outcome.triggered == 0:
        return _unauthorized("unknown integration key")
    if outcome.retry is not None:  # Alertmanager sends the group again (429 or 5xx)
        response = unavailable(outcome.retry)
        body = json.loads(bytes(response.body)) | counts | {"errors": outcome.errors}
        retry_after = {k: v for k, v in response.headers.items() if k == "retry-after"}
        return JSONResponse(body, status_code=response.status_code, headers=retry_after)
    if not rejected:
        return JSONResponse({"status": "success"} | counts)
    body = counts | {"rejected": rejected, "errors": outcome.errors}
    if outcome.taken == 0:
        return JSONResponse({"status": "error", "message": "no alert could be taken"} | body, 400)
    return JSONResponse({"status": "partial"} | body)


async def _apply(
    client: TocsinClient,
    key: str,
    actions: Sequence[AlertAction],
    outcome: Outcome,
    concurrency: int = MAX_CONCURRENT_ALERTS,
) -> None:
    """Send every action, `concurrency` at once (so they share batched calls); the
    actions of one fingerprint in order."""
    by_fingerprint: dict[str, list[AlertAction]] = {}
    for action in actions:
        by_fingerprint.setdefault(action.fingerprint, []).append(action)
    slots = asyncio.Semaphore(concurrency)

    async def send_all(chain: list[AlertAction]) -> None:
        for action in chain:
            async with slots:
                await _send(client, key, action, outcome)

    await asyncio.gather(*(send_all(chain) for chain in by_fingerprint.values()))


async def _send(client: TocsinClient, key: str, action: AlertAction, outcome: Outcome) -> None:
    try:
        if action.trigger is not None:
            await client.trigger(action.trigger, timeout=RPC_TIMEOUT_S)
            outcome.triggered += 1
        else:
            await client.incidents.Resolve(
                incidents_pb2.ResolveRequest(
                    integration_key=key,
                    dedup_key=action.fingerprint,
                    actor=common_pb2.Actor(channel=common_pb2.CHANNEL_ALERTMANAGER),
                ),
                timeout=RPC_TIMEOUT_S,
            )
            outcome.resolved += 1
        outcome.taken += 1
    except grpc.aio.AioRpcError as error:
        code = error.code()
        if action.trigger is None and code in (
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION,
        ):
            outcome.taken += 1  # nothing open under that fingerprint: nothing to do
            return
        outcome.rejected.add(action.path)
        if code == grpc.StatusCode.NOT_FOUND:
            outcome.unknown_key = True
            outcome.errors.append(f"'{action.path[:-1]}': unknown integration key")
        elif code == grpc.StatusCode.INVALID_ARGUMENT:
            violations = rpc_violations(error)
            outcome.errors += describe(violations, _names(action.path)) or [
                f"'{action.path[:-1]}': {error.details()}"
            ]
        else:
            outcome.retry = outcome.retry or error
            outcome.errors.append(f"'{action.path[:-1]}': not taken, try again ({code.name})")


routes = [
    Route("/v1/alertmanager", webhook, methods=["POST"]),
    Route("/v1/alertmanager/{key}", webhook, methods=["POST"]),
]
