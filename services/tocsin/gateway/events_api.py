"""`POST /v2/enqueue`: the PagerDuty Events API v2, so senders work unchanged.

Prometheus Alertmanager's `pagerduty_configs` (with `url:` pointing here), Grafana and
PagerDuty's client libraries post `{routing_key, event_action, dedup_key, payload, links,
images, client, client_url}`; the routing key is a tocsin service's integration key.
Replies follow PagerDuty's: 202 `{"status": "success", "message": "Event processed",
"dedup_key": ...}`, or 400 `{"status": "invalid event", "message": "Event object is
invalid", "errors": ["'payload.summary' is missing", ...]}`.

Decisions where PagerDuty's documentation is silent or we differ:
- An alert that can be understood pages: this endpoint maps JSON to the TriggerRequest
  and the incidents service normalises it (control characters folded, over-long fields
  cut with "…" and kept whole in the details, bad links dropped, ...: see
  tocsin.incidents.normalize and the README). Here, only JSON is mended: text fields
  given as numbers or booleans are read as text; `severity` in any case, with the
  aliases of SEVERITIES, and an unknown one is critical (kept in the details as
  `severity_original`); `timestamp` as ISO 8601/RFC 3339, RFC 2822, or epoch seconds or
  milliseconds (as a number or digits), and one that is none of these is dropped (kept as
  `timestamp_original`); `custom_details` that is not an object becomes `{"details":
  value}`; `links` and `images` entries that are not objects are dropped, a string link
  is its href; invalid UTF-8 and lone surrogates (`"\\ud83d"`) become U+FFFD; a missing
  `source` stays empty.
- Refused with 400 naming the field, nothing written: what cannot be processed at all.
  No or a wrong-length `routing_key`, an unknown one, an unknown `event_action`, a
  missing `payload` or blank `payload.summary`, a follow-up without `dedup_key`;
  `custom_details` nested deeper than MAX_DETAILS_DEPTH (20) objects/lists, holding a
  number no double can hold (over ~1.8e308, like a 5,000-digit integer), or over
  MAX_DETAILS_BYTES (64 KiB) encoded; a body that is not JSON, is over 512 KiB (PagerDuty
  documents only 202/400/429/5xx, and senders such as Alertmanager treat 400 as final
  rather than retrying), or nests deeper than Python's parser goes.
- Unknown fields are ignored, as PagerDuty does, so newer senders keep working.
- A trigger for an unknown routing key is 400 naming `routing_key`. An acknowledge or
  resolve for a key with no open incident (never seen, or resolved) is accepted (202) and
  changes nothing, as PagerDuty drops it.
- Rate limit: a token bucket per routing key, in memory in each gateway process
  (TOCSIN_EVENTS_API_RATE triggers per minute, default 600, bursts up to that many; 0
  turns it off). With several gateway replicas the effective limit is per replica.
  Over the limit: 429 with `Retry-After`, which Alertmanager retries. Acknowledgements
  and resolves are never rate limited: a storm's own key can always be silenced.
- Fairness at the edge: a trigger for a key that is over its rate is refused before its
  JSON is parsed (`peek_trigger_key` reads the routing key and action from the raw body;
  anything it cannot read plainly is parsed in full), so refusing a storm costs the
  gateway little and requests for other keys do not queue behind it. And at most
  MAX_TRIGGERS_IN_FLIGHT triggers per routing key wait on the incidents service at
  once in a gateway process (429, `Retry-After: 1`, beyond), so one key cannot take
  every call the gateway and the incidents service have in progress.
- Images and `client_url` become links of the alert; `client` names the actor.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
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
from tocsin.client.limits import INTEGRATION_KEY_LENGTH, MAX_DETAILS_DEPTH
from tocsin.runtime.clock import Clock
from tocsin.runtime.errors import ERROR_DOMAIN, REDIS_OUT_OF_MEMORY, FieldViolation
from tocsin.v1 import common_pb2, incidents_pb2

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 512 * 1024
RPC_TIMEOUT_S = 10.0
SEVERITIES = {
    "critical": common_pb2.SEVERITY_CRITICAL,
    "crit": common_pb2.SEVERITY_CRITICAL,
    "fatal": common_pb2.SEVERITY_CRITICAL,
    "emergency": common_pb2.SEVERITY_CRITICAL,
    "alert": common_pb2.SEVERITY_CRITICAL,
    "page": common_pb2.SEVERITY_CRITICAL,
    "error": common_pb2.SEVERITY_ERROR,
    "err": common_pb2.SEVERITY_ERROR,
    "high": common_pb2.SEVERITY_ERROR,
    "major": common_pb2.SEVERITY_ERROR,
    "warning": common_pb2.SEVERITY_WARNING,
    "warn": common_pb2.SEVERITY_WARNING,
    "minor": common_pb2.SEVERITY_WARNING,
    "info": common_pb2.SEVERITY_INFO,
    "informational": common_pb2.SEVERITY_INFO,
    "information": common_pb2.SEVERITY_INFO,
    "notice": common_pb2.SEVERITY_INFO,
    "low": common_pb2.SEVERITY_INFO,
    "debug": common_pb2.SEVERITY_INFO,
    "none": common_pb2.SEVERITY_INFO,
}
"""Severity names, compared after stripping and lower-casing; anything else pages as
critical."""
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
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_EPOCH = re.compile(r"\s*-?[0-9]+(\.[0-9]+)?\s*")


class BadEvent(Exception):
    """The request is invalid; `errors` name the fields."""

    def __init__(self, errors: Sequence[str], status: int = 400) -> None:
        super().__init__("; ".join(errors))
        self.errors = list(errors)
        self.status = status


def invalid(errors: Sequence[str], status: int = 400) -> JSONResponse:
    body = {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
    return JSONResponse(body, status_code=status)


# Reading and mending JSON, shared with the Alertmanager endpoint.


async def read_json(request: Request, limit: int, too_large: int = 400) -> Any:
    """The JSON body of at most `limit` bytes; BadEvent otherwise (status `too_large` for
    an oversized body, without reading past the limit).

    Invalid UTF-8 and lone surrogates become U+FFFD (as Go's encoder, which Alertmanager
    and Grafana use, does). Numbers past what a double holds stay in the document as
    infinities, for the fields that take numbers to refuse by name."""
    return parse_json(await read_body(request, limit, too_large))


async def read_body(request: Request, limit: int, too_large: int = 400) -> bytes:
    """The body of at most `limit` bytes; BadEvent otherwise (as read_json)."""
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
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """`body` as JSON, mended as read_json says; BadEvent if it is not JSON."""
    text = body.decode("utf-8", "replace")
    try:
        value = json.loads(text, parse_int=_parse_int)
    except RecursionError as error:
        raise BadEvent(["body is not valid JSON: nested too deeply"]) from error
    except ValueError as error:
        raise BadEvent([f"body is not valid JSON: {error}"]) from error
    if _SURROGATE_ESCAPE.search(text):
        value = _without_surrogates(value)
    return value


def _parse_int(digits: str) -> int | float:
    """An integer; past 300 digits a float (infinite past ~308): Python refuses to read
    integers of over 4,300 digits, and a Struct holds doubles anyway."""
    return int(digits) if len(digits) <= 300 else float(digits)


def _mend(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text)


def _without_surrogates(value: Any) -> Any:
    """`value` with lone surrogates in every string (keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        return _mend(value)
    root: list[Any] = [value]
    pending: list[tuple[Any, Any]] = [(root, 0)]
    while pending:
        container, key = pending.pop()
        item = container[key]
        if isinstance(item, str):
            container[key] = _mend(item)
        elif isinstance(item, list):
            pending.extend((item, i) for i in range(len(item)))
        elif isinstance(item, dict):
            mended = {_mend(k): v for k, v in item.items()}
            container[key] = mended
            pending.extend((mended, k) for k in mended)
    return root[0]


def as_text(value: Any) -> str | None:
    """A JSON scalar as text (numbers and booleans as JSON writes them); None for an
    object or a list."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return None


def json_text(value: Any) -> str:
    """Any JSON value as text: a scalar as as_text gives it, anything else as JSON."""
    text = as_text(value)
    if text is not None:
        return text
    try:
        return json.dumps(value, ensure_ascii=False)
    except (RecursionError, ValueError):
        return "(nested too deeply to show)"


@dataclass
class Fields:
    """Lenient typed access to a JSON object, collecting errors named by their path."""

    data: Mapping[str, Any]
    prefix: str = ""
    errors: list[str] = field(default_factory=list)

    def path(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def text(self, name: str, *, required: bool = False) -> str:
        """A text field: a string, or a number or boolean read as text; "" if absent."""
        value = self.data.get(name)
        text = "" if value is None else as_text(value)
        if text is None:
            self.errors.append(f"'{self.path(name)}' must be a string")
            return ""
        if required and not text.strip():
            self.errors.append(f"'{self.path(name)}' is missing")
        return text

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

    def nested(self, value: Mapping[str, Any], prefix: str) -> Fields:
        return Fields(value, prefix, self.errors)


def parse_time(value: Any) -> Timestamp | None:
    """A time given as ISO 8601 / RFC 3339 (no zone = UTC), RFC 2822, or epoch seconds or
    milliseconds (microseconds and nanoseconds too, told apart by size) as a number or
    digits; None if it is none of these or out of range."""
    if isinstance(value, bool):
        return None
    moment: datetime | None = None
    if isinstance(value, str) and not _EPOCH.fullmatch(value):
        moment = _parse_text_time(value.strip())
    elif isinstance(value, int | float | str):
        moment = _parse_epoch(float(value))
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    ts = Timestamp()
    try:
        ts.FromDatetime(moment)
    except (ValueError, OverflowError):
        return None
    return ts


def _parse_text_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(text)
    except (ValueError, TypeError, IndexError):
        return None


def _parse_epoch(number: float) -> datetime | None:
    if not math.isfinite(number):
        return None
    magnitude = abs(number)
    for threshold, per_second in ((1e17, 1e9), (1e14, 1e6), (1e11, 1e3)):
        if magnitude >= threshold:
            number /= per_second
            break
    try:
        return datetime.fromtimestamp(number, UTC)
    except (ValueError, OverflowError, OSError):
        return None


def details_struct(value: Any, path: str, errors: list[str]) -> Struct | None:
    """Details as a Struct: an object as it is, anything else as `{"details": value}`;
    None (with the error named by its path) when they nest deeper than MAX_DETAILS_DEPTH
    or hold a number no double holds."""
    details = value if isinstance(value, dict) else {"details": value}
    problem = _details_problem(details, path)
    if problem is not None:
        errors.append(problem)
        return None
    struct = Struct()
    struct.update(details)
    return struct


def _details_problem(details: dict[str, Any], path: str) -> str | None:
    pending: list[tuple[Any, str, int]] = [(details, path, 1)]
    while pending:
        value, where, depth = pending.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return f"'{where}' is a number out of range (at most about 1.8e308)"
        if isinstance(value, dict | list):
            if depth > MAX_DETAILS_DEPTH:
                return (
                    f"'{path}' must not nest objects or lists more than "
                    f"{MAX_DETAILS_DEPTH} levels deep"
                )
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, inner in items:
                step = f"{where}[{key}]" if isinstance(value, list) else f"{where}.{key}"
                pending.append((inner, step, depth + 1))
    return None


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


def rpc_reasons(error: grpc.aio.AioRpcError) -> set[str]:
    """The `google.rpc.ErrorInfo` reasons tocsin's services attached to `error`."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    if not raw:
        return set()
    found: set[str] = set()
    for detail in status_pb2.Status.FromString(raw).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
            found.add(info.reason)
    return found


RETRY_AFTER_S = 5
"""`Retry-After` of a 503: Redis out of memory, a backlog, a service unreachable."""


def unavailable(error: grpc.aio.AioRpcError) -> JSONResponse:
    """A gRPC failure that is not the sender's fault, as a retryable (or internal) error:
    503 with `Retry-After` (PagerDuty clients and Alertmanager send it again), naming
    the cause when the service gave one (Redis refusing writes at maxmemory, or the
    backlog past TOCSIN_BACKLOG_MAX_AGE)."""
    code = error.code()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return JSONResponse(
            {"status": "throttle event", "message": error.details()},
            429,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    retryable = (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
    )
    if code in retryable:
        reasons = rpc_reasons(error)  # the service's own answer: its message says why
        message = error.details() if reasons else "try again later"
        if REDIS_OUT_OF_MEMORY in reasons:
            log.warning("alert not taken: %s", message)
        return JSONResponse(
            {"status": "unavailable", "message": message},
            503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    log.error("incidents service refused the gateway: %s %s", code, error.details())
    return JSONResponse({"status": "error", "message": "internal error"}, 500)


# Rate limiting and admission

MAX_TRIGGERS_IN_FLIGHT = 128
"""Triggers of one routing key waiting on the incidents service at once, per gateway
process; more get 429 with `Retry-After: 1`. The batching client packs concurrent
triggers into TriggerBatch calls, so this is far more than one key needs to reach the
ingest rate of the incidents service (about 2,000/s on two cores)."""

_ROUTING_KEY = re.compile(rb'"routing_key"\s*:\s*"([^"\\]*)"')
_ACTION = re.compile(rb'"event_action"\s*:\s*"([^"\\]*)"')


def peek_trigger_key(body: bytes) -> str | None:
    """The routing key of a body that is plainly a trigger, read without parsing it: one
    `"routing_key": "..."` and one `"event_action": "trigger"` (any case, spaces around),
    neither with escapes. None when that is not plainly so (then the body is parsed in
    full and checked as usual). Used only to refuse a trigger for a key over its rate
    cheaply; a body read wrongly here could only get a 429 for a key that is over its
    rate anyway."""
    keys = _ROUTING_KEY.findall(body)
    actions = _ACTION.findall(body)
    if len(keys) != 1 or len(actions) != 1 or actions[0].strip().lower() != b"trigger":
        return None
    return keys[0].decode("utf-8", "replace").strip()


class InFlight:
    """Triggers per routing key in progress in this process, at most `limit` each."""

    def __init__(self, limit: int = MAX_TRIGGERS_IN_FLIGHT) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def enter(self, key: str, n: int = 1) -> bool:
        """Count `n` more for `key`; False (nothing counted) if that would pass `limit`."""
        count = self._counts.get(key, 0)
        if count + n > self.limit:
            return False
        self._counts[key] = count + n
        return True

    def leave(self, key: str, n: int = 1) -> None:
        count = self._counts.get(key, 0) - n
        if count > 0:
            self._counts[key] = count
        else:
            self._counts.pop(key, None)

    def __len__(self) -> int:
        return len(self._counts)


class RateLimiter:
    """Token buckets per key: `per_minute` tokens refilled evenly, bursts up to that many.
    A refused request is told when the next token is back (`retry_after_s`), which the
    429 carries as `Retry-After`.

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

    def over(self, key: str) -> bool:
        """Whether `key` has no token now (nothing taken)."""
        if self.capacity <= 0:
            return False
        entry = self._buckets.get(key)
        if entry is None:
            return False
        tokens, last = entry
        return tokens + (self.clock.now_ms() - last) * self.refill_per_ms < 1

    def retry_after_s(self, key: str) -> int:
        """Whole seconds (at least 1) until `key` has a token again, for `Retry-After`."""
        if self.capacity <= 0:
            return 0
        now = self.clock.now_ms()
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.refill_per_ms)
        missing_ms = max(0.0, 1 - tokens) / self.refill_per_ms
        return max(1, math.ceil(missing_ms / 1000))

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


def parse_event(body: Any) -> EnqueuedEvent:
    """An Events API v2 body as a request; BadEvent names every problem found."""
    if not isinstance(body, dict):
        raise BadEvent(["event must be a JSON object"])
    event = Fields(body)
    routing_key = event.text("routing_key", required=True).strip()
    if routing_key and len(routing_key) != INTEGRATION_KEY_LENGTH:
        event.errors.append(
            f"Length of 'routing_key' is incorrect (should be {INTEGRATION_KEY_LENGTH} characters)"
        )
    action = event.text("event_action", required=True).strip().lower()
    if action and action not in ACTIONS:
        event.errors.append(
            "'event_action' is invalid (must be one of trigger, acknowledge, resolve)"
        )
    dedup_key = event.text("dedup_key")
    if action in ("acknowledge", "resolve") and not dedup_key:
        event.errors.append("'dedup_key' is missing")
    trigger = None
    if action == "trigger":
        trigger = _trigger_request(event, routing_key, dedup_key)
    if event.errors:
        raise BadEvent(event.errors)
    return EnqueuedEvent(action, routing_key, dedup_key, trigger)


def _trigger_request(
    event: Fields, routing_key: str, dedup_key: str
) -> incidents_pb2.TriggerRequest:
    request = incidents_pb2.TriggerRequest(integration_key=routing_key, dedup_key=dedup_key)
    payload_data = event.obj("payload", required=True)
    kept: dict[str, Any] = {}
    if payload_data is not None:
        payload = event.nested(payload_data, "payload.")
        request.summary = payload.text("summary", required=True)
        request.source = payload.text("source")
        severity = payload.text("severity").strip()
        request.severity = SEVERITIES.get(severity.lower(), common_pb2.SEVERITY_UNSPECIFIED)
        if severity and severity.lower() not in SEVERITIES:
            kept["severity_original"] = severity
        request.component = payload.text("component")
        request.group = payload.text("group")
        setattr(request, "class", payload.text("class"))
        when = payload_data.get("timestamp")
        if when not in (None, ""):
            parsed = parse_time(when)
            if parsed is None:
                kept["timestamp_original"] = json_text(when)
            else:
                request.occurred_at.CopyFrom(parsed)
        details = payload_data.get("custom_details")
        if details is not None or kept:
            struct = details_struct(
                {} if details is None else details, "payload.custom_details", event.errors
            )
            if struct is not None:
                struct.update(kept)
                request.details.CopyFrom(struct)
    for href, text in _links(event.data.get("links"), "href", "text"):
        request.links.add(href=href, text=text)
    for src, alt in _links(event.data.get("images"), "src", "alt"):
        request.links.add(href=src, text=alt or "image")
    for href, alt in _links(event.data.get("images"), "href", "alt"):
        request.links.add(href=href, text=alt or "image link")
    client = event.text("client")
    client_url = event.text("client_url")
    if client_url:
        request.links.add(href=client_url, text=client or "client")
    request.actor.channel = common_pb2.CHANNEL_EVENTS_API
    request.actor.display = client or "events-api"
    return request


def _links(value: Any, href_key: str, text_key: str) -> list[tuple[str, str]]:
    """(href, text) of each entry that has an href (a string entry is one); the incidents
    service drops those that are no URL."""
    if value is None:
        return []
    found: list[tuple[str, str]] = []
    for entry in value if isinstance(value, list) else [value]:
        if isinstance(entry, str):
            found.append((entry, ""))
        elif isinstance(entry, dict):
            href = as_text(entry.get(href_key))
            if href:
                found.append((href, as_text(entry.get(text_key)) or ""))
    return found


def in_flight(app: Starlette) -> InFlight:
    """The app's per-key count of triggers in progress, made on first use."""
    counts: InFlight | None = getattr(app.state, "events_in_flight", None)
    if counts is None:
        counts = app.state.events_in_flight = InFlight()
    return counts


@functools.lru_cache(maxsize=256)
def _throttled(retry_after_s: int) -> JSONResponse:
    """The 429 for `retry_after_s`, made once and sent as often as needed (a response is
    not changed by being sent): a storm's refusals do not encode JSON each."""
    return JSONResponse(
        {
            "status": "throttle event",
            "message": "Requests for this service are arriving too quickly. Please retry later.",
        },
        status_code=429,
        headers={"Retry-After": str(retry_after_s)},
    )


async def enqueue(request: Request) -> JSONResponse:
    try:
        body = await read_body(request, MAX_BODY_BYTES)
        limiter = rate_limiter(request.app)
        peeked = peek_trigger_key(body)
        if peeked is not None and limiter.over(peeked):
            return _throttled(limiter.retry_after_s(peeked))  # the cheap refusal
        event = parse_event(parse_json(body))
        if event.trigger is None:
            return await _follow_up(request.app.state.client, event)  # never throttled
        if not limiter.allow(event.routing_key):
            return _throttled(limiter.retry_after_s(event.routing_key))
        counts = in_flight(request.app)
        if not counts.enter(event.routing_key):
            return _throttled(1)
        try:
            return await _trigger(request.app.state.client, event)
        finally:
            counts.leave(event.routing_key)
    except BadEvent as bad:
        return invalid(bad.errors, bad.status)


async def _trigger(client: TocsinClient, event: EnqueuedEvent) -> JSONResponse:
    assert event.trigger is not None
    try:
        reply = await client.trigger(event.trigger, timeout=RPC_TIMEOUT_S)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return invalid(describe(rpc_violations(error), _TRIGGER_FIELDS) or [error.details()])
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
