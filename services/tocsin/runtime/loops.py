"""Supervised background loops: no loop dies silently, and health reflects the loops.

Every background loop of a tocsin process (timer workers, lease heartbeats, stream
consumers, sweeps, the auditor, the Redis probe) runs its iterations inside a
`LoopGuard`. An iteration that raises any `Exception` (a `RedisError`, but also redis-py's
`RedisClusterException` or an `AttributeError` from a connection closed under it) is
logged, rate-limited, and followed by a jittered exponential backoff in real time; then
the loop goes on, and redis-py reconnects on the next command. Cancellation and other
`BaseException`s pass through: they are how a process stops.

Each guard reports to the process's `WorkerHealth`, which is unhealthy while any loop

- has kept failing, without a success, for longer than its `fail_after_s`;
- has been inside one iteration for longer than its `stuck_after_s` (a call hanging on a
  Redis that stopped answering); or
- ended (its task returned or raised) while the process was not stopping.

`watch_health` mirrors that into the gRPC health service: NOT_SERVING while unhealthy (so
Kubernetes stops routing to, and then restarts, the process; the gateway's `/healthz`
reports it), SERVING again as soon as every loop works. `probe_redis` is the loop that
makes a process with no other loop (scheduling) reflect its Redis too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from redis.asyncio import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from tocsin.runtime.redis import RedisClient

log = logging.getLogger(__name__)

FAIL_AFTER_S = 30.0
"""A loop failing for this long without a success makes the process unhealthy."""
STUCK_AFTER_S = 60.0
"""An iteration running this long (a hung call) makes the process unhealthy."""
LOG_EVERY_S = 30.0
"""While a loop keeps failing, one log line per this interval (plus the first failure)."""
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 5.0
PROBE_INTERVAL_S = 1.0
PROBE_STUCK_AFTER_S = 5.0
HEALTH_INTERVAL_S = 0.5


@dataclass
class _LoopState:
    name: str
    fail_after_s: float | None = None
    """None: the registry's (WorkerHealth.fail_after_s, read when judged)."""
    stuck_after_s: float | None = None
    busy_since: float | None = None
    failing_since: float | None = None
    failures: int = 0
    last_error: str = ""
    ended: bool = False


class WorkerHealth:
    """The health of one process's background loops (see the module docstring)."""

    def __init__(
        self, fail_after_s: float = FAIL_AFTER_S, stuck_after_s: float = STUCK_AFTER_S
    ) -> None:
        self.fail_after_s = fail_after_s
        self.stuck_after_s = stuck_after_s
        self._loops: dict[str, _LoopState] = {}

    def guard(
        self,
        name: str,
        stop: asyncio.Event | None = None,
        *,
        fail_after_s: float | None = None,
        stuck_after_s: float | None = None,
        backoff_cap_s: float = BACKOFF_CAP_S,
    ) -> LoopGuard:
        """A guard for the loop `name`, registered here (a name already used is reused)."""
        state = self._loops.setdefault(name, _LoopState(name))
        state.fail_after_s, state.stuck_after_s = fail_after_s, stuck_after_s
        return LoopGuard(name, stop, state=state, backoff_cap_s=backoff_cap_s)

    def track(self, name: str, task: asyncio.Task[None], stopping: asyncio.Event) -> None:
        """Count `task` as a loop: if it ends while `stopping` is not set, the process is
        unhealthy for good (a loop that returned or died cannot come back by itself)."""
        state = self._loops.setdefault(name, _LoopState(name))

        def ended(task: asyncio.Task[None]) -> None:
            if stopping.is_set():
                return
            state.ended = True
            error = None if task.cancelled() else task.exception()
            log.error("background task %s ended unexpectedly", name, exc_info=error)

        task.add_done_callback(ended)

    def problems(self) -> list[str]:
        """What makes the process unhealthy, one line per loop (empty when healthy)."""
        now = time.monotonic()
        found = []
        for state in self._loops.values():
            fail_after = self.fail_after_s if state.fail_after_s is None else state.fail_after_s
            stuck_after = self.stuck_after_s if state.stuck_after_s is None else state.stuck_after_s
            if state.ended:
                found.append(f"{state.name}: ended")
            elif state.busy_since is not None and now - state.busy_since > stuck_after:
                found.append(f"{state.name}: stuck for {now - state.busy_since:.0f}s")
            elif state.failing_since is not None and now - state.failing_since >= fail_after:
                found.append(
                    f"{state.name}: failing for {now - state.failing_since:.0f}s "
                    f"({state.failures} attempts, last: {state.last_error})"
                )
        return found

    @property
    def healthy(self) -> bool:
        return not self.problems()


