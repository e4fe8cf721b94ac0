"""Maintenance windows: when a service's alerts are recorded but page nobody.

A window covers one or more services, once (`start` + `duration`) or recurring: an RFC
5545 RRULE (python-dateutil's `rrulestr`) whose occurrences keep the local wall time of
`start` in the window's zone across DST, each lasting `duration`. `EndMaintenanceWindow`
cuts the occurrence in progress at that moment (`ended_at`): a one-off window is then over,
a recurring one resumes at its next occurrence.

What happens on the ingest path (servicer `_trigger`): after event rules have filed the
alert under its service, `Maintenance.active_for(service)` answers from an in-process
cache of every window (re-read at most every `CACHE_TTL_MS`; a window this replica writes
is seen at once, another replica's within that time). An alert on a service in
maintenance is recorded with the suppressed alerts (`ListSuppressedAlerts`, rule
`maintenance/<window id>`, so it is listed, counted and searchable beside those event
rules suppressed) and counted on the window; it opens and joins no incident, so nobody is
paged, and nothing pages for it when the window ends. An incident already open when a
window begins is left as it is and still escalates: it was raised before the work began,
someone is being paged for it, and muting it silently could lose a page that matters; the
responder acknowledges, snoozes or resolves it. Repeats of its alert during the window are
recorded as suppressed, not joined.

A service with `page_after_maintenance` asks for the opposite: the last alert of each
dedup key that arrived during an occurrence is held (a hash per occurrence) and, in the
same script, a durable timer (tocsin.runtime.timers, namespace "maint") is armed for the
occurrence's end (for now, when it is ended early). When it fires, each held alert is
triggered as if it had just arrived (nobody is paged twice: a second firing after a crash
joins the incidents the first opened), then the alerts it triggered are dropped from the
hold; one held meanwhile stays, and the timer is armed again for it. An early end is
recorded beside the hold, so a replica whose 1-second window cache has not seen the end
yet, and still holds an alert, arms the timer for the end that happened, never later.

Storage: two hashes under the tag {maint} (window id -> MaintenanceWindow protobuf, and
window id -> alerts recorded); the held alerts and their timers under the tag of the
"maint" timer shard. Windows are few and small.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.rrule import rrule, rrulestr

from tocsin.incidents import keys
from tocsin.runtime.clock import Clock, datetime_to_ms, ms_to_datetime
from tocsin.runtime.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound
from tocsin.runtime.ids import id_violations
from tocsin.runtime.localtime import resolve_wall_time, wall_time
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.scripts import LuaScript
from tocsin.runtime.timers import (
    TIMER_LUA,
    ClaimedTimer,
    TimerStore,
    TimerWorker,
    timer_keys,
    timer_tag,
)
from tocsin.v1 import common_pb2, incidents_pb2, urgency_pb2

log = logging.getLogger(__name__)

WINDOWS_KEY = "tocsin:{maint}:windows"
COUNTS_KEY = "tocsin:{maint}:counts"
CACHE_TTL_MS = 1000
ENDED_MARGIN_MS = 60_000
"""An early end's marker outlives the occurrence's planned end by this much."""
MIN_DURATION_S = 60
MAX_DURATION_S = 31 * 86400
MAX_WINDOWS = 1000
MAX_DESCRIPTION = 1024
MAX_SERVICES = 100

HELD_NAMESPACE = "maint"
_HOLD = """-- Hold an alert for the end of a maintenance occurrence, and arm that end's timer:
-- never later than it is armed already, nor than an early end recorded by `end` (a
-- replica whose 1-second window cache has not seen that end still holds the alert, and
-- it pages at once instead of at the occurrence's planned end).
-- KEYS: the timer keys of the maint shard, the occurrence's held-alerts hash, its
--       early-end marker
-- ARGV:
--   tag
--   id
--   due_ms
--   field
--   request
local due = tonumber(ARGV[3])
local ended = redis.call('GET', KEYS[8])
if ended and tonumber(ended) < due then
  due = tonumber(ended)
end
local waiting = redis.call('ZSCORE', timer_key(ARGV[1], 'timers'), ARGV[2])
if waiting and tonumber(waiting) < due then
  due = tonumber(waiting)
end
redis.call('HSET', KEYS[7], ARGV[4], ARGV[5])
timer_arm(ARGV[1], ARGV[2], due, '')
return 1"""
_END = """-- An occurrence ended early: record when (for holds racing the end, see the hold
-- script), and page what it holds now.
-- KEYS: the timer keys of the maint shard, the occurrence's held-alerts hash, its
--       early-end marker
-- ARGV:
--   tag
--   id
--   now_ms
--   ttl_ms   the marker's life: past the occurrence's planned end
redis.call('SET', KEYS[8], ARGV[3], 'PX', ARGV[4])
if redis.call('EXISTS', KEYS[7]) == 1 then
  timer_arm(ARGV[1], ARGV[2], ARGV[3], '')
end
return 1"""
_DROP = """-- The held alerts read were triggered: drop those (each only if it is still what was
-- read). One held meanwhile stays, and the end's timer is armed again, due now, for it.
-- KEYS: the timer keys of the maint shard, the occurrence's held-alerts hash
-- ARGV:
--   tag
--   id
--   now_ms
--   entries...   field, request, field, request, ...
for i = 4, #ARGV, 2 do
  if redis.call('HGET', KEYS[7], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[7], ARGV[i])
  end
end
if redis.call('EXISTS', KEYS[7]) == 1 then
  timer_arm(ARGV[1], ARGV[2], ARGV[3], '')
  return 1
end
return 0"""

Window = urgency_pb2.MaintenanceWindow
Span = tuple[int, int]
"""[start, end) in ms."""


@dataclass(frozen=True)
class _Compiled:
    rule: rrule | None
    zone: ZoneInfo


@lru_cache(maxsize=512)
def _compile(rrule_text: str, zone_name: str, start_ms: int) -> _Compiled:
    """The parsed recurrence (dateutil), its DTSTART the local wall time of the start."""
    zone = ZoneInfo(zone_name or "UTC")
    if not rrule_text:
        return _Compiled(None, zone)
    local_start = wall_time(ms_to_datetime(start_ms), zone)
    parsed = rrulestr(rrule_text.removeprefix("RRULE:"), dtstart=local_start)
    if not isinstance(parsed, rrule):
        raise ValueError("one RRULE, not a set")
    return _Compiled(parsed, zone)


def _ms(duration_s: int | float) -> int:
    return int(duration_s * 1000)


def _span(window: Window, start_ms: int) -> Span:
    end = start_ms + _ms(window.duration.ToSeconds())
    if window.HasField("ended_at"):
        ended = window.ended_at.ToMilliseconds()
        if start_ms <= ended < end:
            end = ended  # this occurrence was ended early
    return start_ms, end


def current(window: Window, now_ms: int) -> Span | None:
    """The occurrence of `window` in progress at `now_ms`, if any."""
    compiled = _compile(window.rrule, window.time_zone, window.start.ToMilliseconds())
    if compiled.rule is None:
        span = _span(window, window.start.ToMilliseconds())
        return span if span[0] <= now_ms < span[1] else None
    local_now = wall_time(ms_to_datetime(now_ms), compiled.zone)
    # Occurrences are equally long, so the latest to start is the latest to end; the
    # wall-clock comparison is off by at most a DST shift, hence the margin.
    latest = compiled.rule.before(local_now + timedelta(hours=3), inc=True)
    while latest is not None:
        start = datetime_to_ms(resolve_wall_time(latest, compiled.zone))
        if start <= now_ms:
            span = _span(window, start)
            return span if now_ms < span[1] else None
        latest = compiled.rule.before(latest)
    return None


def upcoming(window: Window, now_ms: int) -> Span | None:
    """The occurrence in progress, else the next one; None when none is left."""
    span = current(window, now_ms)
    if span is not None:
        return span
    compiled = _compile(window.rrule, window.time_zone, window.start.ToMilliseconds())
    if compiled.rule is None:
        start = window.start.ToMilliseconds()
        return _span(window, start) if start > now_ms else None
    probe = wall_time(ms_to_datetime(now_ms), compiled.zone) - timedelta(hours=3)
    for _ in range(1000):
        following = compiled.rule.after(probe)
        if following is None:
            return None
        start = datetime_to_ms(resolve_wall_time(following, compiled.zone))
        if start > now_ms:
            return _span(window, start)
        probe = following
    return None


def with_state(window: Window, now_ms: int, recorded: int = 0) -> Window:
    """A copy with the output-only fields filled in for `now_ms`."""
    shown = Window()
    shown.CopyFrom(window)
    shown.alerts_recorded = recorded
    span = upcoming(window, now_ms)
    shown.active = span is not None and span[0] <= now_ms
    shown.ClearField("next_start")
    shown.ClearField("next_end")
    if span is not None:
        shown.next_start.FromMilliseconds(span[0])
        shown.next_end.FromMilliseconds(span[1])
    return shown


def violations(window: Window, prefix: str = "window") -> list[FieldViolation]:
    """What is wrong with a window to store (its id already generated when empty)."""
    found = id_violations(window.id, f"{prefix}.id")
    if not window.service_ids:
        found.append(FieldViolation(f"{prefix}.service_ids", "needs at least one service"))
    if len(window.service_ids) > MAX_SERVICES:
        found.append(FieldViolation(f"{prefix}.service_ids", f"at most {MAX_SERVICES} services"))
    for i, service_id in enumerate(window.service_ids):
        found += id_violations(service_id, f"{prefix}.service_ids[{i}]")
    if not window.HasField("start"):
        found.append(FieldViolation(f"{prefix}.start", "is required"))
    seconds = window.duration.ToSeconds() if window.HasField("duration") else 0
    if not MIN_DURATION_S <= seconds <= MAX_DURATION_S:
        found.append(FieldViolation(f"{prefix}.duration", "must be between 1 minute and 31 days"))
    zone_ok = True
    try:
        ZoneInfo(window.time_zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        zone_ok = False
        found.append(
            FieldViolation(f"{prefix}.time_zone", f"unknown time zone {window.time_zone!r}")
        )
    if window.rrule and zone_ok and window.HasField("start"):
        try:
            _compile(window.rrule, window.time_zone, window.start.ToMilliseconds())
        except (ValueError, TypeError) as error:
            found.append(FieldViolation(f"{prefix}.rrule", f"not an RFC 5545 RRULE: {error}"))
    if len(window.description) > MAX_DESCRIPTION:
        found.append(
            FieldViolation(f"{prefix}.description", f"at most {MAX_DESCRIPTION} characters")
        )
    return found


def _check(found: list[FieldViolation]) -> None:
    if found:
        raise InvalidArgument(found)


def _stored(window: Window) -> Window:
    """The window without its output-only fields (ended_at is kept: it is state)."""
    stored = Window()
    stored.CopyFrom(window)
    for name in ("alerts_recorded", "active", "next_start", "next_end"):
        stored.ClearField(name)
    return stored


class Maintenance:
    """Maintenance windows in Redis, and the ingest path's answer to "in maintenance?"."""

    def __init__(self, redis: RedisClient, clock: Clock) -> None:
        self.redis = redis
        self.clock = clock
        self.timers = TimerStore(redis, clock, shards=1, namespace=HELD_NAMESPACE)
        """The occurrence ends that page held alerts (one shard: they are few)."""
        self._hold = LuaScript(redis, "maintenance hold", TIMER_LUA, body=_HOLD)
        self._end = LuaScript(redis, "maintenance end", TIMER_LUA, body=_END)
        self._drop = LuaScript(redis, "maintenance drop held", TIMER_LUA, body=_DROP)
        self._cache: tuple[int, list[Window]] | None = None
        self._loading: asyncio.Future[list[Window]] | None = None
        self._generation = 0
        """Bumped by this replica's writes: a read of the windows begun before is not kept."""
        self._answers: dict[bytes, tuple[int, int, bool]] = {}

    # the ingest path

    async def active_for(self, service_id: str) -> Window | None:
        """A window in progress now on `service_id`, if any (from the cache)."""
        now = self.clock.now_ms()
        for window in await self._windows():
            if service_id in window.service_ids and self._in_progress(window, now):
                return window
        return None

    def _in_progress(self, window: Window, now_ms: int) -> bool:
        """`current(window, now_ms) is not None`, remembered until the answer can change
        (the occurrence's end, or the next one's start), so a recurrence is not walked
        for every alert."""
        key = window.SerializeToString()
        known = self._answers.get(key)
        if known is not None and known[0] <= now_ms < known[1]:
            return known[2]
        span = upcoming(window, now_ms)
        if span is None:
            answer = (now_ms, 2**62, False)
        elif span[0] <= now_ms:
            answer = (span[0], span[1], True)
        else:
            answer = (now_ms, span[0], False)
        if len(self._answers) >= MAX_WINDOWS:
            self._answers.clear()
        self._answers[key] = answer
        return answer[2]

    async def record(self, window_id: str) -> None:
        """Count an alert recorded during `window_id`."""
        await self.redis.hincrby(COUNTS_KEY, window_id, 1)

    async def hold(self, window: Window, request: incidents_pb2.TriggerRequest) -> None:
        """Keep `request` (its service and dedup key final) to be triggered when the
        occurrence of `window` in progress ends (page_after_maintenance)."""
        span = current(window, self.clock.now_ms())
        if span is None:
            return
        timer_id = f"{window.id}|{span[0]}"
        field = f"{request.service_id}\0{request.dedup_key}"
        await self._hold(
            [*timer_keys(0, HELD_NAMESPACE), _held_key(timer_id), _ended_key(timer_id)],
            tag=timer_tag(0, HELD_NAMESPACE),
            id=timer_id,
            due_ms=span[1],
            field=field,
            request=request.SerializeToString(),
        )

    async def held(self, timer_id: str) -> list[tuple[bytes, bytes]]:
        """The alerts an occurrence holds: (field, serialized TriggerRequest) each."""
        raw: dict[Any, Any] = await self.redis.hgetall(_held_key(timer_id))
        return [(keys.as_bytes(f), keys.as_bytes(v)) for f, v in raw.items()]

    async def drop_held(self, timer_id: str, triggered: list[tuple[bytes, bytes]]) -> bool:
        """Drop the held alerts that were triggered (as read); True when others were held
        meanwhile (the timer is armed again, due now, for them)."""
        return bool(
            await self._drop(
                [*timer_keys(0, HELD_NAMESPACE), _held_key(timer_id)],
                tag=timer_tag(0, HELD_NAMESPACE),
                id=timer_id,
                now_ms=self.clock.now_ms(),
                entries=[part for entry in triggered for part in entry],
            )
        )

    async def _windows(self) -> list[Window]:
        cached = self._cache
        if cached is not None and cached[0] > self.clock.now_ms():
            return cached[1]
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load())
            self._loading.add_done_callback(lambda _: setattr(self, "_loading", None))
        return await asyncio.shield(self._loading)

    async def _load(self) -> list[Window]:
        generation, now = self._generation, self.clock.now_ms()
        raw = await self.redis.hvals(WINDOWS_KEY)
        windows = [Window.FromString(keys.as_bytes(blob)) for blob in raw]
        if generation == self._generation:
            self._cache = (now + CACHE_TTL_MS, windows)
        return windows

    async def refresh(self) -> None:
        """Read the windows again (a supervised loop does, twice per `CACHE_TTL_MS`, in a
        running incidents process), so the cache never runs out and no alert waits for
        the read: an alert more than a second after the last one (a lone alert, every
        time) paid that round trip before `trigger.lua`."""
        await self._load()

    def _forget(self) -> None:
        """This replica changed a window: the next alert reads them again."""
        self._generation += 1
        self._cache = None

    # the RPCs

    async def create(self, window: Window, *, validate_only: bool = False) -> Window:
        stored = _stored(window)
        stored.ClearField("ended_at")
        stored.id = stored.id or "mw-" + secrets.token_hex(4)
        if not stored.HasField("start"):
            stored.start.FromMilliseconds(self.clock.now_ms())
        _check(violations(stored))
        if validate_only:
            if await self.redis.hexists(WINDOWS_KEY, stored.id):
                raise AlreadyExists(f"maintenance window {stored.id!r} already exists")
            return with_state(stored, self.clock.now_ms())
        if await self.redis.hlen(WINDOWS_KEY) >= MAX_WINDOWS:
            raise InvalidArgument.one("window", f"at most {MAX_WINDOWS} maintenance windows")
        if not await self.redis.hsetnx(WINDOWS_KEY, stored.id, stored.SerializeToString()):
            raise AlreadyExists(f"maintenance window {stored.id!r} already exists")
        self._forget()
        return with_state(stored, self.clock.now_ms())

    async def get(self, window_id: str) -> Window:
        _check(id_violations(window_id, "id"))
        raw = await self.redis.hget(WINDOWS_KEY, window_id)
        if raw is None:
            raise NotFound(f"maintenance window {window_id!r} does not exist")
        count = await self.redis.hget(COUNTS_KEY, window_id)
        return with_state(
            Window.FromString(keys.as_bytes(raw)), self.clock.now_ms(), int(count or 0)
        )

    async def update(self, window: Window, *, validate_only: bool = False) -> Window:
        """Replace a window's settings; an early end (`ended_at`) stays unless the window
        now starts after it."""
        current = await self.get(window.id)
        stored = _stored(window)
        stored.ClearField("ended_at")
        if current.HasField("ended_at") and current.ended_at.ToMilliseconds() >= (
            stored.start.ToMilliseconds() if stored.HasField("start") else 0
        ):
            stored.ended_at.CopyFrom(current.ended_at)
        _check(violations(stored))
        if not validate_only:
            await self.redis.hset(WINDOWS_KEY, stored.id, stored.SerializeToString())
            self._forget()
        return with_state(stored, self.clock.now_ms(), current.alerts_recorded)

    async def end(self, window_id: str) -> tuple[Window, bool]:
        """End the occurrence in progress now; (window, False) when none is."""
        window = await self.get(window_id)
        now = self.clock.now_ms()
        if current(window, now) is None:
            return window, False
        span = current(window, now)
        stored = _stored(window)
        stored.ended_at.FromMilliseconds(now)
        await self.redis.hset(WINDOWS_KEY, stored.id, stored.SerializeToString())
        self._forget()
        if span is not None:  # what it held pages now; holds racing this page now too
            timer_id = f"{window.id}|{span[0]}"
            await self._end(
                [*timer_keys(0, HELD_NAMESPACE), _held_key(timer_id), _ended_key(timer_id)],
                tag=timer_tag(0, HELD_NAMESPACE),
                id=timer_id,
                now_ms=now,
                ttl_ms=max(span[1] - now, 0) + ENDED_MARGIN_MS,
            )
        return with_state(stored, now, window.alerts_recorded), True

    async def delete(self, window_id: str) -> Window:
        window = await self.get(window_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(WINDOWS_KEY, window_id)
        pipe.hdel(COUNTS_KEY, window_id)
        await pipe.execute()
        self._forget()
        return window

    async def list(self, service_id: str = "", include_past: bool = False) -> list[Window]:
        raw = await self.redis.hgetall(WINDOWS_KEY)
        counts = await self.redis.hgetall(COUNTS_KEY)
        recorded = {keys.as_bytes(k).decode(): int(v) for k, v in counts.items()}
        now = self.clock.now_ms()
        shown = []
        for blob in raw.values():
            window = Window.FromString(keys.as_bytes(blob))
            if service_id and service_id not in window.service_ids:
                continue
            state = with_state(window, now, recorded.get(window.id, 0))
            if state.HasField("next_start") or include_past:
                shown.append(state)
        return sorted(
            shown,
            key=lambda w: (
                not w.HasField("next_start"),
                w.next_start.ToMilliseconds(),
                w.id,
            ),
        )


def _held_key(timer_id: str) -> str:
    return f"tocsin:{timer_tag(0, HELD_NAMESPACE)}:held:{timer_id}"


def _ended_key(timer_id: str) -> str:
    return f"tocsin:{timer_tag(0, HELD_NAMESPACE)}:ended:{timer_id}"


def held_worker(
    maintenance: Maintenance,
    trigger: Callable[[incidents_pb2.TriggerRequest], Awaitable[object]],
    **options: int,
) -> TimerWorker:
    """Fires the ends of occurrences that hold alerts: triggers each held alert (as if it
    had just arrived, so an open incident of its key is joined), then drops the hold."""

    async def fire(timer: ClaimedTimer) -> None:
        window_id = timer.timer_id.split("|", 1)[0]
        held = await maintenance.held(timer.timer_id)
        for _, raw in held:
            request = incidents_pb2.TriggerRequest.FromString(raw)
            request.actor.CopyFrom(
                common_pb2.Actor(
                    channel=common_pb2.CHANNEL_AUTO,
                    display=f"maintenance window {window_id} ended (held alert)",
                )
            )
            try:
                await trigger(request)
            except (InvalidArgument, NotFound) as error:  # its service is gone, say
                log.warning("held alert of %s not triggered: %s", window_id, error)
        await maintenance.drop_held(timer.timer_id, held)

    return TimerWorker(maintenance.timers, maintenance.clock, fire, lambda: range(1), **options)
