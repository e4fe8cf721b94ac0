"""Send slots shared fairly between services: per-key queues taken round robin.

The sender handles at most `limit` pages at once; the rest wait. With one FIFO queue (an
asyncio.Semaphore), a storm of pages on one service queued thousands deep holds back
every other service's first page for the whole queue. Here each key (a service id, or a
lane of its own for timer-fired retries and later rules) has its own FIFO queue, and a
freed slot goes to the next key in turn that has a waiter: a page of another service
waits for at most one page of each busier key ahead of it, not for their queues.

Guarantee: at most `limit` holders at once; within a key, slots are granted in arrival
order; while key K has a waiter, every other key is granted at most one slot between two
grants to K (plus the grants already made when K's waiter arrived). A waiter cancelled
while queued takes nothing (a slot granted to it as it was cancelled is passed on).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class FairSlots:
    """At most `limit` holders; waiters queued per key, served round robin across keys."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._held = 0
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}
        self._turns: deque[str] = deque()
        """Keys with waiters, in the order they are served next."""

    @property
    def held(self) -> int:
        return self._held

    def waiting(self, key: str | None = None) -> int:
        """Waiters queued (for `key`, or in all)."""
        if key is not None:
            return len(self._queues.get(key, ()))
        return sum(len(queue) for queue in self._queues.values())

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        """Hold one slot for the block, waiting in `key`'s queue for it if none is free."""
        await self.acquire(key)
        try:
            yield
        finally:
            self.release()

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits for one (the caller then must
        `release` it); False, taking nothing, otherwise."""
        if self._held < self.limit and not self._turns:
            self._held += 1
            return True
        return False

    async def acquire(self, key: str) -> None:
        if self.try_acquire():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._turns.append(key)
        queue.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted as we were cancelled: pass it on
            else:
                self._forget(key, future)
            raise

    def release(self) -> None:
        """Give the slot back: to the first waiter of the next key in turn, if any."""
        while self._turns:
            key = self._turns.popleft()
            queue = self._queues[key]
            future = queue.popleft()
            if queue:
                self._turns.append(key)  # its next waiter is served after the others'
            else:
                del self._queues[key]
            if not future.done():
                future.set_result(None)  # the slot passes on; held stays the same
                return
        self._held -= 1

    def _forget(self, key: str, future: asyncio.Future[None]) -> None:
        queue = self._queues.get(key)
        if queue is None or future not in queue:
            return
        queue.remove(future)
        if not queue:
            del self._queues[key]
            self._turns.remove(key)
