"""Backpressure: the age and length of the incident-events backlog, and refusing new
incidents past either.

Every incident's events go through the incident-events streams to the escalation and
notification consumer groups (runtime/events.py). When they fall behind (a storm, a
consumer down), an accepted alert pages minutes late. So past `TOCSIN_BACKLOG_MAX_AGE`
(the age of the oldest event some group has not finished handling: delivered and not
acknowledged, or not delivered yet) Trigger refuses alerts that would open a NEW
incident with `BacklogTooOld` (UNAVAILABLE; the gateway answers 503 with Retry-After),
until the backlog drains. An age limit does not bound a burst (30,000 new incidents in
10 s are all in before the oldest is a minute old, and page minutes late), so past
`TOCSIN_BACKLOG_MAX_EVENTS` events waiting in a lane (the slower group's pending plus
undelivered ones, over every shard; undelivered ones counted up to a share of the limit per
stream, since Redis 6.2's XINFO has no `lag`) its new
incidents are refused with `BacklogTooLong` the same way. Alerts that join an open
incident, acknowledgements and resolves are always accepted: they add no work that pages.

The streams are split into lanes by service (runtime/events.py), and consumers take the
lanes round robin, so a storm on one service only ages its own lane: the age that refuses
a service's new incidents is that of its lane (the oldest over every shard), and a quiet
service keeps opening incidents, and paging, during another's storm. The gauges report
the whole backlog, every lane of every shard.

The backlog is measured once per `SAMPLE_INTERVAL_S` per process by a supervised sampler
loop (`Backlog.run`), not per request: a Trigger reads the latest sample and never waits
for a measurement (without the loop, as in tests, the first caller after
`SAMPLE_INTERVAL_S` measures and concurrent ones share it). A measurement that fails
refuses nothing: it is logged and the last sample kept. Per measurement, one script per
shard (lua/backlog_shard.lua; a shard's lanes share one Cluster slot) reads every lane:
XINFO GROUPS, and per group an XPENDING summary if it has pending entries and an XRANGE
for the undelivered ones. (Sent from Python, those were 400 to 900 commands a second per
incidents process, idle or not: about a tenth of its CPU under load.) Stream ids carry
Redis's clock, compared here with this host's wall clock (not the injectable one). The
sample is exported as OpenTelemetry gauges: the oldest age, and the entries delivered but
not acknowledged (plus, on Redis 7 and later, those not delivered yet: XINFO's `lag`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from tocsin.runtime.errors import BacklogTooLong, BacklogTooOld
from tocsin.runtime.events import (
    CONSUMER_GROUPS,
    EVENT_LANES,
    INCIDENT_SHARDS,
    lane_of,
    stream_key,
)
from tocsin.runtime.loops import WorkerHealth, wait_or_timeout
from tocsin.runtime.redis import RedisClient, read_lua
from tocsin.runtime.scripts import LuaScript

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 1.0


@dataclass(frozen=True)
class BacklogSample:
    entries: int
    """Events delivered and not acknowledged (plus undelivered ones, where Redis says)."""
    oldest_age_s: float
    """Age of the oldest event some consumer group has not finished with; 0 if none."""
    lane_ages_s: tuple[float, ...] = ()
    """The same per lane (index: lane), over every shard; empty = not measured."""
    lane_entries: tuple[int, ...] = ()
    """Per lane, over every shard: the events the slower group has not finished (pending
    plus undelivered, the undelivered counted up to a cap per stream); empty = not
    measured."""

    def entries_for(self, service_id: str | None) -> int:
        """The backlog length that counts for new incidents of `service_id`: its lane's
        (the longest lane's when None); 0 when not measured."""
        if not self.lane_entries:
            return 0
        if service_id is None:
            return max(self.lane_entries)
        return self.lane_entries[lane_of(service_id)]

    def age_for(self, service_id: str | None) -> float:
        """The age that counts for new incidents of `service_id`: its lane's (all lanes'
        when None or not measured)."""
        if service_id is None or not self.lane_ages_s:
            return self.oldest_age_s
        return self.lane_ages_s[lane_of(service_id)]


_latest = BacklogSample(0, 0.0)
STALE_INTERVALS = 3
"""A sample older than this many sampling intervals refuses nothing."""
STUCK_AFTER_MIN_S = 15.0
"""The sampler is reported stuck (unhealthy) after max(this, STALE_INTERVALS intervals)."""


def latest_sample() -> BacklogSample:
    """What the gauges report: the last sample this process measured."""
    return _latest


def _observe_age(_options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(_latest.oldest_age_s)]


def _observe_entries(_options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(_latest.entries)]


_meter = metrics.get_meter("tocsin.incidents")
_meter.create_observable_gauge(
    "tocsin.incidents.backlog.age",
    callbacks=[_observe_age],
    unit="s",
    description="Age of the oldest incident event a consumer group has not handled yet",
)
_meter.create_observable_gauge(
    "tocsin.incidents.backlog.entries",
    callbacks=[_observe_entries],
    description="Incident events delivered to a consumer group and not acknowledged yet",
)


def _id_ms(entry_id: Any) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return int(text.split("-", 1)[0])


class Backlog:
    def __init__(
        self,
        redis: RedisClient,
        max_age: timedelta,
        *,
        max_entries: int = 0,
        groups: Sequence[str] = CONSUMER_GROUPS,
        shards: int = INCIDENT_SHARDS,
        interval_s: float = SAMPLE_INTERVAL_S,
    ) -> None:
        self.redis = redis
        self.max_age_s = max_age.total_seconds()
        self.max_entries = max_entries
        # Undelivered entries are counted per stream up to a share of the limit plus one
        # (incidents spread evenly over the shards), so a measurement stays cheap.
        self._count_cap = (max_entries + shards - 1) // shards + 1 if max_entries > 0 else 0
        self._shard_script = LuaScript(
            redis, "backlog_shard.lua", body=read_lua("tocsin.incidents", "lua/backlog_shard.lua")
        )
        self.groups = groups
        self.shards = shards
        self.interval_s = interval_s
        self._sample = BacklogSample(0, 0.0)
        self._sampled_at = float("-inf")
        self._sampling: asyncio.Task[BacklogSample] | None = None
        self._sampler_running = False

    @property
    def enabled(self) -> bool:
        return self.max_age_s > 0 or self.max_entries > 0

    async def refusal(self, service_id: str | None = None) -> BacklogTooOld | BacklogTooLong | None:
        """The error for a new incident of `service_id` while its lane's backlog (every
        lane's when None) is past a limit (its age, or its length), else None (always
        None with no limit)."""
        if not self.enabled:
            return None
        if self._sampler_running:
            sample = self._sample
            if time.monotonic() - self._sampled_at > STALE_INTERVALS * self.interval_s:
                return None  # the sampler is stuck: unmeasured refuses nothing
        else:
            sample = await self.current()
        age = sample.age_for(service_id)
        if self.max_age_s > 0 and age > self.max_age_s:
            return BacklogTooOld(age, self.max_age_s)
        entries = sample.entries_for(service_id)
        if self.max_entries > 0 and entries > self.max_entries:
            return BacklogTooLong(entries, self.max_entries)
        return None

    async def run(self, stop: asyncio.Event, health: WorkerHealth) -> None:
        """Measure every `interval_s` until `stop` (the process's sampler, supervised).
        While it runs, `refusal` reads its latest sample and never waits: a measurement
        reads every lane of every shard, and under load that took long enough to stall
        every new incident behind it once a second. A failed measurement is logged and
        refuses nothing (see `_measure`), nor does a sample older than STALE_INTERVALS
        intervals (a measurement that hangs; the guard then reports the sampler stuck)."""
        guard = health.guard(
            "incidents backlog sampler",
            stop,
            stuck_after_s=max(STUCK_AFTER_MIN_S, STALE_INTERVALS * self.interval_s),
        )
        self._sampler_running = True
        try:
            while not stop.is_set():
                async with guard:
                    await self._measure()
                await wait_or_timeout(stop, self.interval_s)
        finally:
            self._sampler_running = False

    async def current(self) -> BacklogSample:
        """The latest sample, measured again if older than `interval_s` (one measurement
        at a time: concurrent callers share it)."""
        if time.monotonic() - self._sampled_at < self.interval_s:
            return self._sample
        if self._sampling is None or self._sampling.done():
            self._sampling = asyncio.create_task(self._measure())
        return await asyncio.shield(self._sampling)

    async def _measure(self) -> BacklogSample:
        """Measure; if that fails (Redis away, an ACL without XINFO), alerts are not
        refused for it (an alert that can be taken must page): log, keep the last sample."""
        try:
            return await self._sample_now()
        except Exception as error:
            # Not the last sample: an old one over a limit would go on refusing.
            self._sample, self._sampled_at = BacklogSample(0, 0.0), time.monotonic()
            log.warning("the incident-events backlog could not be measured: %r", error)
            return self._sample

    async def _sample_now(self) -> BacklogSample:
        global _latest
        cells = [(shard, lane) for shard in range(self.shards) for lane in range(EVENT_LANES)]
        shards = await asyncio.gather(*(self._shard(shard) for shard in range(self.shards)))
        measured = [lane for shard in shards for lane in shard]
        now_ms = time.time() * 1000

        def age(oldest: list[int]) -> float:
            return max(0.0, (now_ms - min(oldest)) / 1000) if oldest else 0.0

        by_lane: list[list[int]] = [[] for _ in range(EVENT_LANES)]
        lane_entries = [0] * EVENT_LANES
        for (_, lane), (_, ms, waiting) in zip(cells, measured, strict=True):
            lane_entries[lane] += waiting
            if ms is not None:
                by_lane[lane].append(ms)
        sample = BacklogSample(
            entries=sum(entries for entries, _, _ in measured),
            oldest_age_s=age([ms for lane in by_lane for ms in lane]),
            lane_ages_s=tuple(age(lane) for lane in by_lane),
            lane_entries=tuple(lane_entries),
        )
        self._sample, self._sampled_at = sample, time.monotonic()
        _latest = sample
        return sample

    async def _shard(self, shard: int) -> list[tuple[int, int | None, int]]:
        """Per lane of `shard`, lane 0 first: (entries, ms of the oldest unfinished entry,
        events the slower group has not finished: pending plus undelivered counted up to
        the cap), in one round trip (lua/backlog_shard.lua)."""
        keys = [stream_key(shard, lane) for lane in range(EVENT_LANES)]
        reply = await self._shard_script(keys, cap=self._count_cap, groups=list(self.groups))
        return [
            (int(entries), int(oldest) if int(oldest) >= 0 else None, int(waiting))
            for entries, oldest, waiting in reply
        ]
