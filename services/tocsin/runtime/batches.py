"""Batch RPCs (TriggerBatch, NotifyBatch, AppendTimelineBatch): each item is handled as
its own unary call would be, concurrently, and answered or refused on its own.

An item's refusal is the google.rpc.Status its unary call would have ended with (the one
mapping of typed errors, runtime/errors.py), so a client (tocsin.client.batcher) raises
exactly what the unary call raises; an unexpected exception is logged and answers UNKNOWN,
as the error interceptor does for a unary call. One item's failure never fails another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from google.rpc import code_pb2, status_pb2

from tocsin.runtime.errors import FieldViolation, InvalidArgument, domain_error, rpc_status

log = logging.getLogger(__name__)

MAX_BATCH_ITEMS = 512
"""Items in one batch call (tocsin.client.batcher sends at most this many)."""

ItemT = TypeVar("ItemT")
ResponseT = TypeVar("ResponseT")
ResultT = TypeVar("ResultT")


def batch_violations(items: int) -> list[FieldViolation]:
    """A batch carries 1 to MAX_BATCH_ITEMS items."""
    if items == 0:
        return [FieldViolation("items", "must not be empty")]
    if items > MAX_BATCH_ITEMS:
        return [FieldViolation("items", f"has {items} items; at most {MAX_BATCH_ITEMS}")]
    return []


async def answer_each(
    items: Sequence[ItemT],
    handle: Callable[[ItemT], Awaitable[ResponseT]],
    result: Callable[..., ResultT],
    what: str,
) -> list[ResultT]:
    """`handle` each item concurrently; `result(response=...)` or `result(error=...)` for
    each, in order. Raises InvalidArgument (naming `items`) for an empty or oversized
    batch, before handling anything."""
    violations = batch_violations(len(items))
    if violations:
        raise InvalidArgument(violations)

    async def one(item: ItemT) -> ResultT:
        try:
            return result(response=await handle(item))
        except Exception as raised:  # as a lone call would end (the error interceptor)
            error = domain_error(raised)
            if error is not None:
                return result(error=rpc_status(error))
            log.exception("%s item failed", what)  # a bug: UNKNOWN, and logged
            return result(error=status_pb2.Status(code=code_pb2.UNKNOWN, message=f"{raised!r}"))

    return list(await asyncio.gather(*(one(item) for item in items)))
