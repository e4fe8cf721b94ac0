"""`POST /v2/enqueue`: the PagerDuty Events API v2, so senders work unchanged.

Prometheus Alertmanager's `pagerduty_configs` (with `url:` pointing here), Grafana and
PagerDuty's client libraries post `{routing_key, event_action, dedup_key, payload, links,
images, client, client_url}`; the routing key is a tocsin service's integration key.
Replies follow PagerDuty's: 202 `{"status": "success", "message": "Event processed",
"dedup_key": ...}`, or 400 `{"status": "invalid event", "message": "Event object is
invalid", "errors": ["'payload.summary' is missing", ...]}`.

Decisions where PagerDuty's documentation is silent or we differ:
- A body over 512 KiB is refused with 400 (PagerDuty documents only 202/400/429/5xx, and
  senders such as Alertmanager treat 400 as final rather than retrying). Malformed JSON
  and invalid UTF-8 are 400 too.
- Unknown fields are ignored, as PagerDuty does, so newer senders keep working; every
  field we read is checked for type, length and control characters, naming it.
- A trigger for an unknown routing key is 400 naming `routing_key`. An acknowledge or
  resolve for a key with no open incident (never seen, or resolved) is accepted (202) and
  changes nothing, as PagerDuty drops it.
- Rate limit: a token bucket per routing key, in memory in each gateway process
  (TOCSIN_EVENTS_API_RATE events per minute, default 600, bursts up to that many; 0
  turns it off). With several gateway replicas the effective limit is per replica.
  Over the limit: 429, which Alertmanager retries.
- Images and `client_url` become links of the alert; `client` names the actor.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tocsin.client.client import TocsinClient
from tocsin.incidents import validation
from tocsin.runtime.clock import Clock
from tocsin.runtime.errors import FieldViolation
from tocsin.v1 import common_pb2, incidents_pb2

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 512 * 1024
RPC_TIMEOUT_S = 10.0
SEVERITIES = {
    "critical": common_pb2.SEVERITY_CRITICAL,
    "error": common_pb2.SEVERITY_ERROR,
    "warning": common_pb2.SEVERITY_WARNING,
    "info": common_pb2.SEVERITY_INFO,
}
ACTIONS = ("trigger", "acknowledge", "resolve")
_TRIGGER_FIELDS = {
    "dedup_key": "dedup_key",
    "summary": "payload.summary",
    "source": "payload.source",
    "severity": "payload.severity",
    "component": "payload.component",
    "group": "payload.group",
    "class": "payload.class",
    "details": "payload.custom_details",
    "occurred_at": "payload.timestamp",
    "integration_key": "routing_key",
    "service_id": "routing_key",
    "actor.display": "client",
    "links": "links",
}


class BadEvent(Exception):
    """The request is invalid; `errors` name the fields."""

    def __init__(self, errors: Sequence[str], status: int = 400) -> None:
        super().__init__("; ".join(errors))
        self.errors = list(errors)
        self.status = status


def invalid(errors: Sequence[str], status: int = 400) -> JSONResponse:
    body = {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
    return JSONResponse(body, status_code=status)


# Reading and checking JSON, shared with the Alertmanager endpoint.


async def read_json(request: Request, limit: int, too_large: int = 400) -> Any:
    """The JSON body of at most `limit` bytes; BadEvent otherwise (status `too_large` for
    an oversized body, without reading past the limit)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadEvent([f"body is larger than {limit} bytes"], too_large)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadEvent([f"body is larger than {limit} bytes"], too_large)
        chunks.append(chunk)
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadEvent([f"body is not valid UTF-8 (byte {error.start})"]) from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise BadEvent([f"body is not valid JSON: {error}"]) from error


