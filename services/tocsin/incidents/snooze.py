"""Snooze expiry and ack timeouts: one durable timer per snoozed incident (or
acknowledged incident of a service with an ack timeout), in the incident's own slot.

The timers use tocsin.runtime.timers' library under the incident shard's hash tag, but in
their own namespace (`tocsin:{tN}:snooze:timers`, ...): the snooze script arms its timer
in the same atomic step as the snooze, and no other timer worker using shard tag {tN}
(escalation, notification) ever claims a snooze timer. The timer id is the incident id
and the payload holds the snooze's due time, so a later acknowledgement, resolve,
reassignment or snooze (each cancels or re-arms it in its own script) or a stale or
repeated firing finds the snooze no longer current and does nothing (domain.unsnooze).
"""

from __future__ import annotations

import logging
from typing import Protocol

from tocsin.runtime.clock import Clock
from tocsin.runtime.events import INCIDENT_SHARDS
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.timers import ClaimedTimer, TimerStore, TimerWorker, timer_keys, timer_tag

log = logging.getLogger(__name__)

NAMESPACE = "snooze"


def snooze_tag(shard: int) -> str:
    """The tag the timer library builds the snooze keys from: '{t3}:snooze'."""
    return timer_tag(shard, NAMESPACE)


def snooze_timer_keys(shard: int) -> list[str]:
    return timer_keys(shard, NAMESPACE)


def encode_payload(due_ms: int, traceparent: str) -> bytes:
    return f"{due_ms}|{traceparent}".encode()


def decode_payload(payload: bytes) -> tuple[int, str]:
    due, _, traceparent = payload.decode().partition("|")
    return int(due), traceparent


class SnoozeTimerStore(TimerStore):
    """A TimerStore over the snooze namespace of the 16 incident shards."""

    def __init__(self, redis: RedisClient, clock: Clock) -> None:
        super().__init__(redis, clock, shards=INCIDENT_SHARDS, namespace=NAMESPACE)


class Unsnoozer(Protocol):
    """What a fired snooze timer calls (the incident store)."""

    async def unsnooze(self, incident_id: str, due_ms: int, traceparent: str) -> bool: ...


def snooze_worker(
    timers: SnoozeTimerStore, clock: Clock, target: Unsnoozer, **options: int
) -> TimerWorker:
    """A worker firing due snooze timers of every incident shard (claims are atomic, so
    several replicas may run one; the unsnooze itself is version-checked)."""

    async def fire(timer: ClaimedTimer) -> None:
        due_ms, traceparent = decode_payload(timer.payload)
        changed = await target.unsnooze(timer.timer_id, due_ms, traceparent)
        log.info("snooze or ack timeout of incident %s ended (changed=%s)", timer.timer_id, changed)

    return TimerWorker(timers, clock, fire, lambda: range(INCIDENT_SHARDS), **options)
