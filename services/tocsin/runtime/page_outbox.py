"""The pages: escalation hands the pages of a fired level to notification through a
stream per incident shard, written by the compare-and-set that fires the level.

A fired level's pages went to notification as Notify calls, after the write that fired
the level had returned: on a lone alert's path a gRPC hop (about 2 ms on the reference
machine when the processes are idle) after a Redis round trip, and under load a gRPC call
per page at each end (BENCHMARKS.md). Now `write_escalation.lua` XADDs each page's
`NotifyRequest` to `tocsin:{tN}:pages`, the shard of the incident (the same Cluster slot
as the escalation state it commits with), and notification, blocked on that stream, is
woken by Redis the moment the write commits: it starts the user's cycle as the Notify RPC
does (the same validation, the same idempotency key), while escalation goes on with the
level's timeline notes. The RPC stays, for callers outside the stack.

It is an outbox (runtime/outbox.py, the mechanics): on one Redis server one consumer per
notification process reads the 16 streams in one blocking XREADGROUP, on a Cluster one
per shard (`page_consumers`). Two differences from the other outboxes, because a page
must never be lost:

- nothing is trimmed: an entry is deleted (XDEL, with its XACK) once notification has
  applied it, so the stream holds only the pages still to start, however long
  notification was away;
- an entry whose apply keeps failing (Redis errors, a peer down) is retried for as long
  as `MAX_DELIVERIES` allows (hours at the reclaim interval), not dropped after ten.

The contract is the stream and its fields: `r`, the `NotifyRequest` protobuf (its
`idempotency_key` incident/epoch/level/loop/user; its `traceparent`, the level's span);
`tp`, the same traceparent. Writing needs the stack's Redis credentials, which only the
services hold.

Guarantees: the pages are recorded atomically with the level that fires them (a crash
before the write pages nobody and the level is redone; after it, the entries wait in the
stream for a notification process, and a dead one's pending entries are taken over after
`CLAIM_IDLE_MS`); notification starts each user's cycle at most once per key, so an
entry applied twice pages once. A user nobody can reach (no contact method or rule) is
reported to escalation (ReportUnreachable, idempotent) by the process that applied the
entry, before it is acknowledged.
"""

from __future__ import annotations

import logging

from redis.asyncio import RedisCluster

from tocsin.runtime.events import INCIDENT_SHARDS
from tocsin.runtime.outbox import Apply, OutboxConsumer, OutboxStream
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.timers import shard_tag
from tocsin.v1 import notification_pb2

log = logging.getLogger(__name__)

GROUP = "notification"
CLAIM_IDLE_MS = 5_000
"""A dead notification process's pages are taken over after this long: a page waits at
most this (plus the look every half of it) for a process that died holding it."""
MAX_DELIVERIES = 2_000
"""A page that keeps failing is tried this many times (about three hours at the reclaim
interval) before it is logged and dropped."""


def stream_key(shard: int) -> str:
    """The pages of the incidents of `shard` (the escalation state's slot)."""
    return f"tocsin:{shard_tag(shard)}:pages"


STREAM: OutboxStream[notification_pb2.NotifyRequest] = OutboxStream(
    stream_key(0),  # a placeholder: the consumers are given every shard's key
    GROUP,
    notification_pb2.NotifyRequest.FromString,
    name="page",
    worker="notification pages",
    logger=log,
    delete_done=True,
)


class PageConsumer(OutboxConsumer[notification_pb2.NotifyRequest]):
    """Notification's side (`page_consumers`). There is no writer class: escalation
    writes the streams only inside `write_escalation.lua`, with the level."""

    stream = STREAM


def page_consumers(
    redis: RedisClient, apply: Apply[notification_pb2.NotifyRequest], consumer: str
) -> list[PageConsumer]:
    """The consumers of every shard's stream, all in `consumer`'s name: on one Redis
    server one, reading the 16 streams in one blocking XREADGROUP (a read under load
    carries the pages of several shards, and an idle process makes one read a second,
    not 16); on a Cluster one per shard, since a read names keys of one slot."""

    def consumer_of(keys: list[str], worker: str | None = None) -> PageConsumer:
        return PageConsumer(
            redis,
            apply,
            consumer,
            keys=keys,
            worker=worker,
            claim_idle_ms=CLAIM_IDLE_MS,
            max_deliveries=MAX_DELIVERIES,
        )

    keys = [stream_key(shard) for shard in range(INCIDENT_SHARDS)]
    if not isinstance(redis, RedisCluster):
        return [consumer_of(keys)]
    return [consumer_of([key], f"{STREAM.worker} {key}") for key in keys]
