"""Durable timers in Redis: arm, claim with a lease and a fence, complete, re-offer.

A timer lives in one of a fixed number of shards; each shard's keys share the hash tag
`shard_tag(shard)` (layout in lua/timer_lib.lua), so every script stays in one Cluster
slot. Claiming moves a due timer into flight, scored by its lease deadline, and hands out
a fence (a per-shard counter, so it only grows for a timer). Completing removes it only if
the fence still matches; a worker that stalled past its lease finds its claim re-offered
and its completion refused. Nothing is popped and forgotten.

Other modules keep their own keys under the same tag as a timer (say an incident's
escalation state, tagged `shard_tag(shard_of(incident_id, shards))`) and prepend
`TIMER_LUA` to their scripts, so a state change and its timers commit atomically:

    script = LuaScript(redis, "save", TIMER_LUA, body=(
        "-- ARGV:\n--   tag\n--   state\n--   id\n--   due_ms\n--   payload\n"
        "redis.call('SET', KEYS[1], ARGV[2]) timer_arm(ARGV[1], ARGV[3], ARGV[4], ARGV[5])"))
    await script([state_key, *timer_keys(shard)], tag=shard_tag(shard), state=..., ...)

Library functions: `timer_arm(tag, id, due_ms, payload)`, `timer_cancel(tag, id) -> 0|1`,
`timer_complete(tag, id, fence) -> 0|1`, `timer_retry(tag, id, fence, due_ms) -> 0|1` (a
handler that raises `RetryLater` gets its timer back due soon, not after its lease). Times
are clock milliseconds passed in by the caller (never Redis TIME), so a ManualClock drives
due times and leases alike.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import RedisCluster
from redis.typing import EncodableT

from tocsin.runtime.clock import Clock
from tocsin.runtime.loops import LoopGuard, WorkerHealth
from tocsin.runtime.metrics import timer_fired
from tocsin.runtime.redis import RedisClient, read_lua
from tocsin.runtime.scripts import LuaScript

log = logging.getLogger(__name__)

TIMER_LUA = read_lua("tocsin.runtime", "lua/timer_lib.lua")
"""Lua library of local functions; prepend it to a script (see module docstring)."""

DEFAULT_SHARDS = 64
_KEY_NAMES = ("timers", "inflight", "timer_payload", "timer_due", "timer_fence", "fence_seq")

# Each script's `-- ARGV:` header names its arguments (runtime/scripts.py); `tag` is the
# shard's timer tag, which TimerStore._run passes to every one.
_ARM = """-- ARGV:
--   tag
--   id
--   due_ms
--   payload
timer_arm(ARGV[1], ARGV[2], ARGV[3], ARGV[4])"""
_CANCEL = """-- ARGV:
--   tag
--   id
return timer_cancel(ARGV[1], ARGV[2])"""
_COMPLETE = """-- ARGV:
--   tag
--   id
--   fence
return timer_complete(ARGV[1], ARGV[2], ARGV[3])"""
_RETRY = """-- ARGV:
--   tag
--   id
--   fence
--   due_ms
return timer_retry(ARGV[1], ARGV[2], ARGV[3], ARGV[4])"""
_CLAIM = """-- ARGV:
--   tag
--   id
--   now_ms
--   lease_ms
return timer_claim(ARGV[1], ARGV[2], ARGV[3], ARGV[4])"""
_CLAIM_DUE = """-- ARGV:
--   tag
--   now_ms
--   limit
--   lease_ms
local claimed = timer_claim_due(ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return {timer_next_wake(ARGV[1]), claimed}"""
_REAP = """-- ARGV:
--   tag
--   now_ms
--   limit
return timer_reap(ARGV[1], ARGV[2], ARGV[3])"""
_NEXT_WAKE = """-- ARGV:
--   tag
return timer_next_wake(ARGV[1])"""
_PENDING = """-- KEYS: timers, inflight
-- ARGV: none
return redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])"""


def shard_of(entity_id: str, shards: int = DEFAULT_SHARDS) -> int:
    """The shard of an id: stable across processes and versions (CRC-32)."""
    return zlib.crc32(entity_id.encode()) % shards


def shard_tag(shard: int) -> str:
    """The Redis Cluster hash tag of a shard, e.g. '{t17}'; put it in related keys."""
    return f"{{t{shard}}}"


def timer_tag(shard: int, namespace: str = "") -> str:
    """What the Lua library builds a shard's timer keys from: '{t17}' or '{t17}:snooze'.
    A namespace keeps one service's timers away from another's worker in the same slot."""
    return f"{shard_tag(shard)}:{namespace}" if namespace else shard_tag(shard)


def timer_keys(shard: int, namespace: str = "") -> list[str]:
    """Every key the timer library touches in `shard`, to declare in a script's KEYS."""
    return [f"tocsin:{timer_tag(shard, namespace)}:{name}" for name in _KEY_NAMES]


