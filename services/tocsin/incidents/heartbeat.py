"""Heartbeat monitors: something must ping a monitor at least every interval (+ grace), or
an incident opens on its service and pages; the next ping resolves it.

One durable timer per monitor (tocsin.runtime.timers, namespace `heartbeat`, one shard):
the timer id is the monitor id, and every ping re-arms it for now + interval + grace in
the same script that records the ping, so a monitor never has two timers and a ping can
never be lost between the two writes. The timer fires on whichever incidents replica
claims it (claims are atomic; a claim whose replica died is offered again after its
lease), and its handler is idempotent:

1. `expire.lua` marks the monitor missed, only if the timer is still the current arming
   (its payload is the deadline it was armed for; a ping since re-armed it: stale, done);
   a monitor already marked missed for that deadline is marked again without harm;
2. if no incident is open under the monitor's dedup key (`heartbeat:<id>`), one is
   opened through the normal trigger script (so escalation pages);
3. the timer is completed.

A ping that comes between 1 and 2 finds no incident to resolve; step 2 then sees the
monitor no longer missed after opening the incident and resolves it itself (its first
page may already have gone out: the heartbeat did arrive late).

A replica that dies anywhere in 1-3 leaves the timer in flight; it fires again after its
lease (LEASE_MS) and finds the incident already open (step 2 opens nothing): a missed
heartbeat opens one incident and pages once, whatever process dies when. (A firing
stalled past its lease while another runs could add a repeat alert to the incident: the
trigger's dedup key keeps it one incident, and a repeat pages nobody.) A missed monitor has no
timer: it waits for its next ping, which re-arms it and then resolves the incident (ping
first, so a replica dying between leaves an open incident for a person, never a silent
monitor).

Keys, under the timer shard's tag `{t0}`:

    tocsin:{t0}:heartbeat:m:<id>      hash  cfg (HeartbeatMonitor protobuf, settings only),
                                            span (interval + grace, ms), last (last ping ms),
                                            deadline (ms, while armed), missed (0|1)
    tocsin:{t0}:heartbeat:tokens      hash  token -> monitor id
    tocsin:{t0}:heartbeat:ids         zset  monitor ids (score 0), for listing
    tocsin:{t0}:heartbeat:timers ...  the timer library's keys
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from tocsin.incidents import validation
from tocsin.runtime.clock import Clock
from tocsin.runtime.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound
from tocsin.runtime.ids import id_violations
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
from tocsin.v1 import routing_pb2

log = logging.getLogger(__name__)

NAMESPACE = "heartbeat"
SHARD = 0
MIN_INTERVAL_S = 60
MAX_INTERVAL_S = 30 * 86400
MIN_TOKEN = 16
MAX_TOKEN = 128
DEDUP_PREFIX = "heartbeat:"
LEASE_MS = 120_000
"""How long a firing may take before its timer is offered again (opening an incident is a
few Redis calls; a second firing while the first still runs would add a repeat alert to
the incident, never a second incident or page)."""

_TAG = timer_tag(SHARD, NAMESPACE)
TOKENS_KEY = f"tocsin:{_TAG}:tokens"
IDS_KEY = f"tocsin:{_TAG}:ids"


def monitor_key(monitor_id: str) -> str:
    return f"tocsin:{_TAG}:m:{monitor_id}"


def dedup_key(monitor_id: str) -> str:
    """The dedup key of a monitor's incidents."""
    return DEDUP_PREFIX + monitor_id


_PUT = """-- Create or update a monitor and (re-)arm its timer.
-- KEYS: 1 monitor hash, 2 tokens, 3 ids, then the timer keys
-- ARGV:
--   tag         timer tag
--   id
--   cfg         HeartbeatMonitor protobuf (settings)
--   token
--   span_ms     interval + grace
--   now_ms
--   mode        'create' or 'update'
-- Returns 'ok', 'exists', 'missing' or 'token'.
local exists = redis.call('EXISTS', KEYS[1]) == 1
if ARGV[7] == 'create' and exists then return 'exists' end
if ARGV[7] == 'update' and not exists then return 'missing' end
local owner = redis.call('HGET', KEYS[2], ARGV[4])
if owner and owner ~= ARGV[2] then return 'token' end
if exists then
  local old = redis.call('HGET', KEYS[1], 'token')
  if old and old ~= ARGV[4] then redis.call('HDEL', KEYS[2], old) end
end
redis.call('HSET', KEYS[1], 'cfg', ARGV[3], 'token', ARGV[4], 'span', ARGV[5])
redis.call('HSET', KEYS[2], ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[2])
if redis.call('HGET', KEYS[1], 'missed') ~= '1' then
  local due = string.format('%.0f', tonumber(ARGV[6]) + tonumber(ARGV[5]))
  redis.call('HSET', KEYS[1], 'deadline', due, 'missed', 0)
  timer_arm(ARGV[1], ARGV[2], due, due)
end
return 'ok'"""