class LoopGuard:
    """`async with guard:` around one iteration of a loop; an `Exception` inside is
    logged, backed off (real time, returning early once `stop` is set) and swallowed.
    `guard.ok` tells whether the last iteration succeeded."""

    def __init__(
        self,
        name: str,
        stop: asyncio.Event | None = None,
        *,
        state: _LoopState | None = None,
        backoff_cap_s: float = BACKOFF_CAP_S,
    ) -> None:
        self.name = name
        self.stop = stop
        self.state = state or _LoopState(name)
        self.backoff_cap_s = backoff_cap_s
        self.ok = True
        self._last_log = 0.0

    async def __aenter__(self) -> LoopGuard:
        self.state.busy_since = time.monotonic()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self.state.busy_since = None
        if exc is None:
            self.succeeded()
            return False
        if not isinstance(exc, Exception):
            return False  # cancelled or exiting: let it through
        self.failed(exc)
        await self.backoff()
        return True

    def succeeded(self) -> None:
        state = self.state
        if state.failing_since is not None:
            log.info("%s recovered after %d failed attempts", self.name, state.failures)
        state.failing_since = None
        state.failures = 0
        self.ok = True

    def failed(self, error: BaseException) -> None:
        """Record a failure and log it (the first one of a run, then one per
        LOG_EVERY_S), without backing off."""
        state = self.state
        now = time.monotonic()
        first = state.failing_since is None
        if first:
            state.failing_since = now
        state.failures += 1
        state.last_error = _describe(error)
        self.ok = False
        if first or now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            expected = isinstance(error, RedisError | RedisClusterException | OSError)
            log.warning(
                "%s failed (%d attempts in %.0fs), retrying with backoff: %s",
                self.name,
                state.failures,
                now - (state.failing_since or now),
                state.last_error,
                # An unexpected error gets its traceback once per run: it is likely a bug.
                exc_info=error if first and not expected else None,
            )

    async def backoff(self) -> None:
        """Sleep before the next attempt: exponential in the failures, with full jitter
        in its upper half, at most `backoff_cap_s`; returns early when `stop` is set."""
        exponent = min(self.state.failures - 1, 16)
        delay = min(self.backoff_cap_s, BACKOFF_BASE_S * 2**exponent)
        delay *= random.uniform(0.5, 1.0)  # jitter, not cryptography
        if self.stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=delay)


def _describe(error: BaseException) -> str:
    """The error's type and message (redis-py's messages name hosts, never passwords)."""
    text = str(error).splitlines()[0][:300] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def lone_guard(name: str, stop: asyncio.Event | None = None) -> LoopGuard:
    """A guard reporting to no health registry (for parts run outside a service)."""
    return LoopGuard(name, stop)


async def wait_or_timeout(event: asyncio.Event, seconds: float) -> None:
    """Wait until `event` is set or `seconds` of real time have passed, whichever comes
    first: a loop's pause that a stop (or a wake-up) cuts short."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


async def run_loop(
    guard: LoopGuard,
    stop: asyncio.Event,
    body: Callable[[], Awaitable[object]],
    pause: Callable[[], Awaitable[object]],
    *,
    pause_first: bool = False,
) -> None:
    """Until `stop`: run `body` under `guard`, then `pause` (after a success; a failure
    is retried after the guard's backoff instead)."""
    if pause_first:
        await pause()
    while not stop.is_set():
        async with guard:
            await body()
        if guard.ok and not stop.is_set():
            await pause()


async def probe_redis(
    redis: RedisClient,
    health: WorkerHealth,
    stop: asyncio.Event,
    interval_s: float = PROBE_INTERVAL_S,
    stuck_after_s: float = PROBE_STUCK_AFTER_S,
) -> None:
    """PING Redis (every master of a Cluster) every `interval_s`: a failed PING makes the
    process unhealthy at once, a PING unanswered for `stuck_after_s` too. PING still
    answers when Redis refuses writes at maxmemory, so the probe also reads INFO memory:
    a master over its maxmemory that cannot evict (noeviction, the policy tocsin needs,
    or a volatile-* one) counts as failed until memory is freed."""
    guard = health.guard("redis probe", stop, fail_after_s=0.0, stuck_after_s=stuck_after_s)

    async def pause() -> None:
        await wait_or_timeout(stop, interval_s)

    async def ping() -> None:
        if isinstance(redis, RedisCluster):  # every master: each holds slots tocsin needs
            await redis.ping(target_nodes=RedisCluster.PRIMARIES)
            replies = await redis.info("memory", target_nodes=RedisCluster.PRIMARIES)
            memories = list(replies.values()) if isinstance(replies, dict) else [replies]
            if memories and not all(isinstance(m, dict) for m in memories):
                memories = [replies]
        else:
            await redis.ping()
            memories = [await redis.info("memory")]
        for memory in memories:
            refusing = refuses_writes(memory)
            if refusing:
                raise RedisOutOfMemory(refusing)

    await run_loop(guard, stop, ping, pause)


class RedisOutOfMemory(RedisError):
    """Redis answers but refuses writes (used_memory over maxmemory, nothing evictable)."""


def refuses_writes(memory: Mapping[str, Any]) -> str | None:
    """Why a Redis whose INFO memory is `memory` refuses writes (`OOM command not
    allowed`), or None."""
    limit = int(memory.get("maxmemory", 0) or 0)
    used = int(memory.get("used_memory", 0) or 0)
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    if limit <= 0 or used <= limit or policy.startswith("allkeys"):
        return None
    return f"Redis refuses writes: used_memory {used} > maxmemory {limit} ({policy})"


class _HealthSetter(Protocol):
    async def set_serving(self, serving: bool) -> None: ...


async def watch_health(
    health: WorkerHealth,
    server: _HealthSetter,
    stop: asyncio.Event,
    interval_s: float = HEALTH_INTERVAL_S,
) -> None:
    """Keep the gRPC health status equal to `health.healthy` until `stop` is set."""
    serving = True
    while not stop.is_set():
        try:
            problems = health.problems()
            if bool(problems) == serving and not stop.is_set():
                serving = not problems
                await server.set_serving(serving)
                if serving:
                    log.info("background work recovered: SERVING again")
                else:
                    log.error("NOT_SERVING: %s", "; ".join(problems))
        except Exception:
            log.exception("health watcher failed; trying again")
        await wait_or_timeout(stop, interval_s)
