"""Where event rules and suppressed alerts live in Redis, and the ingest path's rule cache.

Keys (one hash tag, so every script stays in one Cluster slot):

    tocsin:{rules}:sets             hash    scope -> EventRuleSet protobuf ("@global" for
                                            the global set, else the service id)
    tocsin:{rules}:version          string  incremented by every change of any set
    tocsin:{rules}:suppressed       stream  SuppressedAlert protobufs (the newest
                                            SUPPRESSED_KEPT, approximately)
    tocsin:{rules}:suppressed-count hash    service id -> alerts suppressed, and "" -> all

The guarantee of `RuleCache`: the ingest path never reads rules from Redis per alert. It
keeps every set compiled in memory with the version it was read at, and asks Redis for the
version (one GET) at most once per `check_interval_s` of monotonic time, shared by every
alert in flight; only a changed version re-reads the sets. A change made through this
replica takes effect on it at once, and on other replicas within `check_interval_s`. If
Redis cannot be read, the last compiled rules stay in use (and none at a cold start): the
alert itself is then written through the same Redis, which decides whether it can be.

In a running incidents process the check is made by a supervised loop (`RuleCache.run`,
twice per `check_interval_s`), so no alert waits for it: done by the first alert after
the interval, it was one more Redis round trip, before `trigger.lua`, on the path of
every alert that came more than a second after the last one, a lone alert's every time.
Without the loop (tests, or a loop that stopped checking) an alert checks, as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from tocsin.incidents import rules
from tocsin.runtime.clock import Clock
from tocsin.runtime.loops import WorkerHealth, run_loop, wait_or_timeout
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.scripts import LuaScript
from tocsin.v1 import incidents_pb2, routing_pb2

log = logging.getLogger(__name__)

SETS_KEY = "tocsin:{rules}:sets"
VERSION_KEY = "tocsin:{rules}:version"
SUPPRESSED_KEY = "tocsin:{rules}:suppressed"
SUPPRESSED_COUNT_KEY = "tocsin:{rules}:suppressed-count"
GLOBAL_FIELD = "@global"
SUPPRESSED_KEPT = 10_000
"""Suppressed alerts kept for ListSuppressedAlerts (the counts count them all)."""
CHECK_INTERVAL_S = 1.0

_SET = """-- Replace (or with no rules, remove) one rule set and bump the version.
-- KEYS: 1 sets hash, 2 version
-- ARGV:
--   scope
--   rule_set    EventRuleSet protobuf without its version ('' = remove)
-- Returns the new version.
local v = redis.call('INCR', KEYS[2])
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. string.char(24) .. v_bytes(v))
end
return v"""
_VARINT = """local function v_bytes(n)
  local out = {}
  n = math.floor(tonumber(n))
  while n >= 128 do
    out[#out + 1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  out[#out + 1] = string.char(n)
  return table.concat(out)
end"""
_SUPPRESS = """-- Record a suppressed alert and count it.
-- KEYS: 1 stream, 2 counts hash
-- ARGV:
--   service_id
--   alert       SuppressedAlert protobuf
--   maxlen
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'a', ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return redis.call('HINCRBY', KEYS[2], '', 1)"""


def _scope(service_id: str) -> str:
    return service_id or GLOBAL_FIELD


class RuleStore:
    def __init__(self, redis: RedisClient, clock: Clock) -> None:
        self.redis: Any = redis  # replies are bytes; redis-py annotates str
        self.clock = clock
        self._set = LuaScript(redis, "event rules set", _VARINT, body=_SET)
        self._suppress = LuaScript(redis, "event rules suppress", body=_SUPPRESS)

    async def put(self, rule_set: routing_pb2.EventRuleSet) -> routing_pb2.EventRuleSet:
        """Store `rule_set` (checked by the caller); returns it with its new version."""
        stored = routing_pb2.EventRuleSet()
        stored.CopyFrom(rule_set)
        stored.ClearField("version")
        version = await self._set(
            [SETS_KEY, VERSION_KEY],
            scope=_scope(rule_set.service_id),
            rule_set=stored.SerializeToString() if stored.rules else b"",
        )
        stored.version = int(version)
        return stored

    async def get(self, service_id: str) -> routing_pb2.EventRuleSet:
        raw = await self.redis.hget(SETS_KEY, _scope(service_id))
        if raw is None:
            return routing_pb2.EventRuleSet(service_id=service_id)
        return routing_pb2.EventRuleSet.FromString(raw)

    async def all(self) -> tuple[int, list[routing_pb2.EventRuleSet]]:
        """(version, every stored set: the global one first, then by service id)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(VERSION_KEY)
        pipe.hgetall(SETS_KEY)
        version, raw = await pipe.execute()
        sets = [routing_pb2.EventRuleSet.FromString(v) for v in raw.values()]
        sets.sort(key=lambda s: (s.service_id != "", s.service_id))
        return int(version or 0), sets

    async def version(self) -> int:
        return int(await self.redis.get(VERSION_KEY) or 0)

    async def record_suppressed(
        self, service_id: str, dedup_key: str, alert: incidents_pb2.Alert, rule: str
    ) -> int:
        """Record an alert a rule suppressed; returns how many were suppressed in all."""
        entry = routing_pb2.SuppressedAlert(
            service_id=service_id,
            dedup_key=dedup_key,
            rule=rule,
            summary=alert.summary,
            severity=alert.severity,
            source=alert.source,
        )
        entry.at.FromMilliseconds(self.clock.now_ms())
        total = await self._suppress(
            [SUPPRESSED_KEY, SUPPRESSED_COUNT_KEY],
            service_id=service_id,
            alert=entry.SerializeToString(),
            maxlen=SUPPRESSED_KEPT,
        )
        return int(total)

    async def suppressed(
        self, service_id: str, limit: int
    ) -> tuple[list[routing_pb2.SuppressedAlert], int]:
        """The newest `limit` suppressed alerts (of `service_id`, if given), and the count
        (of that service, or of all)."""
        found: list[routing_pb2.SuppressedAlert] = []
        last = "+"
        while len(found) < limit:
            rows = await self.redis.xrevrange(SUPPRESSED_KEY, last, "-", count=500)
            if not rows:
                break
            for entry_id, fields in rows:  # noqa: B007 - the last id bounds the next page
                alert = routing_pb2.SuppressedAlert.FromString(fields[b"a"])
                if not service_id or alert.service_id == service_id:
                    found.append(alert)
                    if len(found) == limit:
                        break
            if len(rows) < 500:
                break
            last = "(" + (entry_id.decode() if isinstance(entry_id, bytes) else entry_id)
        count = await self.redis.hget(SUPPRESSED_COUNT_KEY, service_id)
        return found, int(count or 0)


class RuleCache:
    """Compiled rule sets for the ingest path (see the module docstring)."""

    def __init__(self, store: RuleStore, check_interval_s: float = CHECK_INTERVAL_S) -> None:
        self.store = store
        self.check_interval_s = check_interval_s
        self._version = -1
        self._sets: dict[str, rules.RuleSet] = {}
        self._checked_at: float | None = None
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        """Check the version on the next alert (a change was made through this replica)."""
        self._checked_at = None

    async def run(self, stop: asyncio.Event, health: WorkerHealth) -> None:
        """Check the version twice per `check_interval_s` until `stop`, so an alert finds
        the rules checked less than `check_interval_s` ago and never waits for the GET. A
        failed check keeps the last rules (the guard logs it and backs off; alerts past
        the interval then check for themselves, as without the loop); the guard reports
        a check that hangs."""
        await run_loop(
            health.guard("incidents event rules refresh", stop),
            stop,
            self.check,  # a failure: the guard logs it and backs off
            lambda: wait_or_timeout(stop, self.check_interval_s / 2),
        )

    async def check(self) -> None:
        """The loop's check: the version now (and the sets if it changed); raises what
        reading Redis raised. Alerts meanwhile use the rules checked before."""
        async with self._lock:
            await self._refresh()
            self._checked_at = time.monotonic()

    async def sets(self) -> dict[str, rules.RuleSet]:
        """Scope ("" = global) -> compiled set, current within `check_interval_s`."""
        if self._fresh():
            return self._sets
        async with self._lock:
            if self._fresh():  # another alert refreshed it while this one waited
                return self._sets
            await self._check()
        return self._sets

    async def _check(self) -> None:
        """Under `_lock`: the version, and the sets if it changed."""
        try:
            await self._refresh()
        except Exception:  # keep the last rules; the alert goes on
            log.warning("event rules could not be read; using the last ones", exc_info=True)
        self._checked_at = time.monotonic()

    def _fresh(self) -> bool:
        checked = self._checked_at
        return checked is not None and time.monotonic() - checked < self.check_interval_s

    async def _refresh(self) -> None:
        if await self.store.version() == self._version:
            return
        version, stored = await self.store.all()
        self._sets = {s.service_id: rules.compile_rule_set(s) for s in stored}
        self._version = version