_DELETE = """-- Delete a monitor and its timer.
-- KEYS: 1 monitor hash, 2 tokens, 3 ids, then the timer keys
-- ARGV:
--   tag
--   id
-- Returns 1 if it existed.
local token = redis.call('HGET', KEYS[1], 'token')
if not token then return 0 end
redis.call('HDEL', KEYS[2], token)
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('DEL', KEYS[1])
timer_cancel(ARGV[1], ARGV[2])
return 1"""

_PING = """-- A ping: record it and re-arm the monitor's timer; clears `missed`.
-- KEYS: 1 tokens, then the timer keys
-- ARGV:
--   tag
--   token
--   now_ms
--   prefix      monitor hash key prefix (the monitor's key, found from the token, shares
--               the tag of KEYS, so the script stays in one Cluster slot)
-- Returns nil (unknown token) or {id, 1 if it was missed else 0, cfg}.
local id = redis.call('HGET', KEYS[1], ARGV[2])
if not id then return nil end
local key = ARGV[4] .. id
local span = redis.call('HGET', key, 'span')
if not span then return nil end
local due = string.format('%.0f', tonumber(ARGV[3]) + tonumber(span))
local was = redis.call('HGET', key, 'missed')
redis.call('HSET', key, 'last', ARGV[3], 'deadline', due, 'missed', 0)
timer_arm(ARGV[1], id, due, due)
return {id, was == '1' and 1 or 0, redis.call('HGET', key, 'cfg')}"""

_EXPIRE = """-- A fired timer: mark the monitor missed if that timer is still its current arming.
-- KEYS: 1 monitor hash
-- ARGV:
--   deadline    the deadline the timer was armed for (its payload)
-- Returns the monitor's cfg if it is (now) missed for that deadline, else nil (stale).
local deadline = redis.call('HGET', KEYS[1], 'deadline')
if not deadline or deadline ~= ARGV[1] then return nil end
redis.call('HSET', KEYS[1], 'missed', 1)
return redis.call('HGET', KEYS[1], 'cfg')"""


def monitor_violations(
    monitor: routing_pb2.HeartbeatMonitor, prefix: str = "monitor"
) -> list[FieldViolation]:
    violations = [
        *id_violations(monitor.id, f"{prefix}.id"),
        *validation.service_id_violations(f"{prefix}.service_id", monitor.service_id),
        *validation.text_violations(f"{prefix}.name", monitor.name, validation.MAX_DISPLAY),
    ]
    interval = monitor.interval.seconds
    if not MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S or monitor.interval.nanos:
        violations.append(
            FieldViolation(f"{prefix}.interval", "must be whole seconds from 1 minute to 30 days")
        )
    if not 0 <= monitor.grace.seconds <= MAX_INTERVAL_S or monitor.grace.nanos:
        violations.append(
            FieldViolation(f"{prefix}.grace", "must be whole seconds from 0 to 30 days")
        )
    token = monitor.token
    if token and (
        not MIN_TOKEN <= len(token) <= MAX_TOKEN
        or not all(c.isascii() and (c.isalnum() or c in "-_") for c in token)
    ):
        violations.append(
            FieldViolation(
                f"{prefix}.token",
                f"{MIN_TOKEN} to {MAX_TOKEN} characters of letters, digits, - and _",
            )
        )
    return violations


def new_token() -> str:
    """A monitor's ping token: 32 URL-safe characters, never starting with '-', which a
    command line would take for an option (`tocsin heartbeat ping <token>` failed for one
    token in 64)."""
    while True:
        token = secrets.token_urlsafe(24)
        if not token.startswith("-"):
            return token


class HeartbeatTimerStore(TimerStore):
    def __init__(self, redis: RedisClient, clock: Clock) -> None:
        super().__init__(redis, clock, shards=1, namespace=NAMESPACE)