@dataclass(frozen=True, slots=True)
class ClaimedTimer:
    timer_id: str
    shard: int
    payload: bytes
    due_ms: int
    fence: int
    """Grows with every claim of this timer; fence the handler's own writes with it."""
    lease_deadline_ms: int
    """After this moment the timer may be offered to another worker."""


class TimerStore:
    def __init__(
        self,
        redis: RedisClient,
        clock: Clock,
        shards: int = DEFAULT_SHARDS,
        namespace: str = "",
        *,
        hash_tag: str = "",
    ) -> None:
        """`hash_tag` (one shard only): keep the timers under that tag, e.g. '{sched}', so a
        script can check its owner's keys and arm a timer in one step
        (`tocsin:{sched}:handoff:timers` ...)."""
        if shards < 1:
            raise ValueError("shards must be at least 1")
        if hash_tag and shards != 1:
            raise ValueError("a hash_tag holds one shard")
        self.redis = redis
        self.clock = clock
        self.shards = shards
        self.namespace = namespace
        self.hash_tag = hash_tag
        self._arm = LuaScript(redis, "timer arm", TIMER_LUA, body=_ARM)
        self._cancel = LuaScript(redis, "timer cancel", TIMER_LUA, body=_CANCEL)
        self._complete = LuaScript(redis, "timer complete", TIMER_LUA, body=_COMPLETE)
        self._retry = LuaScript(redis, "timer retry", TIMER_LUA, body=_RETRY)
        self._claim = LuaScript(redis, "timer claim", TIMER_LUA, body=_CLAIM)
        self._claim_due = LuaScript(redis, "timer claim due", TIMER_LUA, body=_CLAIM_DUE)
        self._reap = LuaScript(redis, "timer reap", TIMER_LUA, body=_REAP)
        self._next_wake = LuaScript(redis, "timer next wake", TIMER_LUA, body=_NEXT_WAKE)
        self._pending = LuaScript(redis, "timers pending", body=_PENDING)

    def tag(self, shard: int) -> str:
        """What the Lua library builds `shard`'s keys from (pass it as a script's `tag`)."""
        if self.hash_tag:
            return f"{self.hash_tag}:{self.namespace}" if self.namespace else self.hash_tag
        return timer_tag(shard, self.namespace)

    def keys(self, shard: int) -> list[str]:
        """Every key of `shard`, to declare in a script's KEYS (as `timer_keys`)."""
        return [f"tocsin:{self.tag(shard)}:{name}" for name in _KEY_NAMES]

    def shard_for(self, timer_id: str, shard: int | None = None) -> int:
        """`shard` if given (and valid), else the shard of `timer_id`."""
        if shard is None:
            return shard_of(timer_id, self.shards)
        self._check_shard(shard)
        return shard

    async def arm(
        self, timer_id: str, due_ms: int, payload: bytes, shard: int | None = None
    ) -> None:
        """Arm `timer_id` to fire at `due_ms`; re-arming replaces the earlier arming."""
        if not timer_id:
            raise ValueError("timer_id must not be empty")
        shard = self.shard_for(timer_id, shard)
        await self._run(self._arm, shard, id=timer_id, due_ms=int(due_ms), payload=payload)

    async def cancel(self, timer_id: str, shard: int | None = None) -> bool:
        """Cancel a waiting or in-flight timer; False if there was none."""
        shard = self.shard_for(timer_id, shard)
        return bool(await self._run(self._cancel, shard, id=timer_id))

    async def claim_due(self, shard: int, limit: int, lease_ms: int) -> list[ClaimedTimer]:
        """Claim up to `limit` due timers of `shard` (re-offering expired leases first)."""
        claimed, _ = await self.claim_due_and_next_wake(shard, limit, lease_ms)
        return claimed

    async def claim_due_and_next_wake(
        self, shard: int, limit: int, lease_ms: int
    ) -> tuple[list[ClaimedTimer], int | None]:
        """`claim_due` plus `next_due_ms` of the shard after the claim, in one round trip."""
        self._check_shard(shard)
        now = self.clock.now_ms()
        next_wake, rows = await self._run(
            self._claim_due, shard, now_ms=now, limit=limit, lease_ms=lease_ms
        )
        return [claimed_from_reply(shard, row) for row in rows], _optional_ms(next_wake)

    async def claim(self, timer_id: str, shard: int | None, lease_ms: int) -> ClaimedTimer | None:
        """Claim this one timer if it is due and not in flight (the no-poll fast path)."""
        shard = self.shard_for(timer_id, shard)
        row = await self._run(
            self._claim, shard, id=timer_id, now_ms=self.clock.now_ms(), lease_ms=lease_ms
        )
        return claimed_from_reply(shard, row) if row else None

    async def complete(self, claimed: ClaimedTimer) -> bool:
        """Remove a fired timer; False (and nothing changed) if the claim went stale."""
        result = await self._run(
            self._complete, claimed.shard, id=claimed.timer_id, fence=claimed.fence
        )
        return bool(result)

    async def complete_with(self, claimed: ClaimedTimer, queue: Callable[[Any], None]) -> bool:
        """`complete`, after the commands `queue` adds to a pipeline (plain commands, no
        script): on one Redis server in one round trip, a MULTI/EXEC, so a command Redis
        refuses before running any (out of memory, a wrong argument) leaves the timer to
        fire again; on a Cluster (whose pipelines take no script) those commands first,
        then `complete`. Raises what Redis raised for those commands."""
        if isinstance(self.redis, RedisCluster):
            first = self.redis.pipeline()
            queue(first)
            await first.execute()
            return await self.complete(claimed)
        pipe = self.redis.pipeline(transaction=True)
        queue(pipe)
        complete = self._complete.queue(
            pipe,
            self.keys(claimed.shard),
            tag=self.tag(claimed.shard),
            id=claimed.timer_id,
            fence=claimed.fence,
        )
        replies = await pipe.execute(raise_on_error=False)
        for reply in replies[:-1]:
            if isinstance(reply, Exception):
                raise reply
        return bool(await complete.result(replies[-1]))

    async def retry(self, claimed: ClaimedTimer, due_ms: int) -> bool:
        """Give a claimed timer back, due again at `due_ms`, instead of leaving it in
        flight until its lease ends; False (and nothing changed) if the claim went stale."""
        result = await self._run(
            self._retry, claimed.shard, id=claimed.timer_id, fence=claimed.fence, due_ms=due_ms
        )
        return bool(result)

    async def reap_expired(self, shard: int, limit: int = 1000) -> int:
        """Re-offer up to `limit` in-flight timers of `shard` whose lease has passed."""
        self._check_shard(shard)
        return int(await self._run(self._reap, shard, now_ms=self.clock.now_ms(), limit=limit))

    async def pending_count(self, shard: int) -> int:
        """Timers of `shard` armed and not yet completed or cancelled (waiting or in flight)."""
        self._check_shard(shard)
        return int(await self._pending(self.keys(shard)[:2]))

    async def next_due_ms(self, shard: int) -> int | None:
        """When a claim on `shard` could next return a timer (a due time or lease end)."""
        self._check_shard(shard)
        return _optional_ms(await self._run(self._next_wake, shard))

    async def _run(self, script: LuaScript, shard: int, **args: EncodableT) -> Any:
        return await script(self.keys(shard), tag=self.tag(shard), **args)

    def _check_shard(self, shard: int) -> None:
        if not 0 <= shard < self.shards:
            raise ValueError(f"shard must be in [0, {self.shards}), got {shard}")