@dataclass
class Fields:
    """Typed access to a JSON object, collecting errors named by their path."""

    data: Mapping[str, Any]
    prefix: str = ""
    errors: list[str] = field(default_factory=list)

    def path(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def text(self, name: str, *, required: bool = False, max_len: int | None = None) -> str:
        value = self.data.get(name)
        if value is None or value == "":
            if required:
                self.errors.append(f"'{self.path(name)}' is missing")
            return ""
        if not isinstance(value, str):
            self.errors.append(f"'{self.path(name)}' must be a string")
            return ""
        if max_len is not None and len(value) > max_len:
            self.errors.append(f"'{self.path(name)}' is too long (maximum is {max_len} characters)")
            return ""
        return value

    def obj(self, name: str, *, required: bool = False) -> Mapping[str, Any] | None:
        value = self.data.get(name)
        if value is None:
            if required:
                self.errors.append(f"'{self.path(name)}' is missing")
            return None
        if not isinstance(value, dict):
            self.errors.append(f"'{self.path(name)}' must be an object")
            return None
        return value

    def items(self, name: str) -> list[Mapping[str, Any]]:
        value = self.data.get(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.errors.append(f"'{self.path(name)}' must be a list of objects")
            return []
        return value

    def nested(self, value: Mapping[str, Any], prefix: str) -> Fields:
        return Fields(value, prefix, self.errors)


def parse_timestamp(text: str) -> Timestamp | None:
    """An ISO 8601 / RFC 3339 time (no zone = UTC), or None if it is not one."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    ts = Timestamp()
    try:
        ts.FromDatetime(moment)
    except (ValueError, OverflowError):
        return None
    return ts


def json_struct(value: Mapping[str, Any]) -> Struct | None:
    """`value` as a Struct; None if it holds text that is not valid Unicode."""
    struct = Struct()
    try:
        struct.update(value)
        struct.ByteSize()
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError):
        return None
    return struct


def describe(violations: Sequence[FieldViolation], names: Mapping[str, str]) -> list[str]:
    """Domain violations as Events API errors, with tocsin field paths renamed."""
    return [f"'{_rename(v.field, names)}' {v.description}" for v in violations]


def _rename(path: str, names: Mapping[str, str]) -> str:
    if path in names:
        return names[path]
    head, dot, rest = path.partition(".")
    if dot and head in names:
        return f"{names[head]}.{rest}"
    return path


def rpc_violations(error: grpc.aio.AioRpcError) -> list[FieldViolation]:
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    if not raw:
        return []
    found: list[FieldViolation] = []
    for detail in status_pb2.Status.FromString(raw).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found += [FieldViolation(v.field, v.description) for v in bad.field_violations]
    return found


def unavailable(error: grpc.aio.AioRpcError) -> JSONResponse:
    """A gRPC failure that is not the sender's fault, as a retryable (or internal) error."""
    code = error.code()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return JSONResponse({"status": "throttle event", "message": error.details()}, 429)
    retryable = (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
    )
    if code in retryable:
        return JSONResponse({"status": "unavailable", "message": "try again later"}, 503)
    log.error("incidents service refused the gateway: %s %s", code, error.details())
    return JSONResponse({"status": "error", "message": "internal error"}, 500)


# Rate limiting


class RateLimiter:
    """Token buckets per key: `per_minute` tokens refilled evenly, bursts up to that many.

    Memory is bounded: beyond `max_keys` buckets, the ones that are full again (the same
    as absent) are forgotten, then the least recently used.
    """

    def __init__(self, per_minute: int, clock: Clock, max_keys: int = 10_000) -> None:
        self.capacity = float(per_minute)
        self.refill_per_ms = per_minute / 60_000
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, int]] = {}

    def allow(self, key: str) -> bool:
        if self.capacity <= 0:
            return True
        now = self.clock.now_ms()
        tokens, last = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.refill_per_ms)
        allowed = tokens >= 1
        self._buckets[key] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > self.max_keys:
            self._forget(now)
        return allowed

    def _forget(self, now: int) -> None:
        full = [
            key
            for key, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self.refill_per_ms >= self.capacity
        ]
        for key in full:
            del self._buckets[key]
        while len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]


def rate_limiter(app: Starlette) -> RateLimiter:
    """The app's limiter, made on first use from the configuration
    (TOCSIN_EVENTS_API_RATE, checked when the gateway starts)."""
    limiter: RateLimiter | None = getattr(app.state, "events_rate_limiter", None)
    if limiter is None:
        limiter = RateLimiter(app.state.config.events_api_rate_per_minute, app.state.clock)
        app.state.events_rate_limiter = limiter
    return limiter


# The endpoint


@dataclass
class EnqueuedEvent:
    action: str
    routing_key: str
    dedup_key: str
    trigger: incidents_pb2.TriggerRequest | None
    link_paths: list[tuple[str, str]]


def parse_event(body: Any) -> EnqueuedEvent:
    """Check an Events API v2 body; BadEvent names every problem found."""
    if not isinstance(body, dict):
        raise BadEvent(["event must be a JSON object"])
    event = Fields(body)
    routing_key = event.text("routing_key", required=True)
    if routing_key and len(routing_key) != validation.INTEGRATION_KEY_LENGTH:
        event.errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
    action = event.text("event_action", required=True)
    if action and action not in ACTIONS:
        event.errors.append(
            "'event_action' is invalid (must be one of trigger, acknowledge, resolve)"
        )
    dedup_key = event.text("dedup_key", max_len=validation.MAX_DEDUP_KEY)
    if action in ("acknowledge", "resolve") and body.get("dedup_key") in (None, ""):
        event.errors.append("'dedup_key' is missing")
    trigger = None
    link_paths: list[tuple[str, str]] = []
    if action == "trigger":
        trigger, link_paths = _trigger_request(event, routing_key, dedup_key)
    if event.errors:
        raise BadEvent(event.errors)
    return EnqueuedEvent(action, routing_key, dedup_key, trigger, link_paths)


