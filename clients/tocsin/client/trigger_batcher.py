"""Concurrent Trigger calls share TriggerBatch calls.

In Python gRPC a unary call costs about 0.3 ms of client CPU and 0.4 ms of server CPU on
a 2-core reference machine, more than taking the alert itself (BENCHMARKS.md). Under an
alert storm many triggers are in flight at once, so they share calls: a trigger goes out
on the next turn of the event loop with whatever else arrived meanwhile. With no batch on
the wire it goes at once (a lone trigger on a quiet system is a batch of one); beside
others, a batch goes only once `min_batch` triggers wait, up to `max_in_flight` batches,
so a storm is not cut into calls of one or two (measured at 2,000 events/s through the
gateway: batches of 1 at the median before, 12 after, and 10% more absorbed).

Each caller gets its own response, or the `grpc.aio.AioRpcError` a Trigger call would have
raised (same code and message, google.rpc.Status with BadRequest details in the trailing
metadata), so callers handle errors exactly as before. A batch call that fails as a whole
fails each of its triggers with that call's error. Each trigger carries its caller's trace
context, so the incident's escalation joins the caller's trace; the batch call itself runs
in the context of its first trigger.

A trigger whose details nest deeper than the contract allows (tocsin.client.limits) is
refused here, with the INVALID_ARGUMENT a Trigger call would raise, and never joins a
batch: protobuf refuses to decode a message nested too deeply, and in a shared batch that
would fail every trigger beside it.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tocsin.client.limits import DETAILS_TOO_DEEP, MAX_DETAILS_DEPTH, details_depth
from tocsin.v1 import incidents_pb2, incidents_pb2_grpc

MAX_BATCH_ITEMS = 512
# Well under the servers' 4 MiB receive limit; one bigger trigger still goes, alone.
MAX_BATCH_BYTES = 1024 * 1024
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass
class _Pending:
    item: incidents_pb2.TriggerBatchItem
    deadline: float | None
    context: contextvars.Context
    future: asyncio.Future[incidents_pb2.TriggerResponse] = field(repr=False)


class TriggerBatcher:
    def __init__(
        self,
        stub: incidents_pb2_grpc.IncidentServiceStub,
        max_in_flight: int = 4,
        min_batch: int = 8,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        """`metadata` goes with every call (e.g. the bearer token, on a channel without
        TocsinClient's token interceptor)."""
        self.stub = stub
        self.max_in_flight = max_in_flight
        self.min_batch = min_batch
        self.metadata = metadata
        self._waiting: deque[_Pending] = deque()
        self._in_flight = 0
        self._dispatch_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def trigger(
        self,
        request: incidents_pb2.TriggerRequest,
        timeout: float | None = None,  # noqa: ASYNC109 - the batch call's gRPC deadline
    ) -> incidents_pb2.TriggerResponse:
        """Trigger `request` (as IncidentService.Trigger), sharing a call with others."""
        if request.HasField("details") and details_depth(request.details) > MAX_DETAILS_DEPTH:
            raise _status_error(_bad_request("details", DETAILS_TOO_DEEP))
        loop = asyncio.get_running_loop()
        item = incidents_pb2.TriggerBatchItem(traceparent=_traceparent())
        item.request.CopyFrom(request)
        pending = _Pending(
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
        trigger as for many and small ones would crowd out the big."""
        if self._in_flight == 0:
            return True
        return self._in_flight < self.max_in_flight and len(self._waiting) >= self.min_batch

    def _take_batch(self) -> list[_Pending]:
        """The next waiting triggers up to the item and size limits (callers that gave up
        are dropped)."""
        batch: list[_Pending] = []
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

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            deadlines = [p.deadline for p in batch]
            timeout = (
                None
                if None in deadlines
                else max(0.0, max(d for d in deadlines if d is not None) - time.monotonic())
            )
            request = incidents_pb2.TriggerBatchRequest(items=[p.item for p in batch])
            try:
                reply = await self.stub.TriggerBatch(
                    request, timeout=timeout, metadata=self.metadata
                )
            except grpc.aio.AioRpcError as error:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                return
            for pending, result in zip(batch, reply.results, strict=True):
                if pending.future.done():
                    continue
                if result.HasField("error"):
                    pending.future.set_exception(_status_error(result.error))
                else:
                    pending.future.set_result(result.response)
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


def _expire(future: asyncio.Future[incidents_pb2.TriggerResponse]) -> None:
    if not future.done():
        future.set_exception(_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))


def _status_error(status: status_pb2.Status) -> grpc.aio.AioRpcError:
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, status.message)


def _bad_request(field: str, description: str) -> status_pb2.Status:
    """The google.rpc.Status of INVALID_ARGUMENT naming `field`, as the server sends it."""
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            ]
        )
    )
    return status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=f"{field}: {description}", details=[detail]
    )


def _error(code: grpc.StatusCode, message: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), message)


def _traceparent() -> str:
    if not trace.get_current_span().get_span_context().is_valid:
        return ""  # untraced: the common case in a storm, and cheaper than injecting
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", "")