def claimed_from_reply(shard: int, row: list[bytes | int]) -> ClaimedTimer:
    """A claim as the library's timer_take returns it: {id, payload, due, fence, deadline}
    (scripts that claim for their caller, e.g. notification's notify.lua, return it too)."""
    timer_id, payload, due_ms, fence, deadline = row
    assert isinstance(timer_id, bytes) and isinstance(payload, bytes)
    return ClaimedTimer(
        timer_id=timer_id.decode(),
        shard=shard,
        payload=payload,
        due_ms=int(due_ms),
        fence=int(fence),
        lease_deadline_ms=int(deadline),
    )


def _optional_ms(value: int) -> int | None:
    ms = int(value)
    return None if ms < 0 else ms


Handler = Callable[[ClaimedTimer], Awaitable[None]]


class RetryLater(Exception):
    """Raised by a timer handler that could not do its work now for a reason that passes
    (a peer still starting): the worker gives the timer back, due again in `delay_ms`
    (clock time), rather than leaving it in flight until its lease ends. The handler
    logs why; the worker does not log it again."""

    def __init__(self, delay_ms: int, reason: str = "") -> None:
        super().__init__(reason or f"retry in {delay_ms} ms")
        self.delay_ms = delay_ms


class TimerWorker:
    """Fires due timers of the shards `shard_source()` names (e.g. `ShardLeases.owned`).

    `lease_ms` must exceed the slowest handler: a handler still running when its lease
    ends may see its timer fired again elsewhere (the fence tells the two apart). Handlers
    of one batch run concurrently. In `run`, handlers run in the background (at most
    `max_running` at once), so a timer that comes due while earlier handlers still wait on
    their I/O is claimed at its due time rather than after them.
    """

    def __init__(
        self,
        store: TimerStore,
        clock: Clock,
        handler: Handler,
        shard_source: Callable[[], Iterable[int]],
        lease_ms: int = 30_000,
        batch: int = 100,
        poll_interval_ms: int = 1_000,
        max_running: int = 256,
    ) -> None:
        self.store = store
        self.kind = store.namespace or "timers"
        """The `kind` label of tocsin.timer.lateness (escalation, notify, snooze)."""
        self.clock = clock
        self.handler = handler
        self.shard_source = shard_source
        self.lease_ms = lease_ms
        self.batch = batch
        self.poll_interval_ms = poll_interval_ms
        self.max_running = max_running
        self._wake = asyncio.Event()
        self._next_wake_ms: int | None = None
        self._running: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Check for due timers now instead of at the next due time or poll."""
        self._wake.set()

    async def run_once(self) -> int:
        """Claim and fire the due timers of the current shards; returns how many fired.

        A handler that raises leaves its timer in flight; it is offered again once its
        lease ends. A successful handler's timer is completed (a no-op if its claim went
        stale meanwhile, or if the handler completed it itself in its own script).
        """
        started, failures = await self._claim_and_start()
        for error in failures:
            log.warning("cannot claim timers of a shard, retried later: %s", error)
        await asyncio.gather(*started)
        return len(started)

    async def _claim_and_start(self) -> tuple[list[asyncio.Task[None]], list[Exception]]:
        """Claim the due timers of the current shards and start their handlers; also the
        errors of the shards that could not be claimed (retried on the next round)."""
        shards = sorted(set(self.shard_source()))
        results = await asyncio.gather(
            *(self.store.claim_due_and_next_wake(s, self.batch, self.lease_ms) for s in shards),
            return_exceptions=True,
        )
        claimed: list[ClaimedTimer] = []
        next_wakes: list[int] = []
        failures: list[Exception] = []
        for result in results:
            if isinstance(result, Exception):
                # Fire what the other shards gave us; this one is retried on the next poll.
                failures.append(result)
                continue
            if isinstance(result, BaseException):
                raise result
            timers, wake = result
            claimed += timers
            if wake is not None:
                next_wakes.append(wake)
        self._next_wake_ms = min(next_wakes) if next_wakes else None
        started = [asyncio.create_task(self._fire(timer)) for timer in claimed]
        self._running.update(started)
        for task in started:
            task.add_done_callback(self._running.discard)
        return started, failures

    async def run(self, stop: asyncio.Event, health: WorkerHealth | None = None) -> None:
        """Fire timers until `stop` is set, sleeping on the clock until the next due time.

        Any error claiming (on any shard) is logged and retried after a short backoff
        (at most the poll interval, in real time): the worker never stops by itself.
        """
        name = f"timer worker{' ' + self.store.namespace if self.store.namespace else ''}"
        cap_s = max(0.1, self.poll_interval_ms / 1000)
        guard = (
            LoopGuard(name, stop, backoff_cap_s=cap_s)
            if health is None
            else health.guard(name, stop, backoff_cap_s=cap_s)
        )
        stopper = asyncio.create_task(_set_when(stop, self._wake))
        try:
            while not stop.is_set():
                if len(self._running) >= self.max_running:
                    await asyncio.wait(set(self._running), return_when=asyncio.FIRST_COMPLETED)
                    continue
                self._wake.clear()
                wake_at = self.clock.now_ms() + self.poll_interval_ms
                async with guard:
                    _, failures = await self._claim_and_start()
                    if failures:  # the shards that answered are firing already
                        raise failures[0]
                    if self._next_wake_ms is not None:
                        wake_at = min(wake_at, self._next_wake_ms)
                if guard.ok:
                    await self.clock.sleep_until(wake_at, self._wake)
        finally:
            stopper.cancel()
            await self._finish_running()

    async def _finish_running(self) -> None:
        """Let the handlers still running finish; cancel them if we are cancelled (their
        timers stay in flight and are offered again after their lease)."""
        try:
            if self._running:
                await asyncio.wait(set(self._running))
        except asyncio.CancelledError:
            for task in self._running:
                task.cancel()
            raise

    async def _fire(self, timer: ClaimedTimer) -> None:
        timer_fired(self.kind, self.clock.now_ms(), timer.due_ms)
        try:
            await self.handler(timer)
        except RetryLater as later:
            await retry_later(self.store, timer, later)
            return
        except Exception:
            log.exception(
                "timer %s (fence %d) failed; retried after its lease", timer.timer_id, timer.fence
            )
            return
        try:
            completed = await self.store.complete(timer)
        except Exception as error:
            log.warning(
                "timer %s fired but not completed; it will fire again: %s", timer.timer_id, error
            )
            return
        if not completed:
            log.debug("timer %s: claim with fence %d went stale", timer.timer_id, timer.fence)


async def retry_later(store: TimerStore, timer: ClaimedTimer, later: RetryLater) -> None:
    """Give `timer` back, due `later.delay_ms` from now; if even that fails, its lease
    ends and it is offered again anyway."""
    try:
        await store.retry(timer, store.clock.now_ms() + later.delay_ms)
    except Exception as error:
        log.warning(
            "timer %s not given back (offered again after its lease): %s", timer.timer_id, error
        )


async def _set_when(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()
