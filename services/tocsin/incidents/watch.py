"""WatchIncidents: follow the 16 shard streams (each with its lanes) with plain XREAD (no
consumer group).

Watching is a read-only tail for dashboards and tools, so it must not take entries away
from the escalation and notification groups. One reader per shard (a cluster serves
shards from different nodes) feeds a bounded queue; events of one incident keep their
order, events of different incidents interleave as they arrive.

Stream entry ids carry the Redis server's time, so `since` maps to the id
`<since_ms - 1>-<max>`: replay starts with the first entry added at or after `since` by
the server's clock. Without `since`, each reader starts after the last entry present
when the watch began.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from tocsin.runtime.errors import Unavailable
from tocsin.runtime.events import EVENT_FIELD, INCIDENT_SHARDS, shard_streams
from tocsin.runtime.redis import RedisClient, blocking_ms
from tocsin.v1 import incidents_pb2

_MAX_SEQ = 2**64 - 1
_QUEUE_SIZE = 1000
_BATCH = 100

Item = incidents_pb2.IncidentEvent | BaseException


async def watch_events(
    redis: RedisClient,
    service_ids: frozenset[str] = frozenset(),
    since_ms: int | None = None,
    block_ms: int = 1000,
) -> AsyncIterator[incidents_pb2.IncidentEvent]:
    """Events of `service_ids` (all when empty) from `since_ms` (or from now), forever."""
    queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=_QUEUE_SIZE)
    starts = await asyncio.gather(
        *(_start_id(redis, shard, since_ms) for shard in range(INCIDENT_SHARDS))
    )
    readers = [
        asyncio.create_task(_follow(redis, shard, start, queue, blocking_ms(redis, block_ms)))
        for shard, start in enumerate(starts)
    ]
    try:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise Unavailable(f"incident events cannot be read: {item}") from item
            if not service_ids or item.incident.service_id in service_ids:
                yield item
    finally:
        for reader in readers:
            reader.cancel()
        for reader in readers:
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def _start_id(redis: RedisClient, shard: int, since_ms: int | None) -> dict[str, str]:
    """Where each lane of `shard` is read from."""
    keys = shard_streams(shard)
    if since_ms is not None:
        start = f"{since_ms - 1}-{_MAX_SEQ}" if since_ms > 0 else "0-0"
        return dict.fromkeys(keys, start)
    lasts: list[Any] = [await redis.xrevrange(key, "+", "-", count=1) for key in keys]
    return {
        key: last[0][0].decode() if last else "0-0" for key, last in zip(keys, lasts, strict=True)
    }


async def _follow(
    redis: RedisClient,
    shard: int,
    start: dict[str, str],
    queue: asyncio.Queue[Item],
    block_ms: int,
) -> None:
    """One XREAD over the shard's lanes (one slot); an incident's events are in one lane,
    so they keep their order."""
    last = dict(start)
    try:
        while True:
            streams: Any = last
            reply: Any = await redis.xread(streams, count=_BATCH, block=block_ms)
            for stream, entries in reply or []:
                key = stream.decode() if isinstance(stream, bytes) else str(stream)
                for entry_id, fields in entries:
                    last[key] = entry_id.decode()
                    event = incidents_pb2.IncidentEvent.FromString(fields[EVENT_FIELD])
                    event.event_id = last[key]
                    await queue.put(event)
    except Exception as error:  # any failure ends the watch with UNAVAILABLE, never silently
        await queue.put(error)
