"""Concurrent calls of one Lua script share a Redis round trip.

redis-py spends about as much CPU sending one command as the rest of the ingest handler
(~120 µs per EVALSHA on the reference machine); in a pipeline the cost per command falls
to 25-50 µs. Under an alert storm many Trigger calls are in flight at once, so the calls
that arrive while batches are on the wire go out together in the next one; a lone call
goes out after one turn of the event loop. Up to `max_senders` batches are on the wire at
once, so Redis runs one batch's scripts while this process prepares the next (with one,
each waited for the other: ~100 µs of Redis time per alert added to ~250 µs of Python).
Each call gets its own result or error, and a call refused with NOSCRIPT (Redis lost its
scripts in a restart) is retried alone through the script object, which loads the
script. Batching changes no semantics: every script still runs atomically on its own.

redis-py refuses EVALSHA in a Cluster pipeline, so on a Cluster each call goes alone, at
most CLUSTER_CONCURRENCY at once: redis-py's cluster client fails a command outright when a
node's connections are all busy, rather than waiting for one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from tocsin.runtime.redis import RedisClient

_Call = tuple[Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]

CLUSTER_CONCURRENCY = 64


class BatchedScript:
    def __init__(
        self, redis: RedisClient, script: AsyncScript, max_batch: int = 256, max_senders: int = 4
    ) -> None:
        self.redis = redis
        self.script = script
        self.max_batch = max_batch
        self.max_senders = max_senders
        self._waiting: list[_Call] = []
        self._senders: set[asyncio.Task[None]] = set()
        self._starting: asyncio.Task[None] | None = None
        """A sender not yet running: it will take every call waiting when it starts, so a
        burst needs no second one until it is on the wire."""
        self._cluster_calls = asyncio.Semaphore(CLUSTER_CONCURRENCY)

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        if isinstance(self.redis, RedisCluster):
            async with self._cluster_calls:
                return await self.script(keys=keys, args=args)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((keys, args, future))
        starting = self._starting is not None and not self._starting.done()
        if not starting and len(self._senders) < self.max_senders:
            sender = asyncio.create_task(self._send_waiting())
            self._starting = sender
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        return await future

    async def _send_waiting(self) -> None:
        self._starting = None
        batch: list[_Call] = []
        try:
            while self._waiting:
                batch = self._waiting[: self.max_batch]
                del self._waiting[: self.max_batch]
                await self._send(batch)
        except BaseException:  # cancelled (shutdown): no caller may wait forever
            for _, _, future in (*batch, *self._waiting):
                future.cancel()
            self._waiting.clear()
            raise

    async def _send(self, batch: list[_Call]) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            for keys, args, _ in batch:
                pipe.evalsha(self.script.sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
        except Exception as error:  # sending failed: so did every call of the batch
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (keys, args, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, NoScriptError):
                await self._alone(keys, args, future)
            elif isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _alone(
        self, keys: Sequence[Any], args: Sequence[Any], future: asyncio.Future[Any]
    ) -> None:
        try:
            result = await self.script(keys=keys, args=args)
        except Exception as error:
            if not future.done():
                future.set_exception(error)
        else:
            if not future.done():
                future.set_result(result)