def _trigger_request(
    event: Fields, routing_key: str, dedup_key: str
) -> tuple[incidents_pb2.TriggerRequest, list[tuple[str, str]]]:
    request = incidents_pb2.TriggerRequest(integration_key=routing_key, dedup_key=dedup_key)
    payload_data = event.obj("payload", required=True)
    if payload_data is not None:
        payload = event.nested(payload_data, "payload.")
        request.summary = payload.text("summary", required=True, max_len=validation.MAX_SUMMARY)
        request.source = payload.text("source", required=True)
        severity = payload.text("severity", required=True)
        if severity and severity not in SEVERITIES:
            event.errors.append(
                "'payload.severity' is invalid (must be one of critical, error, warning, info)"
            )
        request.severity = SEVERITIES.get(severity, common_pb2.SEVERITY_UNSPECIFIED)
        request.component = payload.text("component")
        request.group = payload.text("group")
        setattr(request, "class", payload.text("class"))
        when = payload.text("timestamp")
        if when:
            parsed = parse_timestamp(when)
            if parsed is None:
                event.errors.append("'payload.timestamp' is not an ISO 8601 time")
            else:
                request.occurred_at.CopyFrom(parsed)
        details = payload.obj("custom_details")
        if details is not None:
            struct = json_struct(details)
            if struct is None:
                event.errors.append("'payload.custom_details' must hold valid Unicode text")
            else:
                request.details.CopyFrom(struct)
    link_paths: list[tuple[str, str]] = []
    for i, link in enumerate(event.items("links")):
        fields = event.nested(link, f"links[{i}].")
        request.links.add(href=fields.text("href", required=True), text=fields.text("text"))
        link_paths.append((f"links[{i}].href", f"links[{i}].text"))
    for i, image in enumerate(event.items("images")):
        fields = event.nested(image, f"images[{i}].")
        src = fields.text("src", required=True)
        href = fields.text("href")
        request.links.add(href=src, text=fields.text("alt") or "image")
        link_paths.append((f"images[{i}].src", f"images[{i}].alt"))
        if href:
            request.links.add(href=href, text=fields.text("alt") or "image link")
            link_paths.append((f"images[{i}].href", f"images[{i}].alt"))
    client = event.text("client")
    client_url = event.text("client_url")
    if client_url:
        request.links.add(href=client_url, text=client or "client")
        link_paths.append(("client_url", "client"))
    request.actor.channel = common_pb2.CHANNEL_EVENTS_API
    request.actor.display = client or "events-api"
    return request, link_paths


def _names(event: EnqueuedEvent) -> dict[str, str]:
    names = dict(_TRIGGER_FIELDS)
    for i, (href, text) in enumerate(event.link_paths):
        names[f"links[{i}].href"] = href
        names[f"links[{i}].text"] = text
    return names


async def enqueue(request: Request) -> JSONResponse:
    try:
        event = parse_event(await read_json(request, MAX_BODY_BYTES))
        if not rate_limiter(request.app).allow(event.routing_key):
            return JSONResponse(
                {
                    "status": "throttle event",
                    "message": "Requests for this service are arriving too quickly. "
                    "Please retry later.",
                },
                status_code=429,
            )
        if event.trigger is not None:
            return await _trigger(request.app.state.client, event)
        return await _follow_up(request.app.state.client, event)
    except BadEvent as bad:
        return invalid(bad.errors, bad.status)


async def _trigger(client: TocsinClient, event: EnqueuedEvent) -> JSONResponse:
    assert event.trigger is not None
    try:
        reply = await client.trigger(event.trigger, timeout=RPC_TIMEOUT_S)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return invalid(describe(rpc_violations(error), _names(event)) or [error.details()])
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return invalid(["'routing_key' does not match any service"])
        return unavailable(error)
    return _accepted(reply.dedup_key)


async def _follow_up(client: TocsinClient, event: EnqueuedEvent) -> JSONResponse:
    actor = common_pb2.Actor(channel=common_pb2.CHANNEL_EVENTS_API, display="events-api")
    try:
        if event.action == "acknowledge":
            await client.incidents.Acknowledge(
                incidents_pb2.AcknowledgeRequest(
                    integration_key=event.routing_key, dedup_key=event.dedup_key, actor=actor
                ),
                timeout=RPC_TIMEOUT_S,
            )
        else:
            await client.incidents.Resolve(
                incidents_pb2.ResolveRequest(
                    integration_key=event.routing_key, dedup_key=event.dedup_key, actor=actor
                ),
                timeout=RPC_TIMEOUT_S,
            )
    except grpc.aio.AioRpcError as error:
        code = error.code()
        if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
            return _accepted(event.dedup_key)  # nothing open under that key: dropped
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return invalid(describe(rpc_violations(error), _TRIGGER_FIELDS) or [error.details()])
        return unavailable(error)
    return _accepted(event.dedup_key)


def _accepted(dedup_key: str) -> JSONResponse:
    body = {"status": "success", "message": "Event processed", "dedup_key": dedup_key}
    return JSONResponse(body, status_code=202)


class _EnqueueApp:
    """`enqueue` as a bare ASGI app. Starlette's request/response wrapper adds an
    exception-handling layer per request, about a tenth of the gateway's CPU per event
    in an alert storm; every error here is already a response (and an unexpected one
    still reaches Starlette's outer error middleware)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await enqueue(Request(scope, receive))
        await response(scope, receive, send)


enqueue_app = _EnqueueApp()
routes = [Route("/v2/enqueue", enqueue_app, methods=["POST"])]