class HeartbeatStore:
    def __init__(self, redis: RedisClient, clock: Clock) -> None:
        self.redis: Any = redis  # replies are bytes; redis-py annotates str
        self.clock = clock
        self.timers = HeartbeatTimerStore(redis, clock)
        self._put = LuaScript(redis, "heartbeat put", TIMER_LUA, body=_PUT)
        self._delete = LuaScript(redis, "heartbeat delete", TIMER_LUA, body=_DELETE)
        self._ping = LuaScript(redis, "heartbeat ping", TIMER_LUA, body=_PING)
        self._expire = LuaScript(redis, "heartbeat expire", body=_EXPIRE)

    def _keys(self, monitor_id: str) -> list[str]:
        return [monitor_key(monitor_id), TOKENS_KEY, IDS_KEY, *timer_keys(SHARD, NAMESPACE)]

    async def put(
        self, monitor: routing_pb2.HeartbeatMonitor, *, create: bool, validate_only: bool
    ) -> routing_pb2.HeartbeatMonitor:
        stored = routing_pb2.HeartbeatMonitor()
        stored.CopyFrom(monitor)
        for name in ("last_ping_at", "deadline", "missed"):
            stored.ClearField(name)
        if not stored.token:
            current = None if create else await self._config(stored.id)
            stored.token = current.token if current is not None else new_token()
        stored.name = stored.name or stored.id
        violations = monitor_violations(stored)
        if violations:
            raise InvalidArgument(violations)
        if validate_only:
            exists = await self.redis.exists(monitor_key(stored.id))
            if create and exists:
                raise AlreadyExists(f"heartbeat monitor {stored.id!r} already exists")
            if not create and not exists:
                raise NotFound(f"heartbeat monitor {stored.id!r} does not exist")
            owner = await self.redis.hget(TOKENS_KEY, stored.token)
            if owner is not None and owner.decode() != stored.id:
                raise AlreadyExists("the token is used by another heartbeat monitor")
            return stored
        span_ms = (stored.interval.seconds + stored.grace.seconds) * 1000
        result = await self._put(
            self._keys(stored.id),
            tag=_TAG,
            id=stored.id,
            cfg=stored.SerializeToString(),
            token=stored.token,
            span_ms=span_ms,
            now_ms=self.clock.now_ms(),
            mode="create" if create else "update",
        )
        if result == b"exists":
            raise AlreadyExists(f"heartbeat monitor {stored.id!r} already exists")
        if result == b"missing":
            raise NotFound(f"heartbeat monitor {stored.id!r} does not exist")
        if result == b"token":
            raise AlreadyExists("the token is used by another heartbeat monitor")
        return await self.get(stored.id)

    async def delete(self, monitor_id: str) -> bool:
        return bool(await self._delete(self._keys(monitor_id), tag=_TAG, id=monitor_id))

    async def _config(self, monitor_id: str) -> routing_pb2.HeartbeatMonitor | None:
        raw = await self.redis.hget(monitor_key(monitor_id), "cfg")
        return None if raw is None else routing_pb2.HeartbeatMonitor.FromString(raw)

    async def get(self, monitor_id: str) -> routing_pb2.HeartbeatMonitor:
        found = await self.get_many([monitor_id])
        if not found:
            raise NotFound(f"heartbeat monitor {monitor_id!r} does not exist")
        return found[0]

    async def get_many(self, ids: list[str]) -> list[routing_pb2.HeartbeatMonitor]:
        pipe = self.redis.pipeline(transaction=False)
        for monitor_id in ids:
            pipe.hmget(monitor_key(monitor_id), "cfg", "last", "deadline", "missed")
        monitors = []
        for cfg, last, deadline, missed in await pipe.execute():
            if cfg is None:
                continue
            monitor = routing_pb2.HeartbeatMonitor.FromString(cfg)
            if last is not None:
                monitor.last_ping_at.FromMilliseconds(int(last))
            missed_now = missed == b"1"
            if deadline is not None and not missed_now:
                monitor.deadline.FromMilliseconds(int(deadline))
            monitor.missed = missed_now
            monitors.append(monitor)
        return monitors

    async def list(self) -> list[routing_pb2.HeartbeatMonitor]:
        ids = [i.decode() for i in await self.redis.zrange(IDS_KEY, 0, -1)]
        return await self.get_many(ids)

    async def ping(self, token: str) -> tuple[routing_pb2.HeartbeatMonitor, bool] | None:
        """Record a ping; (the monitor's settings, whether it was missed), or None for an
        unknown token."""
        reply: Any = await self._ping(
            [TOKENS_KEY, *timer_keys(SHARD, NAMESPACE)],
            tag=_TAG,
            token=token,
            now_ms=self.clock.now_ms(),
            prefix=f"tocsin:{_TAG}:m:",
        )
        if reply is None:
            return None
        _, was_missed, cfg = reply
        return routing_pb2.HeartbeatMonitor.FromString(cfg), bool(was_missed)

    async def expire(self, monitor_id: str, deadline: bytes) -> routing_pb2.HeartbeatMonitor | None:
        """Mark missed if `deadline` is still the monitor's; its settings, or None (stale)."""
        cfg = await self._expire([monitor_key(monitor_id)], deadline=deadline)
        return None if cfg is None else routing_pb2.HeartbeatMonitor.FromString(cfg)


def heartbeat_worker(
    store: HeartbeatStore, clock: Clock, open_incident: Any, **options: int
) -> TimerWorker:
    """Fires missed heartbeats: `open_incident(monitor)` opens its incident unless one is
    open (see the module docstring)."""

    async def fire(timer: ClaimedTimer) -> None:
        monitor = await store.expire(timer.timer_id, timer.payload)
        if monitor is None:
            return  # a ping re-armed it, or it was deleted
        log.warning("heartbeat monitor %s missed its heartbeat", monitor.id)
        await open_incident(monitor)

    options.setdefault("lease_ms", LEASE_MS)
    return TimerWorker(store.timers, clock, fire, lambda: (SHARD,), **options)
