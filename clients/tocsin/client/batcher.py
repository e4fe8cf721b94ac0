"""Concurrent unary calls of one kind share one batch call.

In Python gRPC a unary call costs about 0.3 ms of client CPU and 0.4 ms of server CPU on
a 2-core reference machine, more than most of what tocsin's calls do (BENCHMARKS.md).
When many calls of one kind are in flight at once (an alert storm's triggers, a burst of
incidents' Notify calls from escalation, their timeline entries) they share calls: a call
goes out on the next turn of the event loop with whatever else arrived meanwhile. With no
batch on the wire it goes at once (a lone call on a quiet system is a batch of one, so it
waits for nothing); beside others, a batch goes only once `min_batch` calls wait, up to
`max_in_flight` batches, so a storm is not cut into calls of one or two; the calls that
wait meanwhile go with the next batch, as soon as one on the wire returns.

Each caller gets its own response, or the `grpc.aio.AioRpcError` its unary call would have
raised (same code and message, google.rpc.Status with BadRequest details in the trailing
metadata), so callers handle errors exactly as before. A batch call that fails as a whole
fails each of its items with that call's error. The batch call itself runs in the context
(trace) of its first item; an item that must keep its own trace carries it (Notify's
`traceparent`, a TriggerBatchItem's). A server that does not know the batch method
(UNIMPLEMENTED: an older version, during a rolling upgrade) gets the items as unary calls
from then on, when the batcher has a `single` call to fall back on.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
from google.rpc import status_pb2

MAX_BATCH_ITEMS = 512
# Well under the servers' 4 MiB receive limit; one bigger item still goes, alone.
MAX_BATCH_BYTES = 1024 * 1024
_CODES = {code.value[0]: code for code in grpc.StatusCode}

ItemT = TypeVar("ItemT", bound=Any)
ResponseT = TypeVar("ResponseT", bound=Any)


BatchCall = Callable[[Sequence[Any], float | None], Awaitable[Sequence[Any]]]
"""Sends the items as one batch call (with this gRPC timeout) and returns its results,
one per item, in order."""
SingleCall = Callable[[Any, float | None], Awaitable[Any]]
"""Sends one item as the unary call (with this gRPC timeout)."""


@dataclass
class _Pending(Generic[ItemT, ResponseT]):
    item: ItemT
    deadline: float | None
    context: contextvars.Context
    future: asyncio.Future[ResponseT] = field(repr=False)


class CallBatcher(Generic[ItemT, ResponseT]):
    """Calls of one kind, sent together (module docstring). `batch` sends a batch,
    `response_of` reads a result's response, `single` (optional) sends one item as the
    unary call when the server has no batch method."""

    def __init__(
        self,
        batch: BatchCall,
        response_of: Callable[[Any], ResponseT],
        *,
        single: SingleCall | None = None,
        max_in_flight: int = 4,
        min_batch: int = 8,
    ) -> None:
        self.batch = batch
        self.response_of = response_of
        self.single = single
        self.max_in_flight = max_in_flight
        self.min_batch = min_batch
        self.unbatched = False
        """The server answered UNIMPLEMENTED to a batch: every item goes alone."""
        self._waiting: deque[_Pending[ItemT, ResponseT]] = deque()
        self._in_flight = 0
        self._dispatch_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(
        self,
        item: ItemT,
        timeout: float | None = None,  # noqa: ASYNC109 - the batch call's gRPC deadline
    ) -> ResponseT:
        """Send `item` with the others waiting; its response, or what its call raises."""
        if self.unbatched and self.single is not None:
            response: ResponseT = await self.single(item, timeout)
            return response
        loop = asyncio.get_running_loop()
        pending: _Pending[ItemT, ResponseT] = _Pending(
            item,
            None if timeout is None else time.monotonic() + timeout,
            contextvars.copy_context(),
            loop.create_future(),
        )
        self._waiting.append(pending)
        if not self._dispatch_scheduled and self._may_send():
            self._dispatch_scheduled = True
            loop.call_soon(self._dispatch)
        if timeout is None:
            return await pending.future
        # A timer rather than asyncio.timeout: cheaper, and the caller's deadline holds
        # even when its batch waits for one with a later deadline.
        expiry = loop.call_later(timeout, _expire, pending.future)
        try:
            return await pending.future
        finally:
            expiry.cancel()

    async def close(self) -> None:
        """Wait for the batches on the wire (their callers get their results)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        while self._waiting and self._may_send():
            batch = self._take_batch()
            if not batch:
                continue
            self._in_flight += 1
            task = asyncio.create_task(self._send(batch), context=batch[0].context)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _may_send(self) -> bool:
        """Whether another batch may go now: always when none is on the wire; beside
        others only a full-sized one (`min_batch`), since a call costs the same for one
        item as for many and small ones would crowd out the big."""
        if self._in_flight == 0:
            return True
        return self._in_flight < self.max_in_flight and len(self._waiting) >= self.min_batch

    def _take_batch(self) -> list[_Pending[ItemT, ResponseT]]:
        """The next waiting items up to the item and size limits (callers that gave up
        are dropped)."""
        batch: list[_Pending[ItemT, ResponseT]] = []
        size = 0
        while self._waiting and len(batch) < MAX_BATCH_ITEMS:
            pending = self._waiting[0]
            if pending.future.done():
                self._waiting.popleft()
                continue
            size += pending.item.ByteSize()
            if batch and size > MAX_BATCH_BYTES:
                break
            batch.append(self._waiting.popleft())
        return batch

    async def _send(self, batch: list[_Pending[ItemT, ResponseT]]) -> None:
        try:
            deadlines = [p.deadline for p in batch]
            timeout = (
                None
                if None in deadlines
                else max(0.0, max(d for d in deadlines if d is not None) - time.monotonic())
            )
            try:
                results = await self.batch([p.item for p in batch], timeout)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED and self.single is not None:
                    self.unbatched = True
                    await asyncio.gather(*(self._alone(p, timeout) for p in batch))
                    return
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                return
            for pending, result in zip(batch, results, strict=True):
                if pending.future.done():
                    continue
                if result.HasField("error"):
                    pending.future.set_exception(status_error(result.error))
                else:
                    pending.future.set_result(self.response_of(result))
        except BaseException as error:  # cancelled, or a reply of the wrong length
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(
                        _error(grpc.StatusCode.CANCELLED, f"batch failed: {error!r}")
                    )
            if isinstance(error, asyncio.CancelledError):
                raise
        finally:
            self._in_flight -= 1
            self._dispatch()

    async def _alone(self, pending: _Pending[ItemT, ResponseT], deadline_s: float | None) -> None:
        assert self.single is not None
        try:
            response = await self.single(pending.item, deadline_s)
        except grpc.aio.AioRpcError as error:
            if not pending.future.done():
                pending.future.set_exception(error)
            return
        if not pending.future.done():
            pending.future.set_result(response)


def stub_batcher(
    batch: Callable[..., Awaitable[Any]],
    batch_request: Callable[..., Any],
    single: Callable[..., Awaitable[Any]],
) -> CallBatcher[Any, Any]:
    """A CallBatcher over a generated stub's batch method (`batch`, whose request is
    `batch_request(items=...)` and whose reply has `results`, each `response` or `error`)
    and its unary method (`single`), both called with `wait_for_ready`: a peer that is
    starting is waited for within the call's deadline."""

    async def send(items: Sequence[Any], deadline_s: float | None) -> Sequence[Any]:
        reply = await batch(batch_request(items=items), timeout=deadline_s, wait_for_ready=True)
        return reply.results

    return CallBatcher(
        send,
        lambda result: result.response,
        single=lambda item, deadline_s: single(item, timeout=deadline_s, wait_for_ready=True),
    )


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))


def status_error(status: status_pb2.Status) -> grpc.aio.AioRpcError:
    """The AioRpcError a unary call refused with `status` raises."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, status.message)


def _error(code: grpc.StatusCode, message: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), message)
